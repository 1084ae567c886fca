"""`blockserve prune --method posttrain`: prune a fine-tuned model in minutes, to a latency budget.

1. Importance of every head and FFN unit on calibration data (`pruning.methods.posttrain.importance`).
2. The latency model of this device/runtime/request shape, measured or from the cache
   (`pruning.methods.posttrain.latency_model`); the budget is `dense / speedup` or an absolute `latency_ms`.
3. Search: per-layer counts maximising kept importance with predicted latency ≤ budget
   (`pruning.methods.posttrain.search`); optionally (`--rearrange`) each layer's kept units re-chosen
   on its whole Fisher block (`...posttrain.rearrangement`, same counts); compaction to that plan.
4. Reconstruction: least-squares refit of each pruned layer's projection weights (or only scales of
   the kept units) against the dense layer outputs (`pruning.methods.posttrain.reconstruction`).
   Optionally, 4b. recovery: a short distillation from the dense model (`...posttrain.recovery`).
5. Measure dense vs compact latency at the budget's shape (same process, same inputs, interleaved),
   optionally evaluate both, and write format v1 whose `method` records the budget, predicted and
   measured latency, and the time each phase took.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from transformers import PreTrainedModel

from pruning.artifacts.checkpoint import Manifest, load_checkpoint, save_compact
from pruning.artifacts.compact import compact_model
from pruning.artifacts.records import (
    Attempt,
    Budget,
    Evaluation,
    LatencyModelUse,
    Measured,
    PosttrainMethod,
    Predicted,
    RearrangementRecord,
    ReconstructionRecord,
)
from pruning.core.errors import CheckpointError
from pruning.core.options import ExistingFile, Flag, ModelReference
from pruning.core.plan import Alignment
from pruning.core.structure import geometry_of, task_of
from pruning.methods.posttrain.importance import compute_importance
from pruning.methods.posttrain.latency_model import LatencySettings, LatencyTable, latency_table
from pruning.methods.posttrain.rearrangement import rearrange_plan
from pruning.methods.posttrain.reconstruction import Reconstruct, reconstruct
from pruning.methods.posttrain.recovery import RecoverySettings, recover
from pruning.methods.posttrain.search import SearchResult, search_plan
from pruning.runtime.numerics import in_dtype
from pruning.runtime.runners import Shape, TimingOptions, make_runner, random_inputs
from pruning.runtime.timing import time_interleaved
from pruning.tasks import make_task
from pruning.tasks.evaluate import checkpoint_tokenizer, evaluate_model
from pruning.tasks.options import TaskOptions

log = logging.getLogger(__name__)


POSTTRAIN = "posttrain (minutes, no training)"


def _posttrain(**flag: object) -> Flag:
    return Flag(group=POSTTRAIN, **flag)


class PosttrainSettings(BaseModel):
    """How post-training pruning runs: importance, budget, the request shape it is for, verification."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    importance: Annotated[Literal["fisher", "magnitude", "random"], _posttrain()] = Field(
        "fisher", description="unit importance: Fisher of mask variables, or a baseline"
    )
    speedup: Annotated[float | None, _posttrain()] = Field(
        None, ge=1.0, le=1000.0, description="budget: dense latency / this"
    )
    latency_ms: Annotated[float | None, _posttrain()] = Field(
        None, gt=0.0, le=1e7, description="budget: this many milliseconds per request"
    )
    calib_samples: Annotated[int, _posttrain()] = Field(512, ge=1, le=10**7, description="calibration examples")
    rearrange: Annotated[bool, _posttrain(switch=True)] = Field(
        False, description="fisher: re-choose each layer's kept units on its whole Fisher block (same counts)"
    )
    reconstruct: Annotated[Reconstruct, _posttrain()] = Field(
        "weights", description="refit pruned layers: kept weights and biases, kept-unit scales, or nothing"
    )
    reconstruct_samples: Annotated[int, _posttrain()] = Field(
        512, ge=1, le=10**6, description="calibration features used by reconstruction"
    )
    ridge: Annotated[float, _posttrain()] = Field(1e-2, gt=0.0, le=1e6, description="scales: pull towards 1")
    weight_ridge: Annotated[float, _posttrain()] = Field(
        0.1, gt=0.0, le=1e6, description="weights: pull towards the scaled weights (× mean Gram diagonal)"
    )
    recovery: RecoverySettings = RecoverySettings()
    timing: TimingOptions = TimingOptions()
    align: Annotated[Alignment, _posttrain()] = 1
    corrections: Annotated[int, _posttrain()] = Field(
        2, ge=0, le=20, description="re-searches when the measured speedup misses the budget"
    )
    tolerance: Annotated[float, _posttrain()] = Field(
        0.05, ge=0.0, le=1.0, description="allowed miss before correcting"
    )
    seed: int = Field(0, ge=0, le=2**32 - 1)
    eval_limit: int | None = Field(None, ge=1, description="use only the first N eval examples")
    task_options: TaskOptions = TaskOptions()

    @model_validator(mode="before")
    @classmethod
    def _before_reconstruction(cls, data: object) -> object:
        """Settings recorded before reconstruction: `tune` (scales or nothing), `tune_samples`."""
        if isinstance(data, dict) and ("tune" in data or "tune_samples" in data):
            data = dict(data)
            if "tune" in data:
                data["reconstruct"] = "scales" if data.pop("tune") else "none"
            if "tune_samples" in data:
                data["reconstruct_samples"] = data.pop("tune_samples")
        return data

    @model_validator(mode="after")
    def _one_budget(self) -> PosttrainSettings:
        if (self.speedup is None) == (self.latency_ms is None):
            raise ValueError("give exactly one budget: `speedup` or `latency_ms`")
        if self.rearrange and self.importance != "fisher":
            raise ValueError("`rearrange` needs Fisher blocks: use it with importance `fisher`")
        return self


