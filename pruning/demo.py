"""`make demo` / `blockserve demo`: the foundation end to end on one QA model.

Plan → compact checkpoint → reload → equivalence check against the masked dense model on real
text → ONNX export and parity → dense vs compact timing. Later issues add serving to this.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import numpy as np
import torch

from pruning.bench import BenchSettings, benchmark, format_table
from pruning.checkpoint import compact_checkpoint, load_checkpoint
from pruning.compact import zero_pruned
from pruning.export import QA_INPUTS, export_checkpoint, onnx_session
from pruning.plan import PruningPlan
from pruning.presets import build_preset
from pruning.structure import geometry_of

log = logging.getLogger(__name__)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SHARED_QA_MODEL = SHARED / "models" / "minilm-l6-squad"
SHARED_SQUAD_DEV = SHARED / "data" / "squad" / "dev.json"


def _step(number: int, text: str) -> None:
    print(f"\n[{number}/5] {text}", flush=True)


def _first_squad_example() -> tuple[str, str] | None:
    if not SHARED_SQUAD_DEV.is_file():
        return None
    paragraph = json.loads(SHARED_SQUAD_DEV.read_text())["data"][0]["paragraphs"][0]
    return paragraph["qas"][0]["question"], paragraph["context"]


def _inputs(checkpoint, seq: int) -> dict[str, torch.Tensor]:
    """Real question + context when a tokenizer and the shared data exist, else random token ids."""
    example = _first_squad_example()
    try:
        tokenizer = checkpoint.tokenizer()
    except (OSError, ValueError):
        tokenizer = None
    if tokenizer is not None and example is not None:
        question, context = example
        print(f"    question: {question}")
        encoded = tokenizer(question, context, truncation="only_second", max_length=seq, return_tensors="pt")
        return {name: encoded[name] for name in QA_INPUTS}
    print("    (no tokenizer or shared data: using random token ids)")
    ids = torch.randint(5, checkpoint.model.config.vocab_size, (1, seq))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}


def run_demo(workdir: Path, qa_model: str | None = None, keep_heads: float = 0.5, keep_ffn: float = 0.33) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    if qa_model is None and SHARED_QA_MODEL.is_dir():
        qa_model = str(SHARED_QA_MODEL)
    if qa_model is None:
        qa_model = str(workdir / "qa-dense-random")
        print(f"No QA model given and {SHARED_QA_MODEL} is absent: using bert-base shapes with RANDOM weights.")
        dense = build_preset("bert-base-uncased")
        dense.save_pretrained(qa_model)
    print(f"blockserve demo: dense QA model {qa_model}")

    _step(1, f"uniform plan: keep {keep_heads:.0%} of heads and {keep_ffn:.0%} of FFN units in every layer")
    dense = load_checkpoint(qa_model)
    plan = PruningPlan.uniform(geometry_of(dense.model.config), keep_heads, keep_ffn)
    plan.save(workdir / "plan.json")
    print("    This plan is synthetic (first units kept): it shows speed, not accuracy. Accuracy needs the")
    print("    pruning methods (movement pruning, post-training), which choose units and recover the loss.")

    _step(2, "compact the checkpoint (heads and FFN units physically removed)")
    compact_dir = workdir / "qa-compact"
    manifest = compact_checkpoint(qa_model, plan, compact_dir, method={"name": "uniform-demo"})
    dense_bytes = (Path(dense.directory) / "model.safetensors").stat().st_size
    compact_bytes = (compact_dir / "model.safetensors").stat().st_size
    print(f"    {compact_dir}: {compact_bytes / 1e6:.1f} MB of weights (dense {dense_bytes / 1e6:.1f} MB)")
    print(
        f"    parameters {manifest.stats.params:,} of {manifest.stats.params_dense:,}; FLOPs ratio {manifest.stats.flops_ratio:.2f} at {manifest.stats.workload}"
    )

    _step(3, "reload the compact checkpoint and compare with the masked dense model on real text")
    compact = load_checkpoint(compact_dir)
    masked = zero_pruned(copy.deepcopy(dense.model), plan)
    inputs = _inputs(dense, 384)
    with torch.inference_mode():
        reference, result = masked(**inputs), compact.model(**inputs)
    delta = max(
        (reference.start_logits - result.start_logits).abs().max().item(),
        (reference.end_logits - result.end_logits).abs().max().item(),
    )
    print(f"    max |compact - masked dense| over start/end logits: {delta:.2e} (tolerance 1e-5)")

    _step(4, "export the compact model to ONNX and check it against torch")
    onnx_dir = workdir / "qa-compact-onnx"
    onnx_path = export_checkpoint(compact_dir, onnx_dir)
    session = onnx_session(onnx_path)
    outputs = session.run(None, {name: inputs[name].numpy().astype(np.int64) for name in QA_INPUTS})
    onnx_delta = float(np.abs(outputs[0] - result.start_logits.numpy()).max())
    print(f"    {onnx_path}: max |onnx - torch| start logits {onnx_delta:.2e} (tolerance 1e-4)")

    _step(5, "time dense vs compact (torch and ONNX Runtime, batch 1, seq 384)")
    rows = benchmark(
        dense.model, plan, Path(qa_model).name, BenchSettings(seqs=(384,), runtimes=("torch", "onnx"), repeats=5)
    )
    print(format_table(rows))

    print("\nWhat this did:")
    print(f"  - wrote {workdir / 'plan.json'}, {compact_dir} (format v1) and {onnx_dir}")
    print(f"  - compact == masked dense within {delta:.1e}; ONNX == torch within {onnx_delta:.1e}")
    for row in rows:
        print(
            f"  - {row.runtime}: {row.dense_ms:.1f} ms → {row.compact_ms:.1f} ms ({row.speedup:.2f}× faster; FLOPs ratio {row.flops_ratio:.2f})"
        )
    print("  Serving (Ray Serve endpoints) and pruning methods arrive in later issues; see README.")
    if delta > 1e-5 or onnx_delta > 1e-4:
        raise SystemExit("demo: equivalence check failed")
