"""int8 that keeps the answers: which matrix products of an exported QA graph stay in float32, chosen by
measurement on calibration questions.

Dynamic int8 on every matrix product of the shared MiniLM keeps the fp32 best span on 87.5 % of dev
questions (`make bench-int8`); a few products do most of the damage. So, on windows of calibration
questions (a train split, never the data the result is judged on):
1. each quantisable node (MatMul, fused Attention) is quantised *alone* and scored by how far it moves the
   start/end distributions from the fp32 graph's (mean KL divergence over the windows) — its sensitivity;
2. the most sensitive nodes are kept in float32, fewest first (a binary search over how many), until the
   whole graph's best span equals the fp32 graph's on at least `min_agreement` of the windows.
The result is a graph like `quantize_qa_onnx`'s with `kept_fp32` excluded, and a report of what was chosen
and why; `blockserve export --int8-calib` writes both into the checkpoint directory, where the service's
and `tune`'s `onnx int8` find them.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from pruning.artifacts.export import QA_INPUTS, onnx_session, quantize_qa_onnx
from pruning.core.errors import DataError
from pruning.core.options import ExistingFile
from pruning.tasks.qa import QuestionAnsweringTask, candidate_spans, read_squad

log = logging.getLogger(__name__)

QUANTISED_OPS = ("MatMul", "Attention")  # what `quantize_qa_onnx` turns into int8


class Int8CalibrationSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    int8_calib: ExistingFile | None = Field(
        None,
        description="also write model.int8.onnx, its float32 nodes chosen on these SQuAD-format questions (a train split)",
    )
    int8_questions: int = Field(96, ge=8, le=100_000, description="calibration questions read")
    min_agreement: float = Field(
        0.97, gt=0.0, le=1.0, description="share of calibration windows whose best span must equal fp32's"
    )
    seq: int = Field(384, ge=32, le=4096, description="tokens per window")
    threads: int | None = Field(None, ge=1, le=1024, description="ONNX Runtime threads (default: its own)")


class Int8Calibration(BaseModel):
    """What `calibrate_int8` chose, saved beside the graph (`int8.json`)."""

    kept_fp32: list[str] = Field(description="nodes left in float32, most sensitive first")
    agreement: float = Field(description="share of calibration windows whose best span equals the fp32 graph's")
    agreement_all_int8: float = Field(description="the same with every node in int8")
    min_agreement: float
    windows: int
    calib: str
    sensitivity: dict[str, float] = Field(description="node → mean KL (start + end) when it alone is int8")


@dataclass(frozen=True)
class _Windows:
    arrays: dict[str, np.ndarray]  # padded model inputs, (windows, seq)
    offsets: list[list[tuple[int, int]]]
    in_context: list[np.ndarray]


def calibration_windows(tokenizer: PreTrainedTokenizerBase, calib: Path, questions: int, seq: int) -> _Windows:
    examples = read_squad(Path(calib), questions)
    if not examples:
        raise DataError(f"{calib} holds no questions to calibrate int8 on")
    task = QuestionAnsweringTask(max_length=seq, stride=min(128, seq // 2))
    encoded = task._windows(tokenizer, examples)
    padded = tokenizer.pad({name: encoded[name] for name in QA_INPUTS if name in encoded}, padding="max_length",
                           max_length=seq, return_tensors="np")  # fmt: skip
    arrays = {name: padded[name].astype(np.int64) for name in QA_INPUTS if name in padded}
    arrays.setdefault("token_type_ids", np.zeros_like(arrays["input_ids"]))
    windows = len(encoded["input_ids"])
    in_context = [np.array([s == 1 for s in encoded.sequence_ids(w)]) for w in range(windows)]
    return _Windows(arrays, list(encoded["offset_mapping"]), in_context)


def _logits(graph: Path, windows: _Windows, threads: int | None, batch: int = 16) -> tuple[np.ndarray, np.ndarray]:
    session = onnx_session(graph, "cpu", threads, spinning=False)
    names = [node.name for node in session.get_inputs()]
    total = len(windows.arrays["input_ids"])
    starts, ends = [], []
    for first in range(0, total, batch):
        feed = {name: windows.arrays[name][first : first + batch] for name in names}
        start, end = session.run(["start_logits", "end_logits"], feed)
        starts.append(start)
        ends.append(end)
    return np.concatenate(starts), np.concatenate(ends)


def _best_spans(logits: tuple[np.ndarray, np.ndarray], windows: _Windows) -> list[tuple[int, int] | None]:
    found = []
    for w, (start, end) in enumerate(zip(*logits, strict=True)):
        spans = candidate_spans(start, end, windows.offsets[w], windows.in_context[w], 20, 30)
        found.append((spans[0].start, spans[0].end) if spans else None)
    return found


def _kl(reference: np.ndarray, other: np.ndarray) -> float:
    """Mean KL(reference ‖ other) of the softmax distributions over each window's positions."""

    def log_softmax(x: np.ndarray) -> np.ndarray:
        x = x - x.max(axis=-1, keepdims=True)
        return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))

    p, q = log_softmax(reference.astype(np.float64)), log_softmax(other.astype(np.float64))
    return float((np.exp(p) * (p - q)).sum(axis=-1).mean())


