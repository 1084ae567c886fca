"""Dev F1 against measured speedup for every way we make a faster QA model, and the dense alternative.

    python benchmarks/pareto_qa.py --model ../shared/models/minilm-l6-squad --train ../shared/data/squad/train.json \
        --dev ../shared/data/squad/dev.json --speedups 1.5 2.0 --recover-minutes 10 --keep-layers 3 4 \
        --out benchmarks/pareto

For each speedup, one post-training plan (latency budget at the throughput shape, `--batch 8 --seq 384`, in
the numerics that serve here: `--dtype auto`, bf16 on AMX CPUs), then the *same plan* with each refit:
nothing, kept-unit scales, kept weights (the default), and weights + `--recover-minutes` of distillation.
The dense alternative a user would try instead: the teacher with whole layers dropped (`--keep-layers`,
evenly spaced, the last kept), given the same minutes of the same distillation. Every model is scored on
the whole dev file in the served numerics, with the paired difference to the dense model (same questions:
mean per-question F1 difference and its 95 % interval), and all are timed at the end in one interleaved
run (nothing else runs then) at batch 8 and batch 1. Writes `pareto.json`, `pareto.md` and `pareto.png`.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pruning.artifacts.checkpoint import load_checkpoint  # noqa: E402
from pruning.artifacts.compact import compact_model  # noqa: E402
from pruning.core.structure import spec_for_config, task_of  # noqa: E402
from pruning.methods.posttrain.pipeline import PosttrainJob, PosttrainSettings, prune_posttrain  # noqa: E402
from pruning.methods.posttrain.reconstruction import reconstruct  # noqa: E402
from pruning.methods.posttrain.recovery import RecoverySettings, recover  # noqa: E402
from pruning.runtime.numerics import dtype_name, in_dtype, reported_cpu_flags, resolve_dtype  # noqa: E402
from pruning.runtime.runners import Shape, TimingOptions, make_runner, random_inputs  # noqa: E402
from pruning.runtime.timing import time_interleaved  # noqa: E402
from pruning.tasks import make_task  # noqa: E402
from pruning.tasks.squad_metrics import token_f1  # noqa: E402

log = logging.getLogger("pareto")


def per_question_f1(task, model, tokenizer, examples, dtype: torch.dtype) -> list[float]:
    predictions = task.predict(in_dtype(model, dtype), tokenizer, examples, progress=False)
    return [100.0 * max(token_f1(predictions[e.id], gold) for gold in e.answer_texts) for e in examples]


def paired(f1: list[float], dense: list[float]) -> dict[str, float]:
    differences = [a - b for a, b in zip(f1, dense, strict=True)]
    mean = statistics.fmean(differences)
    half = 1.96 * statistics.stdev(differences) / math.sqrt(len(differences))
    return {"f1": round(statistics.fmean(f1), 2), "delta": round(mean, 2), "ci95": round(half, 2)}


def median_ms(models: dict[str, nn.Module], dtype: torch.dtype, batches: list[int], seq: int, repeats: int):
    """name → batch → median ms of each model in `dtype`, all interleaved on the same random inputs per
    batch (the inputs of the first model, the dense one)."""
    reference = next(iter(models.values()))
    timings: dict[str, dict[int, float]] = {}
    for batch in batches:
        shape = Shape(batch, seq)
        inputs = random_inputs(reference, shape, "cpu", seed=1)
        runners = {
            name: make_runner(in_dtype(model, dtype), task_of(reference), inputs, shape, "torch", name=name)
            for name, model in models.items()
        }
        with torch.inference_mode():
            measured = time_interleaved(runners, warmup=3, repeats=repeats)
        for name, timing in measured.items():
            timings.setdefault(name, {})[batch] = timing.median_ms
    return timings


def drop_layers(dense: nn.Module, keep: int) -> nn.Module:
    """The dense model with `keep` of its layers, evenly spaced, the last one kept."""
    model = copy.deepcopy(dense)
    stack = spec_for_config(model.config).stacks[0]
    parent_path, _, attribute = stack.layers.rpartition(".")
    parent = model.base_model.get_submodule(parent_path) if parent_path else model.base_model
    layers = getattr(parent, attribute)
    total = len(layers)
    chosen = sorted({round(total - 1 - i * (total - 1) / max(keep - 1, 1)) for i in range(keep)})
    setattr(parent, attribute, nn.ModuleList(layers[i] for i in chosen))
    setattr(model.config, stack.num_layers, keep)
    log.info("layer drop: keep %s of %d", chosen, total)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--train", required=True, help="calibration and distillation data")
    parser.add_argument("--dev", required=True)
    parser.add_argument("--speedups", type=float, nargs="+", default=[1.5, 2.0])
    parser.add_argument("--recover-minutes", type=float, default=10.0)
    parser.add_argument("--keep-layers", type=int, nargs="*", default=[3, 4])
    parser.add_argument(
        "--refits", nargs="+", choices=["none", "scales", "weights"], default=["none", "scales", "weights"],
        help="refits scored without recovery (recovery always starts from the pipeline's weights refit)",
    )  # fmt: skip
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=384)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--dev-limit", type=int, default=None, help="score only the first N dev questions")
    parser.add_argument("--work", default="artifacts/pareto")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)

    checkpoint = load_checkpoint(args.model)
    dense, tokenizer = checkpoint.model.eval(), checkpoint.tokenizer()
    task = make_task(task_of(dense))
    served = resolve_dtype(args.dtype, "cpu")
    dev = task.load(args.dev, args.dev_limit)
    train_examples = task.load(args.train)
    train_features = task.train_features(tokenizer, train_examples)
    dense_f1 = per_question_f1(task, dense, tokenizer, dev, served)
    rows: list[dict] = [{"name": "dense", "kind": "dense", **paired(dense_f1, dense_f1)}]
    models: dict[str, nn.Module] = {}
    recovery = RecoverySettings(recover_minutes=args.recover_minutes)
    calibration = None

    def score(name: str, kind: str, model: nn.Module, **extra) -> None:
        started = time.perf_counter()
        rows.append(
            {
                "name": name,
                "kind": kind,
                **paired(per_question_f1(task, model, tokenizer, dev, served), dense_f1),
                **extra,
            }
        )
        log.info("%s: %s (scored in %.0f s)", name, rows[-1], time.perf_counter() - started)
        (out / "pareto.json").write_text(json.dumps({"rows": rows}, indent=1))  # partial results survive a stop

    def distil(name: str, model: nn.Module, identity: dict) -> dict:
        record = recover(
            model, dense, task, tokenizer, train_features, recovery, work / name / "recovery", identity=identity
        )
        return {"recovery_steps": record.steps, "recovery_seconds": record.seconds}

    for speedup in args.speedups:
        name = f"posttrain-{speedup}"
        settings = PosttrainSettings(
            speedup=speedup,
            timing=TimingOptions(batch=args.batch, seq=args.seq, dtype=args.dtype, repeats=args.repeats),
        )
        job = PosttrainJob(method="posttrain", model=args.model, calib=args.train, out=work / name, posttrain=settings)
        started = time.perf_counter()
        manifest = prune_posttrain(job)
        pruning_seconds = round(time.perf_counter() - started, 1)
        plan = manifest.plan
        if calibration is None:
            calibration = task.train_features(tokenizer, task.load(args.train, settings.calib_samples))
        for mode in [m for m in args.refits if m != settings.reconstruct]:
            refit = compact_model(copy.deepcopy(dense), plan).eval()
            reconstruct(refit, dense, task, tokenizer, calibration[: settings.reconstruct_samples], mode=mode)
            score(f"{name} {mode}", f"posttrain, refit: {mode}", refit, plan=name, pruning_seconds=pruning_seconds)
        compact = load_checkpoint(work / name).model.eval()  # what the pipeline wrote: the weights refit
        if settings.reconstruct in args.refits:
            score(f"{name} {settings.reconstruct}", f"posttrain, refit: {settings.reconstruct}", compact, plan=name,
                  pruning_seconds=pruning_seconds)  # fmt: skip
        extra = distil(name, compact, {"plan": plan.digest()})
        extra["whole_run_seconds"] = round(pruning_seconds + extra["recovery_seconds"], 1)
        score(f"{name} weights + {args.recover_minutes:g} min", "posttrain + recovery", compact, plan=name, **extra)
        models[name] = compact
    for keep in args.keep_layers:
        name = f"keep-{keep}-layers"
        model = drop_layers(dense, keep).eval()
        score(name, "layer drop", model, plan=name)
        extra = distil(name, model, {"keep": keep})
        score(f"{name} + {args.recover_minutes:g} min", "layer drop + recovery", model, plan=name, **extra)
        models[name] = model

    # Timing last, in one interleaved run: every model in the served numerics, same inputs.
    timings = median_ms(
        {"dense": dense, **models}, served, sorted({args.batch, 1}, reverse=True), args.seq, args.repeats
    )
    for row in rows:
        times = timings[row.get("plan", "dense")]
        row.update({f"b{b}_ms": round(ms, 2) for b, ms in times.items()})
        row.update({f"b{b}_speedup": round(timings["dense"][b] / ms, 3) for b, ms in times.items()})
    flags = reported_cpu_flags()
    result = {
        "model": args.model, "dev": args.dev, "questions": len(dev), "dtype": dtype_name(served),
        "seq": args.seq, "batch": args.batch, "recover_minutes": args.recover_minutes, "cpu_flags": flags, "rows": rows,
    }  # fmt: skip
    (out / "pareto.json").write_text(json.dumps(result, indent=1))
    lines = [
        f"| model | dev F1 | ΔF1 vs dense (95 % CI, paired) | speedup b{args.batch} | speedup b1 | b{args.batch} ms |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['name']} | {row['f1']:.2f} | {row['delta']:+.2f} ± {row['ci95']:.2f} | "
            f"{row[f'b{args.batch}_speedup']:.2f}× | {row['b1_speedup']:.2f}× | {row[f'b{args.batch}_ms']:.1f} |"
        )
    (out / "pareto.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(rows, args.batch, out / "pareto.png", f"{Path(args.model).name}, dev ({len(dev)} q), {dtype_name(served)}")


def plot(rows: list[dict], batch: int, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(7, 4.5))
    for kind in dict.fromkeys(row["kind"] for row in rows):
        points = [row for row in rows if row["kind"] == kind]
        axis.errorbar(
            [p[f"b{batch}_speedup"] for p in points], [p["f1"] for p in points],
            yerr=[p["ci95"] for p in points], fmt="o", capsize=3, label=kind,
        )  # fmt: skip
    axis.set_xlabel(f"measured speedup vs dense (batch {batch}, same numerics)")
    axis.set_ylabel("dev F1 (error bar: 95 % CI of the paired difference)")
    axis.set_title(title, fontsize=9)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
