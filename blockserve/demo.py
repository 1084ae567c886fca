"""`make demo` / `blockserve demo`: a local model zoo, served by Ray Serve, queried, dense vs pruned.

1. Build or reuse `artifacts/zoo`. QA: a real fine-tuned model when one is at hand (`--qa-model`, or
   the SQuAD MiniLM in `../shared/models`), pruned post-training to a 1.5× latency budget in this
   CPU's numerics (about two minutes, reused afterwards); otherwise BERT-base shapes with **random
   weights** and a uniform synthetic plan (half the heads, a third of the FFN units). Summarization:
   BART-base shapes, random weights and the same uniform plan, unless `--sum-model` names a real one.
   Random weights and a synthetic plan show speed, not answer quality; the demo says so.
2. Start the service on CPU (one replica per task and variant), send requests one at a time, print
   the answers, the dense and pruned latencies (client, server, model) and the HTTP overhead; with a
   real QA model, also both variants' answers to real SQuAD questions and their F1 on a dev sample.
3. Keep serving until Ctrl-C (`--once` stops after the check).
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from pruning.artifacts.checkpoint import MANIFEST_NAME, compact_checkpoint, read_config, read_manifest
from pruning.artifacts.records import UniformMethod
from pruning.core.plan import PruningPlan
from pruning.core.structure import geometry_of
from pruning.core.task_registry import TASKS
from pruning.zoo.local_init import init_checkpoint
from pruning.zoo.shared_assets import SQUAD_TRAIN, sample_data, shared_qa_model

SQUAD = sample_data(TASKS["question-answering"])
CNNDM = sample_data(TASKS["summarization"])
FALLBACK_CONTEXT = (
    "The Apollo program was the third United States human spaceflight program carried out by NASA, which "
    "accomplished landing the first humans on the Moon from 1969 to 1972. It was first conceived during "
    "Dwight D. Eisenhower's administration as a three-person spacecraft to follow the one-person Project "
    "Mercury, which put the first Americans in space. "
) * 4
FALLBACK_QUESTION = "Which agency carried out the Apollo program?"
NEW_TOKENS = 32  # summaries generate exactly this many tokens, like `blockserve bench --new-tokens 32`


@dataclass(frozen=True)
class Zoo:
    qa: dict[str, str]
    summarize: dict[str, str]
    random_weights: dict[str, bool]


def _dense(out: Path, given: str | None, preset: str, corpus: list[Path], label: str) -> tuple[str, bool]:
    if given:
        return given, False
    if (out / "model.safetensors").is_file():
        print(f"    reusing {out} ({label}, random weights)")
        return str(out), True
    print(f"    building {out}: {preset} shapes with RANDOM weights, tokenizer trained on local text")
    init_checkpoint(preset, [p for p in corpus if p.is_file()], out, vocab_size=8000,
                    extra_texts=[FALLBACK_CONTEXT, FALLBACK_QUESTION])  # fmt: skip
    return str(out), True


def _pruned(dense: str, out: Path, keep_heads: float, keep_ffn: float) -> str:
    manifest = read_manifest(out) if (out / MANIFEST_NAME).is_file() else None
    if manifest is not None and manifest.source == dense:
        print(f"    reusing {out} (compact)")
        return str(out)
    plan = PruningPlan.uniform(geometry_of(read_config(Path(dense))), keep_heads, keep_ffn)
    compact_checkpoint(dense, plan, out, method=UniformMethod(keep_heads=keep_heads, keep_ffn=keep_ffn))
    print(f"    wrote {out}: uniform plan, {keep_heads:.0%} of heads and {keep_ffn:.0%} of FFN units kept")
    return str(out)


def _posttrain(dense: str, out: Path, speedup: float = 1.5) -> str:
    """`dense` pruned post-training to `speedup` at one request of 384 tokens, in this CPU's numerics."""
    from pruning.methods.posttrain.pipeline import PosttrainJob, PosttrainSettings, prune_posttrain
    from pruning.runtime.runners import TimingOptions

    manifest = read_manifest(out) if (out / MANIFEST_NAME).is_file() else None
    if manifest is not None and manifest.source == dense and manifest.method and manifest.method.name == "posttrain":
        print(f"    reusing {out} (post-training, measured {manifest.method.measured.speedup:.2f}×)")
        return str(out)
    print(f"    pruning {dense} post-training to {speedup}× (no training; about two minutes) → {out}")
    settings = PosttrainSettings(
        speedup=speedup, calib_samples=256, reconstruct_samples=256, timing=TimingOptions(seq=384, dtype="auto")
    )
    job = PosttrainJob(method="posttrain", model=dense, calib=SQUAD_TRAIN, out=out, posttrain=settings)
    manifest = prune_posttrain(job)
    print(f"    wrote {out}: measured {manifest.method.measured.speedup:.2f}× ({manifest.plan.summary()['encoder']})")
    return str(out)