def quantisable_nodes(graph: Path) -> list[str]:
    return [n.name for n in onnx.load(str(graph)).graph.node if n.op_type in QUANTISED_OPS]


def calibrate_int8(
    graph: Path, tokenizer: PreTrainedTokenizerBase, settings: Int8CalibrationSettings, out: Path
) -> Int8Calibration:
    """Write `out`: `graph` (the fp32 export) in int8 except the nodes calibration keeps in float32."""
    if settings.int8_calib is None:
        raise DataError("int8 calibration needs questions (--int8-calib)")
    windows = calibration_windows(tokenizer, settings.int8_calib, settings.int8_questions, settings.seq)
    count = len(windows.arrays["input_ids"])
    log.info("int8 calibration on %d windows of %s", count, settings.int8_calib)
    reference = _logits(graph, windows, settings.threads)
    expected = _best_spans(reference, windows)
    nodes = quantisable_nodes(graph)

    with tempfile.TemporaryDirectory(prefix="blockserve-int8-") as scratch:

        def quantised(keep: list[str], only: list[str] | None = None) -> Path:
            # Each search step keeps its graph, so the chosen one is copied out, not quantised again.
            path = Path(scratch) / ("alone.onnx" if only else f"keep-{len(keep)}.onnx")
            return quantize_qa_onnx(graph, path, exclude=keep, only=only)

        def agreement(logits) -> float:
            return sum(a == b for a, b in zip(expected, _best_spans(logits, windows), strict=True)) / count

        sensitivity = {}
        for node in tqdm(nodes, desc="int8 sensitivity", unit="node"):
            start, end = _logits(quantised([], only=[node]), windows, settings.threads)
            sensitivity[node] = _kl(reference[0], start) + _kl(reference[1], end)
        ranked = sorted(nodes, key=sensitivity.__getitem__, reverse=True)

        measured: dict[int, float] = {}

        def agreement_keeping(k: int) -> float:
            if k not in measured:
                measured[k] = agreement(_logits(quantised(ranked[:k]), windows, settings.threads))
                log.info(
                    "int8 with the %d most sensitive nodes in fp32: %.1f %% of windows agree", k, 100 * measured[k]
                )
            return measured[k]

        # Fewest fp32 nodes that reach the bound; agreement grows with k (k = all nodes is the fp32 graph).
        low, high = 0, len(ranked)
        if agreement_keeping(0) < settings.min_agreement:
            while high - low > 1:
                middle = (low + high) // 2
                low, high = (middle, high) if agreement_keeping(middle) < settings.min_agreement else (low, middle)
            keep = high
        else:
            keep = 0
        if keep in measured:
            shutil.copyfile(Path(scratch) / f"keep-{keep}.onnx", out)
        else:  # every node kept: never measured, it is the fp32 graph
            quantize_qa_onnx(graph, out, exclude=ranked)
    result = Int8Calibration(
        kept_fp32=ranked[:keep],
        agreement=round(measured.get(keep, 1.0), 4),
        agreement_all_int8=round(measured[0], 4),
        min_agreement=settings.min_agreement,
        windows=count,
        calib=str(settings.int8_calib),
        sensitivity={node: round(sensitivity[node], 6) for node in ranked},
    )
    log.info("int8: %d of %d nodes kept in fp32, agreement %.1f %% (all int8: %.1f %%)", keep, len(nodes),
             100 * result.agreement, 100 * result.agreement_all_int8)  # fmt: skip
    return result
