"""Dense vs compact latency in one process: same inputs, warm-up, interleaved repeats, medians.

Timed units per task:
- question-answering: one forward pass (torch eager, or ONNX Runtime on the exported graph);
- summarization: the encoder forward alone, and `generate()` with exactly `new_tokens` new tokens
  (EOS suppressed until then, so dense and compact do the same number of decoder steps).
"""

from __future__ import annotations

import copy
import logging
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from tqdm import tqdm
from transformers import PreTrainedModel

from pruning.artifacts.checkpoint import check_device
from pruning.artifacts.compact import compact_model
from pruning.artifacts.export import QA_INPUTS, export_qa_onnx, onnx_session
from pruning.core.accounting import count_parameters, encoder_flops, flops_ratio
from pruning.core.options import Device, Flag
from pruning.core.plan import PruningPlan
from pruning.core.structure import Workload, geometry_of, task_of
from pruning.core.task_registry import onnx_tasks, task_entry
from pruning.runtime.candidates import compile_frozen
from pruning.runtime.numerics import DType, dtype_name, in_dtype, resolve_dtype
from pruning.runtime.runners import Shape, make_runner, random_inputs
from pruning.runtime.timing import time_interleaved

log = logging.getLogger(__name__)


class BenchRow(BaseModel):
    arch: str
    task: str
    runtime: str
    unit: str  # "forward", "encoder" or "generate"
    batch: int
    seq: int
    new_tokens: int
    dense_ms: float
    compact_ms: float
    speedup: float  # dense_ms / compact_ms
    # dense FLOPs / compact FLOPs for the same unit and shape; None when the compact unit has no
    # layer matmuls left (a BART encoder with every head and FFN unit removed)
    flops_ratio: float | None
    params_dense: int
    params_compact: int
    dense_iqr_ms: float
    compact_iqr_ms: float
    repeats: int
    threads: int
    device: str
    dtype: str = "float32"  # the numerics timed (ONNX Runtime: the fp32 export)
    compiled: bool = False  # torch.compile'd dense and compact (inductor, frozen weights)
    # The baseline a user has without blockserve: the dense model in float32, torch eager, timed in the
    # same interleaved run (= dense_ms for a float32 torch row). Older rows: None.
    reference_ms: float | None = None
    speedup_vs_reference: float | None = None  # reference_ms / compact_ms