def build_zoo(
    root: Path, qa_model: str | None, sum_model: str | None, keep_heads=0.5, keep_ffn=0.33, qa_method="posttrain"
) -> Zoo:
    root.mkdir(parents=True, exist_ok=True)
    real_qa = qa_model or (str(shared_qa_model()) if shared_qa_model() else None)
    qa_dense, qa_random = _dense(root / "qa-dense", real_qa, "bert-base-uncased", [SQUAD], "QA")
    if qa_random or qa_method == "uniform":
        qa_pruned = _pruned(qa_dense, root / "qa-pruned", keep_heads, keep_ffn)
    else:
        qa_pruned = _posttrain(qa_dense, root / "qa-posttrain")
    sum_dense, sum_random = _dense(root / "summarize-dense", sum_model, "bart-base", [CNNDM], "summarization")
    return Zoo(
        qa={"dense": qa_dense, "pruned": qa_pruned},
        summarize={"dense": sum_dense, "pruned": _pruned(sum_dense, root / "summarize-pruned", keep_heads, keep_ffn)},
        random_weights={"qa": qa_random, "summarize": sum_random},
    )


def demo_config(zoo: Zoo) -> dict:
    # Four replicas share this machine's CPUs; each asks for a quarter of one so all can start.
    def variants(paths: dict[str, str]) -> dict:
        return {name: {"checkpoint": path, "num_cpus": 0.25, "device": "cpu"} for name, path in paths.items()}

    positions = read_config(Path(zoo.qa["dense"])).max_position_embeddings
    window = min(384, positions)  # small QA models (tests) have fewer positions than BERT-base's 512
    qa_limits = {"window_tokens": window, "window_stride": window // 3, "max_question_tokens": min(64, window // 4)}
    return {
        "qa": {"default_variant": "pruned", "variants": variants(zoo.qa), "limits": qa_limits},
        "summarize": {
            "default_variant": "pruned",
            "variants": variants(zoo.summarize),
            "limits": {"max_input_tokens": 1024, "request_timeout_s": 120},
            "generation": {"num_beams": 1, "max_new_tokens": NEW_TOKENS, "min_new_tokens": NEW_TOKENS},
        },
    }


def _fit(text: str, checkpoint: str, limit: int) -> str:
    """`text` cut to what the summarizer reads (its positions or `limit` tokens, with room to spare)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    positions = read_config(Path(checkpoint)).max_position_embeddings
    ids = tokenizer(text, truncation=True, max_length=min(limit, positions) - 16)["input_ids"]
    return tokenizer.decode(ids, skip_special_tokens=True)


def _examples() -> tuple[tuple[str, str], str]:
    """A real SQuAD question and CNN/DM article when ../shared has them, built-in text otherwise."""
    if SQUAD.is_file():
        paragraph = json.loads(SQUAD.read_text())["data"][0]["paragraphs"][0]
        question = (paragraph["qas"][0]["question"], paragraph["context"])
    else:
        question = (FALLBACK_QUESTION, FALLBACK_CONTEXT)
    article = json.loads(CNNDM.read_text().splitlines()[0])["article"] if CNNDM.is_file() else FALLBACK_CONTEXT
    return question, " ".join(article.split()[:600])


def _median(values: list[float]) -> float:
    return statistics.median(values)


def measure(url: str, route: str, body: dict, variant: str, repeats: int) -> dict:
    """Sequential requests (concurrency 1) after one warm-up: medians of client, server and model time."""
    client_ms, server_ms, model_ms = [], [], []
    with httpx.Client(timeout=300) as client:
        for index in range(repeats + 1):
            started = time.perf_counter()
            response = client.post(f"{url}/v1/{route}", json={**body, "variant": variant})
            elapsed = 1000 * (time.perf_counter() - started)
            response.raise_for_status()
            data = response.json()
            if index:  # the first request is the warm-up
                client_ms.append(elapsed)
                server_ms.append(data["latency_ms"])
                model_ms.append(data["inference_ms"])
    overhead = [c - m for c, m in zip(client_ms, model_ms, strict=True)]
    return {"client_ms": _median(client_ms), "server_ms": _median(server_ms), "model_ms": _median(model_ms),
            "overhead_ms": _median(overhead), "last": data}  # fmt: skip


def real_questions(url: str, shown: int = 4, scored: int = 60) -> dict:
    """Both variants' answers to real SQuAD dev questions, and their F1 on a sample (through HTTP)."""
    from pruning.tasks.qa import read_squad
    from pruning.tasks.squad_metrics import token_f1

    examples = read_squad(SQUAD)[:scored]
    f1 = {"dense": [], "pruned": []}
    print(f"\n    real SQuAD dev questions (F1 over the first {len(examples)}; {shown} shown):")
    with httpx.Client(timeout=120) as client:
        skipped = 0
        for index, example in enumerate(examples):
            answers = {}
            for variant in f1:
                body = {"question": example.question, "context": example.context, "variant": variant}
                response = client.post(f"{url}/v1/qa", json=body)
                if response.status_code == 413:  # over this config's limits: the same for both variants
                    break
                response.raise_for_status()
                answers[variant] = response.json()["answer"] or ""
            if len(answers) < len(f1):
                skipped += 1
                continue
            for variant, answer in answers.items():
                f1[variant].append(100 * max(token_f1(answer, gold) for gold in example.answer_texts))
            if index < shown:
                print(f"    Q: {example.question}")
                print(
                    f"       gold {example.answer_texts[0]!r} | dense {answers['dense']!r} | pruned {answers['pruned']!r}"
                )
    scored = len(examples) - skipped
    scores = {variant: round(statistics.fmean(values), 2) if values else None for variant, values in f1.items()}
    note = f" ({skipped} over the limits skipped)" if skipped else ""
    if scored:
        print(f"    F1 on {scored} dev questions{note}: dense {scores['dense']:.1f}, pruned {scores['pruned']:.1f}")
    return {"questions": scored, "skipped": skipped, "f1": scores}


def _query(url: str, zoo: Zoo, root: Path, repeats: int) -> dict:
    """Step 3 of the demo: both variants of both tasks over HTTP, printed and written to demo-latency.json."""
    print(f"[3/3] requests, one at a time ({repeats} per variant after a warm-up)")
    (question, context), article = _examples()
    article = _fit(article, zoo.summarize["dense"], 1024)
    results = {}
    for route, body in (("qa", {"question": question, "context": context}), ("summarize", {"text": article})):
        for variant in ("dense", "pruned"):
            results[(route, variant)] = measure(url, route, body, variant, repeats)
        last = results[(route, "pruned")]["last"]
        shown = f"answer: {last['answer']!r}" if route == "qa" else f"summary: {last['summary'][:100]!r}…"
        print(f"    {route}: {shown}")
    print(f"\n    {'task':10} {'variant':8} {'client ms':>10} {'server ms':>10} {'model ms':>9} {'overhead ms':>12}")
    for (route, variant), r in results.items():
        print(
            f"    {route:10} {variant:8} {r['client_ms']:10.1f} {r['server_ms']:10.1f} {r['model_ms']:9.1f} {r['overhead_ms']:12.1f}"
        )
    summary = {}
    for route in ("qa", "summarize"):
        dense, pruned = results[(route, "dense")], results[(route, "pruned")]
        summary[route] = {"speedup": dense["client_ms"] / pruned["client_ms"],
                          "overhead_ms": statistics.median([dense["overhead_ms"], pruned["overhead_ms"]])}  # fmt: skip
        print(f"    {route}: pruned is {summary[route]['speedup']:.2f}× faster than dense through HTTP")
    rows = [{"task": route, "variant": variant, **{k: round(v, 1) for k, v in r.items() if k != "last"}}
            for (route, variant), r in results.items()]  # fmt: skip
    quality = None if zoo.random_weights["qa"] or not SQUAD.is_file() else real_questions(url)
    document = {"rows": rows, "pruned_vs_dense": summary, "qa_quality": quality}
    (root / "demo-latency.json").write_text(json.dumps(document, indent=1))
    print(f"    wrote {root / 'demo-latency.json'}")
    print(f"\n    OpenAPI: {url}/docs   metrics: {url}/metrics   models: {url}/v1/models")
    return summary


def run_demo(
    root: Path, qa_model: str | None, sum_model: str | None, once: bool, port: int, repeats: int,
    qa_method: str = "posttrain",
) -> dict:  # fmt: skip
    import ray
    from ray import serve

    from service.app import environment_restored, run_service
    from service.config import AppConfig

    print("[1/3] model zoo")
    zoo = build_zoo(root, qa_model, sum_model, qa_method=qa_method)
    if any(zoo.random_weights.values()):
        kinds = ", ".join(task for task, random in zoo.random_weights.items() if random)
        print(f"    NOTE: {kinds} models have RANDOM weights: answers are meaningless, latencies are real.")

    config = AppConfig.model_validate(demo_config(zoo))
    print(f"[2/3] starting Ray Serve on CPU ({config.topology()})")
    document = {"http_options": {"host": "127.0.0.1", "port": port},
                "applications": [{"name": "blockserve", "route_prefix": "/", "import_path": "service.app:build_app"}]}  # fmt: skip
    with environment_restored():  # `--once` in a process that starts Ray again (tests)
        url = run_service(document, config, block=False, log_to_driver=False)

        summary = _query(url, zoo, root, repeats)
        if once:
            serve.shutdown()
            ray.shutdown()
            return summary
        print("    serving until Ctrl-C")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            serve.shutdown()
        return summary
