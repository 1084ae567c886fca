"""A latency model measured on the device and runtime a model will be served on.

What is measured: for every (stack, block) — e.g. `encoder.self_attn`, `decoder.cross_attn`,
`encoder.ffn` — the whole-model latency of the task's timed unit (QA forward; BART `generate()`,
so encoder and decoder are each timed at generate time) when *every* layer of that stack keeps `k`
units of that block and everything else is dense, for a grid of `k`. Each probe is timed
interleaved with the dense model, so its difference from dense is measured against the same drift;
divided by the number of layers it is one layer's latency change at `k` (`Curve`). Making all
layers alike multiplies the signal by the layer count. Curves are fitted piecewise linear between a
few knots (least squares over all probes, then non-decreasing: more units never cost less) and are
exact at `k = dense` (zero change); `fit_curve` says why the raw points are not used.

Prediction for a plan: dense latency + Σ over layers and blocks of the curve at the kept count
(linear between grid points). The additivity this assumes is checked by `check_predictions` on
random heterogeneous plans, and its error is reported.

Tables are cached as JSON, one file per key (device, threads, runtime, versions, model shape,
task, request shape), so a second pruning run on the same device skips the probes.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import platform
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from pruning.artifacts.compact import compact_model
from pruning.core.errors import PlanError
from pruning.core.plan import LayerPlan, PruningPlan, StackPlan
from pruning.core.structure import Geometry, geometry_of, task_of
from pruning.core.units import FFN
from pruning.runtime.numerics import dtype_name
from pruning.runtime.runners import Shape, TimingOptions, make_runner, random_inputs
from pruning.runtime.timing import Timing, time_interleaved

log = logging.getLogger(__name__)

TABLE_VERSION = 2  # 2: curves fitted between knots


class LatencyKey(BaseModel):
    """Everything a measured latency depends on; tables are reused only when all of it matches."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int = TABLE_VERSION
    device: str  # e.g. "cpu: Intel(R) Xeon(R) ..." or "cuda: NVIDIA H100 80GB HBM3"
    threads: int
    runtime: str
    dtype: str
    torch: str
    onnxruntime: str | None
    architecture: str
    geometry: str  # dense sizes, e.g. "h384 encoder: 6 layers × 12 heads × 32, 1536 FFN"
    task: str
    batch: int
    seq: int
    new_tokens: int
    knots: int  # of the fitted curves

    def digest(self) -> str:
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:16]


class Curve(BaseModel):
    """One layer's latency change (ms) against the dense layer when it keeps `counts[i]` units."""

    model_config = ConfigDict(extra="forbid")

    counts: list[int]
    measured_ms: list[float]  # raw per-layer differences, as timed
    fitted_ms: list[float]  # non-decreasing, 0 at the dense count

    def at(self, count: int | float | np.ndarray) -> float | np.ndarray:
        return np.interp(count, self.counts, self.fitted_ms)