class BenchSettings(BaseModel):
    """The grid `blockserve bench` times, and how (every field is one of its flags)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    batches: Annotated[tuple[int, ...], Flag("--batch")] = Field((1,), min_length=1, description="batch sizes")
    seqs: Annotated[tuple[int, ...], Flag("--seq")] = Field((128,), min_length=1, description="sequence lengths")
    runtimes: Annotated[tuple[Literal["torch", "onnx"], ...], Flag("--runtime")] = Field(
        ("torch",), min_length=1, description="runtimes to time"
    )
    repeats: int = Field(10, ge=1, le=10**5, description="timed repeats per model (median reported)")
    warmup: int = Field(3, ge=0, le=10**4, description="untimed runs per model first")
    new_tokens: int = Field(32, ge=1, le=4096, description="BART: tokens generated per call")
    threads: int | None = Field(None, ge=1, le=1024, description="intra-op threads (default: torch's)")
    device: Device = "cpu"
    dtype: DType = Field(
        "auto", description="torch numerics (auto: bfloat16 on CPUs with AMX/avx512_bf16, float16 on CUDA)"
    )
    compiled: bool = Field(False, description="also time torch.compile'd dense and compact (encoder forward units)")

    @field_validator("batches", "seqs")
    @classmethod
    def _positive(cls, values: tuple[int, ...]) -> tuple[int, ...]:
        bad = [value for value in values if not 1 <= value <= 65536]
        if bad:
            raise ValueError(f"every value must be in 1..65536 (got {', '.join(map(str, bad))})")
        return values


@dataclass(frozen=True)
class _Case:
    """One timed configuration: a unit at a shape, with its FLOPs ratio and a runner per model."""

    unit: str
    runtime: str
    batch: int
    seq: int
    new_tokens: int
    flops_ratio: float | None
    dense: Callable[[], object]
    compact: Callable[[], object]
    # Dense, float32, torch eager on the same inputs: what a user runs without blockserve. None when
    # `dense` already is that (a float32 torch case).
    reference: Callable[[], object] | None = None
    compiled: bool = False


def _forward_cases(dense, compact, reference, plan, settings, batch, seq, sessions, seed) -> Iterable[_Case]:
    """An encoder task: the forward pass, in torch and (when exported) ONNX Runtime."""
    task = task_of(dense)
    ratio = flops_ratio(dense.config, plan, Workload(seq), task)
    shape = Shape(batch, seq)
    inputs = random_inputs(dense, shape, settings.device, seed)
    reference_run = make_runner(reference, task, inputs, shape)
    if "torch" in settings.runtimes:
        runners = [make_runner(model, task, inputs, shape) for model in (dense, compact)]
        yield _Case(
            "forward", "torch", batch, seq, 0, ratio, *runners, reference_run if reference is not dense else None
        )
        if settings.compiled:  # compiled on the first (untimed) warm-up call of each shape
            runners = [make_runner(compile_frozen(model), task, inputs, shape) for model in (dense, compact)]
            yield _Case("forward", "torch", batch, seq, 0, ratio, *runners, reference_run, compiled=True)
    if "onnx" in settings.runtimes:
        feeds = {name: inputs[name].cpu().numpy().astype(np.int64) for name in QA_INPUTS}
        dense_session, compact_session = sessions
        yield _Case(
            "forward", "onnx", batch, seq, 0, ratio,
            lambda: dense_session.run(None, feeds), lambda: compact_session.run(None, feeds), reference_run,
        )  # fmt: skip


def _generate_cases(dense, compact, reference, plan, settings, batch, seq, sessions, seed) -> Iterable[_Case]:
    """An encoder-decoder task: the encoder forward, and `generate()` of exactly `new_tokens`."""
    task = task_of(dense)
    full = PruningPlan.full(geometry_of(dense.config))
    shape = Shape(batch, seq, settings.new_tokens)
    inputs = random_inputs(dense, shape, settings.device, seed)
    input_ids, attention_mask = inputs["input_ids"], inputs["attention_mask"]
    compact_encoder = encoder_flops(dense.config, plan, seq)
    encoder_ratio = encoder_flops(dense.config, full, seq) / compact_encoder if compact_encoder else None

    def encoder(model):
        return lambda: model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask)

    separate = reference is not dense  # no reference of its own when the dense model is the fp32 one
    yield _Case(
        "encoder", "torch", batch, seq, 0, encoder_ratio, encoder(dense), encoder(compact),
        encoder(reference) if separate else None,
    )  # fmt: skip
    n = settings.new_tokens
    generate_ratio = flops_ratio(dense.config, plan, Workload(seq, new_tokens=n), task)
    runners = [make_runner(model, task, inputs, shape) for model in (dense, compact, reference)]
    yield _Case("generate", "torch", batch, seq, n, generate_ratio, *runners[:2], runners[2] if separate else None)


_CASES = {"forward": _forward_cases, "generate": _generate_cases}  # by `TaskEntry.timed_unit`


def benchmark(dense: PreTrainedModel, plan: PruningPlan, arch: str, settings: BenchSettings) -> list[BenchRow]:
    """Time `dense` against its compaction to `plan` over the settings' grid."""
    check_device(settings.device)
    threads = settings.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    task = task_of(dense)
    dtype = resolve_dtype(settings.dtype, settings.device)
    reference = in_dtype(dense, torch.float32).to(settings.device).eval()  # what a user runs without us
    dense = in_dtype(reference, dtype).eval()
    compact = compact_model(copy.deepcopy(dense), plan).eval()
    params_dense, params_compact = count_parameters(dense), count_parameters(compact)
    log.info("%s: %d → %d parameters; plan %s", arch, params_dense, params_compact, plan.summary().describe())
    entry = task_entry(task)
    use_onnx = "onnx" in settings.runtimes and entry.onnx_export
    if "onnx" in settings.runtimes and not use_onnx:
        log.warning("ONNX export covers %s only; timing %s with torch alone", ", ".join(onnx_tasks()), task)
    rows: list[BenchRow] = []
    with tempfile.TemporaryDirectory() as scratch:
        sessions = None
        if use_onnx:
            log.info("exporting dense and compact models to ONNX")
            sessions = tuple(
                # Thread count only when asked for: ORT pins its own pool to cores only by default.
                # No spinning: dense and compact sessions (and torch) alternate on the same cores.
                onnx_session(
                    export_qa_onnx(in_dtype(model, torch.float32), Path(scratch) / f"{name}.onnx"),
                    settings.device,
                    settings.threads,
                    spinning=False,
                )
                for name, model in (("dense", dense), ("compact", compact))
            )
        grid = [(batch, seq) for batch in settings.batches for seq in settings.seqs]
        with torch.inference_mode():
            for seed, (batch, seq) in enumerate(tqdm(grid, desc=f"bench {arch}", unit="shape")):
                cases = _CASES[entry.timed_unit](dense, compact, reference, plan, settings, batch, seq, sessions, seed)
                rows += [
                    _time(case, arch, task, settings, params_dense, params_compact, threads, dtype) for case in cases
                ]
    return rows


