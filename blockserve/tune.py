"""`blockserve tune`: the fastest runtime × numerics for a checkpoint here whose answers stay correct.

Every candidate available on the device (`pruning.runtime.candidates`) is timed at the request shape —
all of them interleaved on the same inputs, after warm-up, medians — and scored on real data against
the task's references. A candidate passes when its metric (QA: SQuAD F1; summarization: ROUGE-L) is
within its bound of the float32 torch reference's: 0.3 points for half precision and for the other float32 runtimes,
1.0 for int8 by default. The report names the fastest candidate that passes, says why the faster ones did not, and
gives the variant snippet for the Serve config.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from pruning.artifacts.checkpoint import load_checkpoint
from pruning.artifacts.export import QA_INPUTS
from pruning.core.errors import BlockserveError
from pruning.core.options import Device, ExistingFile, Flag, ModelReference
from pruning.core.structure import task_of
from pruning.core.task_registry import task_entry
from pruning.runtime.candidates import REFERENCE, Candidate, available_candidates, qa_forward
from pruning.runtime.numerics import in_dtype
from pruning.runtime.runners import Shape, make_runner, random_inputs
from pruning.runtime.timing import time_interleaved
from pruning.tasks import make_task
from pruning.tasks.evaluate import checkpoint_tokenizer
from pruning.tasks.options import TaskOptions
from pruning.zoo.shared_assets import sample_data
from service.config import LimitsConfig
from service.qa_engine import QAEngine, QAInput

log = logging.getLogger("blockserve.tune")


class TuneJob(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model: ModelReference = Field(description="dense or compact checkpoint directory or hub id")
    data: ExistingFile | None = Field(None, description="real data to check answers on (default: ../shared/data's)")
    limit: int = Field(100, ge=1, le=100_000, description="examples scored per candidate")
    seq: int | None = Field(None, ge=8, le=65536, description="request tokens timed (default: the task's, 384/512)")
    batch: int = Field(1, ge=1, le=4096, description="requests per batch timed")
    new_tokens: int = Field(32, ge=1, le=4096, description="summarization: generated tokens timed")
    repeats: int = Field(10, ge=1, le=10**5, description="timed runs per candidate (median reported)")
    warmup: int = Field(3, ge=0, le=10**4, description="untimed runs per candidate first")
    threads: int | None = Field(None, ge=1, le=1024, description="intra-op threads (default: torch's)")
    device: Device = "cpu"
    half_tolerance: float = Field(0.3, ge=0.0, le=100.0, description="allowed metric drop (points) for bf16/fp16")
    int8_tolerance: float = Field(1.0, ge=0.0, le=100.0, description="allowed metric drop (points) for int8")
    compiled: bool = Field(False, description="also time torch.compile candidates (QA; ~30 s to compile a BERT-base)")
    json_out: Annotated[str | None, Flag("--json")] = Field(
        None, description="write the report to PATH ('-' for stdout)"
    )
    task_options: TaskOptions = TaskOptions()


class CandidateResult(BaseModel):
    candidate: str
    runtime: str
    dtype: str
    median_ms: float
    spread_ms: float
    speedup: float = Field(description="reference median / this median")
    metric: str
    score: float
    drop: float = Field(description="reference score − this score (points)")
    tolerance: float
    passes: bool


class TuneReport(BaseModel):
    model: str
    task: str
    shape: str
    device: str
    threads: int
    data: str
    examples: int
    candidates: list[CandidateResult]
    chosen: str
    why: str
    variant: dict[str, str] = Field(description="the Serve config's variant entry for the chosen candidate")


def tolerance(candidate: Candidate, job: TuneJob) -> float:
    if candidate == REFERENCE:
        return 0.0
    return job.int8_tolerance if candidate.dtype == "int8" else job.half_tolerance


def choose(measured: list[CandidateResult]) -> tuple[CandidateResult, str]:
    """The fastest candidate that passes, and a sentence on why (the reference always passes)."""
    passing = [m for m in measured if m.passes]
    best = min(passing, key=lambda m: m.median_ms)
    faster = [m for m in measured if m.median_ms < best.median_ms and not m.passes]
    why = f"{best.candidate} is the fastest within its bound ({best.speedup:.2f}× the float32 reference"
    why += f", {best.metric} {best.score:.2f}, drop {best.drop:+.2f} ≤ {best.tolerance:g})"
    if faster:
        why += "; faster but rejected: " + ", ".join(
            f"{m.candidate} ({m.metric} drop {m.drop:+.2f} > {m.tolerance:g})" for m in faster
        )
    return best, why


def tune(job: TuneJob) -> TuneReport:
    checkpoint = load_checkpoint(job.model, device=job.device)
    model, tokenizer = checkpoint.model.eval(), checkpoint_tokenizer(checkpoint)
    entry = task_entry(task_of(model))
    task = make_task(entry.name, **job.task_options.given())
    if job.threads:
        torch.set_num_threads(job.threads)
    data = job.data or sample_data(entry)
    examples = task.load(Path(data), job.limit)
    shape = Shape(job.batch, job.seq or entry.default_workload.source_len, job.new_tokens if entry.generates else 0)
    candidates = available_candidates(entry, job.device, job.compiled)
    log.info("tuning %s (%s) at %s on %s: %s", job.model, entry.name, shape.describe(), job.device,
             ", ".join(c.name for c in candidates))  # fmt: skip
    with tempfile.TemporaryDirectory() as scratch:
        if entry.generates:
            timings, scores, metric = _summarization(model, tokenizer, task, examples, candidates, shape, job)
        else:
            timings, scores, metric = _question_answering(model, tokenizer, task, examples, candidates, shape, job,
                                                          Path(scratch), checkpoint.directory)  # fmt: skip
    reference_ms, reference_score = timings[REFERENCE.name].median_ms, scores[REFERENCE.name]
    measured = []
    for candidate in candidates:
        drop = reference_score - scores[candidate.name]
        bound = tolerance(candidate, job)
        measured.append(
            CandidateResult(
                candidate=candidate.name,
                runtime=candidate.runtime,
                dtype=candidate.dtype,
                median_ms=timings[candidate.name].median_ms,
                spread_ms=timings[candidate.name].spread_ms,
                speedup=reference_ms / timings[candidate.name].median_ms,
                metric=metric,
                score=scores[candidate.name],
                drop=drop,
                tolerance=bound,
                passes=drop <= bound + 1e-9,
            )  # fmt: skip
        )
    best, why = choose(measured)
    return TuneReport(
        model=str(job.model), task=entry.name, shape=shape.describe(), device=job.device,
        threads=torch.get_num_threads(), data=str(data), examples=len(examples), candidates=measured,
        chosen=best.candidate, why=why,
        variant={
            "checkpoint": str(job.model), "runtime": best.runtime, "dtype": best.dtype, "device": job.device,
            **({"compiled": "true"} if best.candidate.endswith("compiled") else {}),
        },
    )  # fmt: skip


def _question_answering(model, tokenizer, task, examples, candidates, shape, job, scratch, checkpoint_dir):
    positions = model.config.max_position_embeddings
    if task.max_length > positions:
        raise BlockserveError(f"--max-length {task.max_length} exceeds the model's {positions} positions")
    forwards = {c.name: qa_forward(model, c, scratch, job.device, job.threads, checkpoint_dir=checkpoint_dir)
                for c in candidates}  # fmt: skip
    inputs = random_inputs(model, shape, job.device)
    arrays = {name: inputs[name].cpu().numpy().astype(np.int64) for name in QA_INPUTS if name in inputs}
    timings = time_interleaved(
        {name: (lambda forward=forward: forward(arrays)) for name, forward in forwards.items()},
        job.warmup, job.repeats, job.device,
    )  # fmt: skip
    # The service's engine is the evaluator's span search over windows (tested equal), so each
    # candidate is scored exactly as it would answer when served.
    limits = LimitsConfig(
        window_tokens=task.max_length, window_stride=task.stride, max_question_tokens=task.max_length - task.stride - 9,
        max_input_tokens=10**6, max_answer_tokens=task.max_answer_tokens,
    )  # fmt: skip
    scores = {}
    for name, forward in forwards.items():
        engine = QAEngine(forward, tokenizer, limits, positions)
        predictions = {}
        for example in examples:
            spans = engine.answer([QAInput(example.question, example.context)])[0]
            predictions[example.id] = example.context[spans[0].start : spans[0].end] if spans else ""
        scores[name] = task.score(predictions, examples)["f1"]
        log.info("%s: F1 %.2f on %d questions", name, scores[name], len(examples))
    return timings, scores, "f1"


def _summarization(model, tokenizer, task, examples, candidates, shape, job):
    models = {c.name: in_dtype(model, getattr(torch, c.dtype)).eval() for c in candidates}
    inputs = random_inputs(model, shape, job.device)
    runners = {name: make_runner(m, task.name, inputs, shape) for name, m in models.items()}
    with torch.inference_mode():
        timings = time_interleaved(runners, job.warmup, job.repeats, job.device)
    scores = {}
    for name, candidate_model in models.items():
        scores[name] = task.evaluate(candidate_model, tokenizer, examples, progress=False)["rougeL"]
        log.info("%s: ROUGE-L %.2f on %d articles", name, scores[name], len(examples))
    return timings, scores, "rougeL"


def format_report(report: TuneReport) -> str:
    header = f"{'candidate':<24} {'ms':>9} {'± IQR':>7} {'speedup':>8} {report.candidates[0].metric:>7} {'drop':>6} {'bound':>6}  ok"
    lines = [f"{report.model}: {report.task} at {report.shape}, {report.device}, {report.threads} threads, "
             f"{report.examples} examples of {report.data}", header, "-" * len(header)]  # fmt: skip
    for m in report.candidates:
        lines.append(
            f"{m.candidate:<24} {m.median_ms:>9.1f} {m.spread_ms:>7.1f} {m.speedup:>7.2f}× {m.score:>7.2f} "
            f"{m.drop:>+6.2f} {m.tolerance:>6g}  {'yes' if m.passes else 'no'}"
        )
    variant = "\n".join(f"      {key}: {value}" for key, value in report.variant.items())
    lines += ["", f"chosen: {report.why}", "", "Serve config variant:", "  variants:", "    tuned:", variant]
    return "\n".join(lines)
