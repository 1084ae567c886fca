"""`make gpu-check`: the GPU measurements of issue 14, in one short script (never part of CI or tests).

On a CUDA machine (a lent one has torch and transformers already; carry pydantic's wheels if it has
none), from the repository root:

    python benchmarks/gpu_check.py --out benchmarks/gpu            # ~5 minutes on one GPU

It writes, under `--out`: `environment.json` (GPU, versions), `bench.jsonl` (bert-base 0.5/0.33 at s384
b1/b8 and bart-base s512 b1 +32 tokens, in the device's `auto` numerics, each row against dense fp32
torch eager), `latency.json` (the post-training latency model of bert-base at b1 s384, checked on 3 random
plans) and `engines.json` (the service's QA and summarization engines — the code a replica runs, without
Ray — timed on batches of 1 and 8 real requests). `--device cpu --quick` runs the same steps on tiny
presets, so the script itself is tested where no GPU is.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from a checkout, no install needed


def environment(device: str) -> dict:
    import torch
    import transformers

    info = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
        info["cuda"] = torch.version.cuda
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
        info["onnxruntime_providers"] = onnxruntime.get_available_providers()
    except ImportError:
        info["onnxruntime"] = None
    return info


def bench(device: str, quick: bool, out: Path) -> list[dict]:
    from pruning.core.plan import PruningPlan
    from pruning.core.structure import geometry_of
    from pruning.runtime.bench import BenchSettings, benchmark
    from pruning.zoo.presets import build_preset

    rows = []
    qa, summarizer = ("bert-tiny", "bart-tiny") if quick else ("bert-base-uncased", "bart-base")
    repeats = 2 if quick else 20
    runtimes = ("torch", "onnx") if _onnx_on(device) else ("torch",)
    for arch, seqs, batches in ((qa, (64 if quick else 384,), (1, 8)), (summarizer, (64 if quick else 512,), (1,))):
        model = build_preset(arch)
        plan = PruningPlan.uniform(geometry_of(model.config), 0.5, 0.33)
        settings = BenchSettings(
            batches=batches, seqs=seqs, runtimes=runtimes if arch == qa else ("torch",), repeats=repeats,
            warmup=2, new_tokens=4 if quick else 32, device=device, dtype="auto",
        )  # fmt: skip
        rows += [row.model_dump() for row in benchmark(model, plan, arch, settings)]
    (out / "bench.jsonl").write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    return rows


def _onnx_on(device: str) -> bool:
    try:
        import onnxruntime
    except ImportError:
        return False
    return not device.startswith("cuda") or "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def latency(device: str, quick: bool, out: Path) -> dict:
    from pruning.core.structure import geometry_of
    from pruning.methods.posttrain.latency_model import LatencySettings, check_predictions, latency_table, random_plans
    from pruning.runtime.numerics import in_dtype, resolve_dtype
    from pruning.runtime.runners import Shape
    from pruning.zoo.presets import build_preset

    model = build_preset("bert-tiny" if quick else "bert-base-uncased").to(device)
    model = in_dtype(model, resolve_dtype("auto", device))
    settings = LatencySettings(shape=Shape(1, 64 if quick else 384), device=device, repeats=3 if quick else 10,
                               max_noise=100.0 if quick else 0.10)  # fmt: skip
    with tempfile.TemporaryDirectory() as cache:
        table, _ = latency_table(model, settings, Path(cache), refresh=True)
    checks = check_predictions(model, table, random_plans(geometry_of(model.config), 3), settings)
    result = {"table": json.loads(table.model_dump_json()), "checks": [check.model_dump() for check in checks]}
    (out / "latency.json").write_text(json.dumps(result, indent=1))
    return result


def engines(device: str, quick: bool, out: Path) -> dict:
    """The replicas' engines on real text, batches of 1 and 8 (what `@serve.batch` hands them)."""
    from pruning.artifacts.checkpoint import load_checkpoint
    from pruning.runtime.candidates import torch_forward
    from pruning.runtime.numerics import dtype_name, resolve_dtype
    from pruning.tasks.qa import read_squad
    from pruning.tasks.summarization import read_jsonl
    from pruning.zoo.local_init import init_checkpoint
    from pruning.zoo.shared_assets import SHARED_DATA
    from service.config import GenerationConfig, LimitsConfig
    from service.qa_engine import QAEngine, QAInput
    from service.summarize_engine import SummarizeEngine, SummaryInput

    squad, articles = SHARED_DATA / "squad" / "dev.json", SHARED_DATA / "summarization" / "cnndm_test.jsonl"
    dtype = resolve_dtype("auto", device)
    results = {"dtype": dtype_name(dtype)}
    with tempfile.TemporaryDirectory() as scratch:
        qa_dir = init_checkpoint("bert-tiny" if quick else "bert-base-uncased", [squad], Path(scratch) / "qa",
                                 vocab_size=2000 if quick else 8000)  # fmt: skip
        qa = load_checkpoint(qa_dir, device=device, dtype=dtype)
        window = min(384, qa.model.config.max_position_embeddings)
        limits = LimitsConfig(window_tokens=window, window_stride=window // 3, max_input_tokens=10**6)
        engine = QAEngine(torch_forward(qa.model), qa.tokenizer(), limits, qa.model.config.max_position_embeddings)
        questions = [QAInput(e.question, e.context) for e in read_squad(squad)[:16]]
        results["qa"] = {f"batch {n}": _time(lambda n=n: engine.answer(questions[:n]), device) for n in (1, 8)}
        sum_dir = init_checkpoint("bart-tiny" if quick else "bart-base", [articles], Path(scratch) / "sum",
                                  vocab_size=2000 if quick else 8000)  # fmt: skip
        summarizer = load_checkpoint(sum_dir, device=device, dtype=dtype)
        generation = GenerationConfig(num_beams=2, max_new_tokens=8 if quick else 32)
        summarize = SummarizeEngine(summarizer.model, summarizer.tokenizer(), LimitsConfig(), generation)
        words = 60 if quick else 400  # within the model's positions (the engine refuses longer input)
        texts = [SummaryInput(" ".join(row.article.split()[:words])) for row in read_jsonl(articles, 8)]
        results["summarize"] = {f"batch {n}": _time(lambda n=n: summarize.summarize(texts[:n]), device) for n in (1, 8)}
    (out / "engines.json").write_text(json.dumps(results, indent=1))
    return results


def _time(run, device: str, repeats: int = 5) -> dict:
    from pruning.runtime.numerics import synchronizer

    sync = synchronizer(device)
    run()  # warm-up
    samples = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        run()
        sync()
        samples.append(1000 * (time.perf_counter() - start))
    return {"median_ms": statistics.median(samples), "samples_ms": samples}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "gpu")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny presets (a smoke test of the script)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    env = environment(args.device)
    (args.out / "environment.json").write_text(json.dumps(env, indent=1))
    print(json.dumps(env), flush=True)
    for step in (bench, latency, engines):
        started = time.perf_counter()
        step(args.device, args.quick, args.out)
        print(f"{step.__name__}: {time.perf_counter() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