class LatencyTable(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: LatencyKey
    dense_ms: float
    layers: dict[str, int]  # stack → number of layers
    curves: dict[str, Curve]  # "stack.block" → per-layer curve
    repeats: int
    seconds: float  # wall time spent measuring
    # How noisy the probe ratios are: the largest relative inter-quartile range of any model timed in
    # any chunk (older cached tables: unknown, 0). The dense reference's drift *between* chunks is
    # kept apart: each ratio is taken within its chunk, so drift scales dense and probe together.
    noise: float = 0.0
    drift: float = 0.0

    def curve(self, stack: str, block: str) -> Curve:
        return self.curves[f"{stack}.{block}"]

    def predict_ms(self, plan: PruningPlan) -> float:
        """Predicted latency of the model compacted to `plan`, at this table's shape and device."""
        return self.dense_ms + sum(self.changes_by_stack(plan).values())

    def changes_by_stack(self, plan: PruningPlan) -> dict[str, float]:
        """Predicted latency change (ms, ≤ 0) that each stack's pruning contributes."""
        changes = {}
        for stack_name, stack in plan.stacks.items():
            total = 0.0
            for layer in stack.layers:
                for block, kept in layer.heads.items():
                    total += float(self.curve(stack_name, block).at(len(kept)))
                total += float(self.curve(stack_name, FFN).at(len(layer.ffn_units)))
            changes[stack_name] = total
        return changes


@dataclass(frozen=True)
class LatencySettings:
    shape: Shape
    runtime: str = "torch"
    device: str = "cpu"
    repeats: int = 10
    warmup: int = 2
    head_points: int = 13  # grid points per attention curve (every count when heads ≤ this - 1)
    ffn_points: int = 17  # grid points per FFN curve
    knots: int = 5  # breakpoints of each fitted curve (see `fit_curve`)
    chunk: int = 6  # probes timed together with the dense model (bounds memory)
    threads: int | None = None
    max_noise: float = 0.10  # a chunk whose timings spread more than this is timed again ...
    attempts: int = 3  # ... at most this many times in all; a table still noisier is never cached

    @classmethod
    def for_timing(cls, shape: Shape, timing: TimingOptions) -> LatencySettings:
        """The settings of the user's timing options (the grid and fit keep their defaults)."""
        return cls(
            shape=shape, runtime=timing.runtime, device=timing.device, repeats=timing.repeats,
            threads=timing.threads, max_noise=timing.max_noise,
        )  # fmt: skip


# ---- keys and cache ----------------------------------------------------------------------------
def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return f"cuda: {torch.cuda.get_device_name(torch.device(device))}"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu: {cpu}"


def describe_geometry(geometry: Geometry) -> str:
    stacks = "; ".join(
        f"{s.name}: {s.num_layers} layers × {s.num_heads} heads × {s.head_dim} ({'+'.join(s.attention_names)}), "
        f"{s.ffn_units} FFN"
        for s in geometry.stacks
    )
    return f"h{geometry.hidden_size} {stacks}"


def table_key(model: PreTrainedModel, settings: LatencySettings) -> LatencyKey:
    onnxruntime_version = None
    if settings.runtime == "onnx":
        import onnxruntime

        onnxruntime_version = onnxruntime.__version__
    geometry = geometry_of(model.config)
    return LatencyKey(
        device=device_name(settings.device),
        threads=settings.threads or torch.get_num_threads(),
        runtime=settings.runtime,
        dtype=dtype_name(next(model.parameters()).dtype),
        torch=torch.__version__,
        onnxruntime=onnxruntime_version,
        architecture=geometry.architecture,
        geometry=describe_geometry(geometry),
        task=task_of(model),
        batch=settings.shape.batch,
        seq=settings.shape.seq,
        new_tokens=settings.shape.new_tokens,
        knots=settings.knots,
    )


def default_cache_dir() -> Path:
    root = os.environ.get("BLOCKSERVE_CACHE") or Path.home() / ".cache" / "blockserve"
    return Path(root) / "latency"


def load_cached(cache_dir: Path, key: LatencyKey) -> LatencyTable | None:
    path = Path(cache_dir) / f"{key.digest()}.json"
    if not path.is_file():
        return None
    try:
        table = LatencyTable.model_validate_json(path.read_text())
    except ValueError as error:  # a damaged cache entry is re-measured, not trusted
        log.warning("ignoring unreadable latency cache %s: %s", path, error)
        return None
    return table if table.key == key else None


def save_cached(cache_dir: Path, table: LatencyTable) -> Path:
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"{table.key.digest()}.json"
    temporary = path.with_suffix(".tmp")
    temporary.write_text(table.model_dump_json(indent=1))
    temporary.replace(path)  # atomic: a concurrent reader never sees half a file
    return path


# ---- measuring ---------------------------------------------------------------------------------
def isotonic_increasing(values: list[float], weights: list[float]) -> list[float]:
    """Weighted least-squares non-decreasing fit (pool adjacent violators)."""
    blocks: list[list[float]] = []  # [mean, weight, length]
    for value, weight in zip(values, weights, strict=True):
        blocks.append([value, weight, 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            mean2, weight2, length2 = blocks.pop()
            mean1, weight1, length1 = blocks.pop()
            total = weight1 + weight2
            blocks.append([(mean1 * weight1 + mean2 * weight2) / total, total, length1 + length2])
    fitted: list[float] = []
    for mean, _, length in blocks:
        fitted.extend([mean] * int(length))
    return fitted


def fit_curve(counts: list[int], measured: list[float], knots: int) -> list[float]:
    """A smooth, non-decreasing fit of one curve, exactly 0 at the dense count (the last one).

    Piecewise linear between `knots` evenly spaced counts, least squares over every measured point,
    then made non-decreasing. Why not the raw points: near the dense end a probe differs from dense
    by a fraction of a millisecond, less than this machine's noise, and the search would seize on
    any point that noise made look cheap (removing one head "saving" three heads' worth). A few
    knots average that noise over neighbouring points and keep the curve's real bends.
    """
    size = counts[-1]
    knot_counts = np.linspace(0, size, max(knots, 2))
    x = np.asarray(counts, dtype=np.float64)
    # Hat functions of the knots; the last knot's value is pinned to 0 (the dense model itself).
    basis = np.stack([np.interp(x, knot_counts, np.eye(len(knot_counts))[j]) for j in range(len(knot_counts) - 1)], 1)
    values, *_ = np.linalg.lstsq(basis, np.asarray(measured, dtype=np.float64), rcond=None)
    values = isotonic_increasing([*values.tolist(), 0.0], [1.0] * len(values) + [1e9])
    values = [min(value, 0.0) for value in values]
    return [float(v) for v in np.interp(x, knot_counts, values)]


def grid(size: int, points: int) -> list[int]:
    """Counts 0..size: all of them when they fit in `points`, else `points` evenly spaced."""
    if size + 1 <= points:
        return list(range(size + 1))
    return sorted({round(x) for x in np.linspace(0, size, points)})


def probe_plan(geometry: Geometry, stack: str, block: str, count: int) -> PruningPlan:
    """Dense everywhere except `block` of every layer of `stack`, which keeps its first `count` units."""
    data = PruningPlan.full(geometry).model_dump()  # plans are frozen: edit the data, validate anew
    for layer in data["stacks"][stack]["layers"]:
        if block == FFN:
            layer["ffn_units"] = list(range(count))
        else:
            layer["heads"][block] = list(range(count))
    return PruningPlan.model_validate(data)


def _time_plans(
    dense: PreTrainedModel,
    plans: dict[str, PruningPlan],
    settings: LatencySettings,
    scratch: Path,
    progress: tqdm | None = None,
) -> tuple[dict[str, float], list[Timing], float]:
    """Each plan's compact model timed interleaved with the dense model, chunk by chunk.

    Returns (plan name → its median / the dense median of its own chunk, the dense timings of every
    chunk, the noise of the noisiest chunk: see `chunk_noise`). Ratios rather than differences: when the machine's speed drifts between chunks
    (frequency, neighbours), both sides of a ratio scale together.
    """
    task = task_of(dense)
    inputs = random_inputs(dense, settings.shape, settings.device)

    def runner(model, name):
        return make_runner(
            model,
            task,
            inputs,
            settings.shape,
            settings.runtime,
            scratch=scratch,
            name=name,
            device=settings.device,
            threads=settings.threads,
        )

    dense_run = runner(dense, "dense")
    ratios: dict[str, float] = {}
    dense_timings: list[Timing] = []
    noise = 0.0
    names = list(plans)
    for start in range(0, len(names), settings.chunk):
        chunk = names[start : start + settings.chunk]
        candidates = {"dense": dense_run}
        for name in chunk:
            compact = compact_model(copy.deepcopy(dense), plans[name]).eval()
            candidates[name] = runner(compact, name)
        # A noisy chunk is timed again on its own (a few seconds), not the whole table (minutes).
        quietest: dict[str, Timing] | None = None
        for attempt in range(settings.attempts):
            with torch.inference_mode():
                timings = time_interleaved(candidates, settings.warmup, settings.repeats, settings.device)
            if quietest is None or chunk_noise(timings) < chunk_noise(quietest):
                quietest = timings
            if chunk_noise(quietest) <= settings.max_noise:
                break
            log.info("latency chunk %d spread %.1f%% > %.1f%%: timing it again (%d/%d)", start // settings.chunk,
                     100 * chunk_noise(timings), 100 * settings.max_noise, attempt + 1, settings.attempts)  # fmt: skip
        dense_timings.append(quietest["dense"])
        noise = max(noise, chunk_noise(quietest))
        for name in chunk:
            ratios[name] = quietest[name].median_ms / quietest["dense"].median_ms
        if progress is not None:
            progress.update(len(chunk))
    return ratios, dense_timings, noise


def chunk_noise(timings: dict[str, Timing]) -> float:
    """The largest relative inter-quartile range among the models timed together: how far a ratio may be off."""
    return max(timing.spread_ms / timing.median_ms for timing in timings.values())


def drift_of(dense_timings: list[Timing]) -> float:
    """How far the dense reference's median moved between chunks, relative to its median."""
    medians = [timing.median_ms for timing in dense_timings]
    return (max(medians) - min(medians)) / float(np.median(medians))


def measure_table(dense: PreTrainedModel, settings: LatencySettings) -> LatencyTable:
    """Probe the model at the settings' shape (see module docstring); minutes on a CPU."""
    start = time.perf_counter()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    dense = dense.to(settings.device).eval()
    geometry = geometry_of(dense.config)
    probes: dict[str, tuple[str, str, int]] = {}
    plans: dict[str, PruningPlan] = {}
    for stack in geometry.stacks:
        for block in (*stack.attention_names, FFN):
            size, points = (
                (stack.ffn_units, settings.ffn_points) if block == FFN else (stack.num_heads, settings.head_points)
            )
            for count in grid(size, points)[:-1]:  # the dense count is the reference itself
                name = f"{stack.name}.{block}={count}"
                probes[name] = (stack.name, block, count)
                plans[name] = probe_plan(geometry, stack.name, block, count)
    log.info(
        "latency model: %d probes at %s on %s (%s)",
        len(plans),
        settings.shape.describe(),
        settings.device,
        settings.runtime,
    )
    with tempfile.TemporaryDirectory() as scratch, tqdm(total=len(plans), desc="latency probes") as bar:
        ratios, dense_timings, noise = _time_plans(dense, plans, settings, Path(scratch), bar)
    dense_ms = float(np.median([timing.median_ms for timing in dense_timings]))
    curves = {}
    for stack in geometry.stacks:
        for block in (*stack.attention_names, FFN):
            size = stack.ffn_units if block == FFN else stack.num_heads
            names = [n for n, (s, b, _) in probes.items() if (s, b) == (stack.name, block)]
            counts = [probes[n][2] for n in names] + [size]
            measured = [(ratios[n] - 1.0) * dense_ms / stack.num_layers for n in names] + [0.0]
            fitted = fit_curve(counts, measured, settings.knots)
            curves[f"{stack.name}.{block}"] = Curve(counts=counts, measured_ms=measured, fitted_ms=fitted)
    return LatencyTable(
        key=table_key(dense, settings),
        dense_ms=dense_ms,
        layers={stack.name: stack.num_layers for stack in geometry.stacks},
        curves=curves,
        repeats=settings.repeats,
        seconds=round(time.perf_counter() - start, 1),
        noise=round(noise, 4),
        drift=round(drift_of(dense_timings), 4),
    )


def latency_table(
    dense: PreTrainedModel, settings: LatencySettings, cache_dir: Path | None = None, refresh: bool = False
) -> tuple[LatencyTable, bool]:
    """The cached table for this model/device/shape, or a fresh measurement (then cached).

    Returns (table, whether it came from the cache).
    """
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    key = table_key(dense, settings)
    if not refresh:
        cached = load_cached(cache_dir, key)
        if cached is not None:
            log.info("latency model from cache %s (%s)", cache_dir, key.digest())
            return cached, True
    table = measure_table(dense, settings)  # noisy chunks were already timed again inside
    if table.noise <= settings.max_noise:
        path = save_cached(cache_dir, table)
        log.info("latency model measured in %.0f s (noise %.1f%%, drift %.1f%%), cached at %s",
                 table.seconds, 100 * table.noise, 100 * table.drift, path)  # fmt: skip
        return table, False
    # Not cached: a later run on a quieter machine must measure again rather than inherit this noise.
    log.warning("latency model kept at %.1f%% noise and NOT cached; measure on a quieter machine", 100 * table.noise)
    return table, False


# ---- checking ----------------------------------------------------------------------------------
class PredictionCheck(BaseModel):
    plan: str  # a short description
    predicted_ms: float
    measured_ms: float
    error: float  # (predicted - measured) / measured


def random_plans(geometry: Geometry, count: int, seed: int = 0) -> list[PruningPlan]:
    """Heterogeneous plans: every layer draws its own number of heads per block and of FFN units."""
    rng = random.Random(seed)
    plans = []
    for _ in range(count):
        stacks = {}
        for stack in geometry.stacks:
            layers = []
            for _ in range(stack.num_layers):
                heads = {
                    block: sorted(rng.sample(range(stack.num_heads), rng.randint(0, stack.num_heads)))
                    for block in stack.attention_names
                }
                units = sorted(rng.sample(range(stack.ffn_units), rng.randint(0, stack.ffn_units)))
                layers.append(LayerPlan(heads=heads, ffn_units=units))
            stacks[stack.name] = StackPlan(num_heads=stack.num_heads, ffn_units=stack.ffn_units, layers=layers)
        plans.append(PruningPlan(architecture=geometry.architecture, stacks=stacks))
    return plans


def check_predictions(
    dense: PreTrainedModel, table: LatencyTable, plans: list[PruningPlan], settings: LatencySettings
) -> list[PredictionCheck]:
    """Measure each plan's compact model (interleaved with dense) against the table's prediction.

    The measured latency is the table's dense latency times the measured compact/dense ratio, so
    the machine's drift between the probing and this check does not count as prediction error.
    """
    if not plans:
        raise PlanError("no plans to check")
    named = {f"plan {i}": plan for i, plan in enumerate(plans)}
    with tempfile.TemporaryDirectory() as scratch, tqdm(total=len(named), desc="latency check") as bar:
        ratios, *_ = _time_plans(dense.eval(), named, settings, Path(scratch), bar)
    checks = []
    for name, plan in named.items():
        measured = table.dense_ms * ratios[name]
        predicted = table.predict_ms(plan)
        checks.append(
            PredictionCheck(
                plan=plan.summary().describe(),
                predicted_ms=round(predicted, 3),
                measured_ms=round(measured, 3),
                error=round((predicted - measured) / measured, 4),
            )
        )
    return checks