class PosttrainJob(BaseModel):
    """`blockserve prune --method posttrain`: the dense model, its data, the settings, where to write."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Literal["posttrain"]
    model: Annotated[ModelReference, _posttrain()] = Field(description="dense fine-tuned checkpoint")
    calib: Annotated[ExistingFile, _posttrain()] = Field(description="calibration data (task format, labelled)")
    eval: ExistingFile | None = Field(None, description="evaluation data file (optional for posttrain)")
    out: Path
    latency_cache: Annotated[Path | None, _posttrain()] = Field(
        None, description="latency model cache (default ~/.cache/blockserve/latency)"
    )
    refresh_latency: Annotated[bool, _posttrain(switch=True)] = Field(
        False, description="re-measure even if a cached model exists"
    )
    resume: Annotated[bool, _posttrain(switch=True)] = Field(
        False, description="continue an interrupted recovery of the same plan from OUT/recovery"
    )
    posttrain: PosttrainSettings


def measure_speedup(dense, compact, shape: Shape, settings: PosttrainSettings) -> tuple[float, float]:
    """(dense ms, compact ms): medians of interleaved runs on the same inputs, after warm-up, in the
    numerics the budget is for (copies where the models are in others)."""
    dtype = settings.timing.torch_dtype()
    dense, compact = in_dtype(dense, dtype), in_dtype(compact, dtype)
    task = task_of(dense)
    inputs = random_inputs(dense, shape, settings.timing.device, seed=1)  # not the probes' inputs
    with tempfile.TemporaryDirectory() as scratch:
        runners = {
            name: make_runner(
                model,
                task,
                inputs,
                shape,
                settings.timing.runtime,
                scratch=Path(scratch),
                name=name,
                device=settings.timing.device,
                threads=settings.timing.threads,
            )
            for name, model in (("dense", dense), ("compact", compact))
        }
        with torch.inference_mode():
            timings = time_interleaved(
                runners, warmup=3, repeats=max(settings.timing.repeats, 10), device=settings.timing.device
            )
    return timings["dense"].median_ms, timings["compact"].median_ms


def prune_posttrain(job: PosttrainJob) -> Manifest:
    settings, model_dir, out_dir = job.posttrain, job.model, job.out
    started = time.perf_counter()
    seconds: dict[str, float] = {}

    def lap(name: str, since: float) -> float:
        now = time.perf_counter()
        seconds[name] = round(now - since, 1)
        return now

    if settings.timing.threads:
        torch.set_num_threads(settings.timing.threads)
    checkpoint = load_checkpoint(model_dir, device=settings.timing.device)
    if checkpoint.is_compact:
        raise CheckpointError(f"{model_dir} is already compact; post-training pruning starts from a dense model")
    dense = checkpoint.model.eval()
    task_name = task_of(dense)
    task = make_task(task_name, **settings.task_options.given())
    tokenizer = checkpoint_tokenizer(checkpoint)
    geometry = geometry_of(dense.config)
    shape = settings.timing.shape(dense)

    examples = task.load(job.calib, settings.calib_samples)
    features = task.train_features(tokenizer, examples)
    log.info("calibration: %d examples → %d features from %s", len(examples), len(features), job.calib)
    now = lap("load", started)

    importance = compute_importance(
        settings.importance, dense, task, tokenizer, features, seed=settings.seed, blocks=settings.rearrange
    )
    now = lap("importance", now)

    latency_settings = LatencySettings.for_timing(shape, settings.timing)
    # Timed in the numerics that will serve: the table's key (and so the cache) carries that dtype.
    timed = in_dtype(dense, settings.timing.torch_dtype())
    table, cached = latency_table(timed, latency_settings, job.latency_cache, refresh=job.refresh_latency)
    now = lap("latency_model", now)

    budget = settings.latency_ms if settings.latency_ms is not None else table.dense_ms / settings.speedup
    verified = _search_and_verify(dense, geometry, importance, table, budget, shape, settings, timed_dense=timed)
    del timed  # the timing copy (bf16 here) is not needed by mask tuning and evaluation
    now = lap("search_and_measure", now)
    rearrangement = None
    if settings.rearrange:  # same counts, so the same shapes and the same measured speed
        plan, rearrangement = rearrange_plan(verified.result.plan, importance.blocks)
        verified.result = dataclasses.replace(verified.result, plan=plan)
        verified.compact = compact_model(copy.deepcopy(dense), plan).eval()
        importance.blocks.clear()  # units² numbers per group: not kept past their use
        now = lap("rearrangement", now)
    result, compact = verified.result, verified.compact

    # Same shapes, same speed: refit once, after the plan is settled.
    tuning = reconstruct(
        compact, dense, task, tokenizer, features[: settings.reconstruct_samples], mode=settings.reconstruct,
        ridge=settings.ridge, weight_ridge=settings.weight_ridge,
    )  # fmt: skip
    now = lap("reconstruction", now)
    seconds["total_pruning"] = round(now - started, 1)

    recovery = None
    if settings.recovery.enabled:
        recovery = _recover(job, task, tokenizer, dense, compact, result.plan)
        now = lap("recovery", now)

    evaluation = Evaluation()
    if job.eval is not None:
        evaluation = _evaluate(job, task, tokenizer, dense, compact)
        lap("evaluation", now)

    method = _method_record(
        job, len(examples), len(features), verified, table, cached, tuning, rearrangement, recovery, seconds
    )
    manifest = save_compact(
        compact, result.plan, out_dir, source=str(model_dir), tokenizer=tokenizer, method=method, evaluation=evaluation
    )
    _write_side_files(job, importance, table, result)
    return manifest


def _recover(job: PosttrainJob, task, tokenizer, dense, compact, plan):
    """Distil `compact` in place from `dense` on the calibration file's examples (more of them than
    calibration itself reads), scoring a few eval examples along the way when there is eval data."""
    settings = job.posttrain
    examples = task.load(job.calib, settings.recovery.recover_samples)
    features = task.train_features(tokenizer, examples)
    log.info("recovery: %d examples → %d features", len(examples), len(features))
    eval_examples = task.load(job.eval, min(settings.eval_limit or 200, 200)) if job.eval is not None else None
    return recover(
        compact, dense, task, tokenizer, features, settings.recovery, job.out / "recovery",
        identity={"plan": plan.digest(), "model": str(job.model)}, seed=settings.seed,
        eval_examples=eval_examples, resume=job.resume,
    )  # fmt: skip


def _evaluate(job: PosttrainJob, task, tokenizer, dense: PreTrainedModel, compact: PreTrainedModel) -> Evaluation:
    """Dense and pruned scores on `job.eval`, the same examples for both."""
    examples = task.load(job.eval, job.posttrain.eval_limit)
    return Evaluation(
        data=str(job.eval),
        dense=evaluate_model(dense, tokenizer, task, examples, label="dense"),
        pruned=evaluate_model(compact, tokenizer, task, examples, label="pruned"),
        result="pruned",
    )


def _write_side_files(job: PosttrainJob, importance, table: LatencyTable, result: SearchResult) -> None:
    """What the manifest summarises, in full: importance per unit, the latency table, and their plot."""
    (job.out / "importance.json").write_text(json.dumps(importance.to_dict()))
    (job.out / "latency_model.json").write_text(table.model_dump_json(indent=1))
    plot_posttrain(result, table, job.out / "posttrain.png", title=f"{Path(job.model).name} → {job.out.name}")


@dataclass
class VerifiedPlan:
    """The plan that was kept, its compact model, and what the device measured for it."""

    result: SearchResult
    compact: PreTrainedModel
    budget_ms: float  # the asked budget (the search's may differ after corrections)
    dense_ms: float
    compact_ms: float
    attempts: list[Attempt]


def _search_and_verify(
    dense, geometry, importance, table: LatencyTable, budget: float, shape: Shape, settings: PosttrainSettings,
    timed_dense=None,
):  # fmt: skip
    """Search, compact and measure; if the measured speed misses the budget, correct and search again.

    The latency model predicts from per-layer curves measured minutes earlier on a shared machine;
    the chosen plan itself is then timed against the dense model. When its measured compact/dense
    ratio is off the asked one by more than `tolerance`, the budget given to the search is scaled by
    predicted/measured for that plan — the table's error for plans like it — and the search runs
    again (at most `corrections` times). Every attempt is recorded in the manifest. `timed_dense` is
    the dense model already in the timed numerics (the latency table's copy), so it is not cast again.
    """
    target_ratio = budget / table.dense_ms
    search_budget = budget
    attempts = []
    for attempt in range(settings.corrections + 1):
        result = search_plan(geometry, importance, table, search_budget, align=settings.align)
        compact = compact_model(copy.deepcopy(dense), result.plan).eval()
        dense_ms, compact_ms = measure_speedup(dense if timed_dense is None else timed_dense, compact, shape, settings)
        measured_ratio = compact_ms / dense_ms
        predicted_ratio = result.predicted_ms / table.dense_ms
        attempts.append(
            Attempt(
                search_budget_ms=round(search_budget, 3),
                predicted_speedup=round(1 / predicted_ratio, 4),
                measured_dense_ms=round(dense_ms, 3),
                measured_compact_ms=round(compact_ms, 3),
                measured_speedup=round(1 / measured_ratio, 4),
            )
        )
        log.info(
            "attempt %d: predicted speedup %.2f×, measured %.2f× (dense %.1f ms, compact %.1f ms; asked %.2f×); "
            "%.1f%% of %s importance kept",
            attempt + 1, 1 / predicted_ratio, 1 / measured_ratio, dense_ms, compact_ms, 1 / target_ratio,
            100 * result.kept_importance, importance.method,
        )  # fmt: skip
        if abs(measured_ratio / target_ratio - 1) <= settings.tolerance or attempt == settings.corrections:
            break
        corrected = budget * predicted_ratio / measured_ratio
        if corrected < result.floor_ms or corrected >= table.dense_ms:
            log.warning("no correction possible (budget %.1f ms outside the searchable range)", corrected)
            break
        search_budget = corrected
    return VerifiedPlan(result, compact, budget, dense_ms, compact_ms, attempts)


def _method_record(
    job: PosttrainJob,
    calib_examples: int,
    calib_features: int,
    verified: VerifiedPlan,
    table: LatencyTable,
    cached: bool,
    tuning: list,
    rearrangement: RearrangementRecord | None,
    recovery,
    seconds: dict[str, float],
) -> PosttrainMethod:
    settings, result = job.posttrain, verified.result
    improved = [t for t in tuning if t.error_after < t.error_before]
    key = table.key
    return PosttrainMethod(
        model=str(job.model),
        importance=settings.importance,
        calib_file=str(job.calib),
        calib_examples=calib_examples,
        calib_features=calib_features,
        budget=Budget(
            speedup=settings.speedup,
            latency_ms=round(verified.budget_ms, 3),
            batch=key.batch,
            seq=key.seq,
            new_tokens=key.new_tokens,
            runtime=key.runtime,
            device=key.device,
            threads=key.threads,
            dtype=key.dtype,
        ),  # fmt: skip
        predicted=Predicted(
            dense_ms=round(table.dense_ms, 3),
            compact_ms=round(result.predicted_ms, 3),
            speedup=round(result.predicted_speedup, 4),
            search_budget_ms=round(result.budget_ms, 3),
            floor_ms=round(result.floor_ms, 3),
            change_by_stack_ms={k: round(v, 3) for k, v in table.changes_by_stack(result.plan).items()},
            kept_importance=round(result.kept_importance, 4),
            latency_model=LatencyModelUse(cached=cached, probes_seconds=table.seconds, key=key.digest()),
        ),
        measured=Measured(
            dense_ms=round(verified.dense_ms, 3),
            compact_ms=round(verified.compact_ms, 3),
            speedup=round(verified.dense_ms / verified.compact_ms, 4),
            attempts=verified.attempts,
        ),
        reconstruction=ReconstructionRecord(
            mode=settings.reconstruct,
            features=min(settings.reconstruct_samples, calib_features) if settings.reconstruct != "none" else 0,
            ridge=settings.ridge,
            weight_ridge=settings.weight_ridge if settings.reconstruct == "weights" else None,
            groups=len(tuning),
            groups_improved=len(improved),
            error_before=round(sum(t.error_before for t in tuning), 6),
            error_after=round(sum(t.error_after for t in tuning), 6),
            per_group=[t.model_dump() for t in tuning],
        ),
        rearrangement=rearrangement,
        recovery=recovery,
        seconds=seconds,
        settings=job.model_dump(mode="json"),
    )


def plot_posttrain(result: SearchResult, table: LatencyTable, path: Path, title: str) -> None:
    """Left: what each layer keeps. Right: the latency model's curves (measured points and fit)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    labels, series = [], {}
    for stack_name, stack in result.plan.stacks.items():
        for index, layer in enumerate(stack.layers):
            labels.append(f"{stack_name[:3]}{index}")
            for block, kept in layer.heads.items():
                series.setdefault(f"{stack_name}.{block} heads", {})[labels[-1]] = len(kept) / stack.num_heads
            series.setdefault(f"{stack_name}.ffn units", {})[labels[-1]] = len(layer.ffn_units) / stack.ffn_units
    width = 0.8 / max(len(series) // max(len(result.plan.stacks), 1), 1)
    kinds = sorted({name.split(".", 1)[1] for name in series})
    for offset, kind in enumerate(kinds):
        xs, ys = [], []
        for name, values in series.items():
            if name.split(".", 1)[1] == kind:
                for label, value in values.items():
                    xs.append(labels.index(label) + offset * width)
                    ys.append(value)
        left.bar(xs, ys, width=width, label=kind)
    left.set_xticks([i + width * (len(kinds) - 1) / 2 for i in range(len(labels))], labels, fontsize=8)
    left.set_ylim(0, 1.15)
    left.set_ylabel("fraction kept")
    left.set_title(
        f"plan: predicted {result.predicted_ms:.1f} ms ≤ search budget {result.budget_ms:.1f} ms (dense {result.dense_ms:.1f})",
        fontsize=9,
    )
    left.legend(fontsize=8)
    for name, curve in table.curves.items():
        size = curve.counts[-1]
        fractions = [c / size for c in curve.counts]
        line = right.plot(fractions, curve.fitted_ms, label=name)[0]
        right.scatter(fractions, curve.measured_ms, s=10, color=line.get_color())
    right.set_xlabel("fraction of the block's units kept (every layer alike)")
    right.set_ylabel("latency change per layer (ms)")
    key = table.key
    right.set_title(f"latency model: {key.runtime}, b{key.batch} s{key.seq}, {key.device[:40]}", fontsize=9)
    right.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