def _time(case: _Case, arch: str, task: str, settings: BenchSettings, params_dense: int, params_compact: int,
          threads: int, dtype: torch.dtype) -> BenchRow:  # fmt: skip
    """Dense and compact of one case, interleaved on the same inputs after warm-up: one row of medians."""
    candidates = {"dense": case.dense, "compact": case.compact}
    if case.reference is not None:
        candidates["reference"] = case.reference
    warmup = max(settings.warmup, 2) if case.compiled else settings.warmup  # compiling is never timed
    timings = time_interleaved(candidates, warmup, settings.repeats, settings.device)
    dense, compact = timings["dense"], timings["compact"]
    reference_ms = timings["reference"].median_ms if "reference" in timings else dense.median_ms
    row = BenchRow(
        arch=arch, task=task, runtime=case.runtime, unit=case.unit, batch=case.batch, seq=case.seq,
        new_tokens=case.new_tokens, dense_ms=dense.median_ms, compact_ms=compact.median_ms,
        speedup=dense.median_ms / compact.median_ms, flops_ratio=case.flops_ratio, params_dense=params_dense,
        params_compact=params_compact, dense_iqr_ms=dense.spread_ms, compact_iqr_ms=compact.spread_ms,
        repeats=settings.repeats, threads=threads, device=settings.device,
        dtype="float32" if case.runtime == "onnx" else dtype_name(dtype), compiled=case.compiled,
        reference_ms=reference_ms, speedup_vs_reference=reference_ms / compact.median_ms,
    )  # fmt: skip
    log.info("%s %s %s b=%d s=%d: dense %.1f ms, compact %.1f ms, speedup %.2f (FLOPs ratio %s)", arch, row.runtime,
             row.unit, row.batch, row.seq, row.dense_ms, row.compact_ms, row.speedup, _number(row.flops_ratio))  # fmt: skip
    return row


def format_table(rows: list[BenchRow]) -> str:
    header = f"{'arch':<20} {'runtime':<9} {'dtype':<8} {'unit':<8} {'batch':>5} {'seq':>5} {'dense ms':>10} {'compact ms':>11} {'speedup':>8} {'FLOPs ratio':>11} {'speedup/FLOPs':>13} {'vs fp32 dense':>13}"
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(
            f"{row.arch:<20} {row.runtime + ('+c' if row.compiled else ''):<9} {row.dtype:<8} {row.unit:<8} {row.batch:>5} {row.seq:>5} {row.dense_ms:>10.1f} "
            f"{row.compact_ms:>11.1f} {row.speedup:>8.2f} {_number(row.flops_ratio):>11} "
            f"{_number(row.speedup / row.flops_ratio if row.flops_ratio else None):>13} "
            f"{_number(row.speedup_vs_reference):>13}"
        )
    return "\n".join(lines)


def _number(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def plot_rows(rows: list[BenchRow], path: str | Path) -> None:
    """Bars per configuration: measured speedup, FLOPs ratio, and the speedup over dense fp32 eager torch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r.runtime}{' compiled' if r.compiled else ''} {r.dtype}\n{r.unit} b{r.batch} s{r.seq}" for r in rows]
    x = np.arange(len(rows))
    references = [r.speedup_vs_reference or 0.0 for r in rows]
    show_reference = any(r.reference_ms is not None and r.reference_ms != r.dense_ms for r in rows)
    width = 0.27 if show_reference else 0.4
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(rows)), 4))
    ax.bar(x - width, [r.speedup for r in rows], width=width, label="compact vs dense, same numerics")
    ratios = [r.flops_ratio or 0.0 for r in rows]  # no bar where the ratio is undefined
    ax.bar(x, ratios, width=width, label="FLOPs ratio (dense / compact)")
    tallest = max(max(r.speedup, ratio) for r, ratio in zip(rows, ratios, strict=True))
    if show_reference:
        bars = ax.bar(x + width, references, width=width, label="compact vs dense fp32 torch eager")
        ax.bar_label(bars, fmt="%.1f×", fontsize=7)
        tallest = max(tallest, *references)
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_ylim(0, 1.3 * tallest)  # legend room
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylabel("× faster")
    ax.set_title(f"{rows[0].arch}: compact vs dense ({rows[0].device}, {rows[0].threads} threads)")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
