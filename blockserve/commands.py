"""What each `blockserve` command does with its validated options (the pipelines live in the packages).

The options of the pipelines' commands are declared with the pipelines (`FinetuneJob`, `MovementJob`,
`PosttrainJob`, `EvaluateJob`, `LoadtestJob`); the thin commands that only wire parts together
declare theirs here. Either way a command's options are one pydantic model, and `blockserve.cli`
derives its flags from it.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pruning.artifacts.records import Evaluation, PlanFileMethod, Scores
from pruning.core.options import ExistingFile, Flag, ModelReference
from pruning.core.plan import Alignment, PruningPlan
from pruning.methods.int8_calibration import Int8CalibrationSettings
from pruning.runtime.bench import BenchSettings
from pruning.runtime.runners import TimingOptions
from pruning.tasks.evaluate import EvaluateJob
from pruning.zoo.presets import PresetName
from service.kuberay import ClusterSpec

log = logging.getLogger("blockserve")


class Job(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _ModelOrPreset(Job):
    model: ModelReference | None = Field(None, description="dense (or compact) checkpoint directory or hub id")
    arch: PresetName | None = Field(None, description="built-in architecture preset (random weights)")

    @model_validator(mode="after")
    def _one_source(self):
        if (self.model is None) == (self.arch is None):
            raise ValueError("give exactly one of `model` and `arch`")
        return self


def _fraction(default: float | None, what: str):
    return Field(default, ge=0.0, le=1.0, description=f"fraction of {what} kept per layer")


class PlanJob(_ModelOrPreset):
    keep_heads: float = _fraction(..., "heads")
    keep_ffn: float = _fraction(..., "FFN units")
    align: Alignment = 1
    out: Path = Field(description="plan JSON to write")


class CompactJob(Job):
    model: ModelReference = Field(description="dense checkpoint directory or hub id")
    plan: ExistingFile = Field(description="pruning plan JSON")
    out: Path = Field(description="output directory")


class ExportJob(Job):
    model: ModelReference = Field(description="checkpoint directory or hub id")
    out: Path = Field(description="output directory (the checkpoint + model.onnx; may be the checkpoint's own)")
    int8: Int8CalibrationSettings = Int8CalibrationSettings()


class BenchJob(_ModelOrPreset):
    plan: ExistingFile | None = Field(None, description="plan JSON (default: uniform from --keep-*)")
    keep_heads: float = _fraction(0.5, "heads")
    keep_ffn: float = _fraction(0.33, "FFN units")
    align: Alignment = 1
    bench: BenchSettings = BenchSettings()
    json_out: Annotated[str | None, Flag("--json")] = Field(
        None, description="write one JSON object per configuration to PATH ('-' for stdout)"
    )
    plot: Path | None = Field(None, description="write a PNG of speedup vs FLOPs ratio")


class LatencyJob(_ModelOrPreset):
    timing: TimingOptions = TimingOptions()
    check: int = Field(0, ge=0, le=1000, description="measure N random plans against the prediction")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="seed of the random plans")
    latency_cache: Path | None = Field(None, description="cache directory (default ~/.cache/blockserve/latency)")
    refresh: Annotated[bool, Flag(switch=True)] = Field(False, description="re-measure even if cached")
    json_out: Annotated[str | None, Flag("--json")] = Field(
        None, description="write the table and checks to PATH ('-' for stdout)"
    )


class InitJob(Job):
    arch: PresetName = Field(description="architecture preset")
    corpus: tuple[ExistingFile, ...] = Field(min_length=1, description="data files in the task format")
    vocab_size: int = Field(8000, ge=64, le=1_000_000, description="tokenizer vocabulary")
    seed: int = Field(0, ge=0, le=2**32 - 1)
    out: Path = Field(description="output directory")


class ServeJob(Job):
    config: Annotated[ExistingFile, Flag(positional=True)] = Field(description="Ray Serve config file")


class KuberayJob(Job):
    config: Annotated[ExistingFile, Flag(positional=True)] = Field(
        description="Ray Serve config file (e.g. deploy/serve-gpu.yaml)"
    )
    out: Path = Field(Path("deploy/kuberay/rayservice.yaml"), description="manifest to write")
    cluster: ClusterSpec = ClusterSpec()


class DemoJob(Job):
    qa_model: ModelReference | None = Field(
        None, description="dense QA checkpoint or hub id (default: BERT-base shapes, random weights)"
    )
    sum_model: ModelReference | None = Field(
        None, description="dense summarization checkpoint or hub id (default: BART-base, random)"
    )
    qa_method: Literal["posttrain", "uniform"] = Field(
        "posttrain", description="how a real QA model is pruned: post-training to 1.5×, or the uniform plan"
    )
    zoo: Path = Field(Path("artifacts/zoo"), description="where the zoo is built or reused")
    once: Annotated[bool, Flag(switch=True)] = Field(
        False, description="exit after the check instead of serving until Ctrl-C"
    )
    port: int = Field(8000, ge=1, le=65535)
    repeats: int = Field(5, ge=1, le=1000, description="timed requests per variant")


# ---- output helpers -----------------------------------------------------------------------------
def write_json(text: str, destination: str | None) -> None:
    """`text` to stdout (`-`) or to a file (parents created)."""
    if destination == "-":
        print(text)
    elif destination:
        Path(destination).parent.mkdir(parents=True, exist_ok=True)
        Path(destination).write_text(text + "\n")
        print(f"wrote {destination}")


def print_scores(scores: Scores, destination: str | None = None) -> None:
    write_json(scores.model_dump_json(indent=1, exclude_none=True), destination)
    if destination != "-":
        metrics = ", ".join(f"{name}={value:.2f}" for name, value in scores.metrics().items())
        print(f"{scores.model} on {scores.n} examples of {scores.data}: {metrics} ({scores.seconds:.0f} s)")


def print_plan_and_scores(plan: PruningPlan, evaluation: Evaluation) -> None:
    for stack, counts in plan.summary().items():
        print(f"  {stack}: {counts.describe()}")
    for name, scores in evaluation.stages():
        print(f"  {name}: " + ", ".join(f"{metric} {value:.2f}" for metric, value in scores.metrics().items()))


# ---- commands -----------------------------------------------------------------------------------
def run_finetune(job) -> None:
    from pruning.methods.finetune import finetune

    result = finetune(job)
    print(f"wrote {job.out} ({result.steps} steps, {result.train_seconds:.0f} s)")
    if result.evaluation is not None:
        print_scores(result.evaluation)


def run_prune(job) -> None:
    from pruning.methods.movement.pipeline import MovementJob, prune_movement
    from pruning.methods.posttrain.pipeline import prune_posttrain

    if isinstance(job, MovementJob):
        manifest = prune_movement(job)
        print(
            f"wrote {job.out}: density {manifest.method.final_density:.3f}, FLOPs ratio {manifest.stats.flops_ratio:.2f}"
        )
    else:
        manifest = prune_posttrain(job)
        method = manifest.method
        print(
            f"wrote {job.out}: {method.importance} importance, budget {method.budget.latency_ms:.1f} ms "
            f"({method.budget.runtime}, {method.budget.device}), pruning took {method.seconds['total_pruning']:.0f} s"
        )
        print(
            f"  latency: dense {method.measured.dense_ms:.1f} ms → compact {method.measured.compact_ms:.1f} ms, "
            f"measured speedup {method.measured.speedup:.2f}× (predicted {method.predicted.speedup:.2f}×)"
        )
    print_plan_and_scores(manifest.plan, manifest.evaluation)


def run_evaluate(job: EvaluateJob) -> None:
    from pruning.tasks.evaluate import evaluate_checkpoint

    print_scores(evaluate_checkpoint(job), job.json_out)


def run_plan(job: PlanJob) -> None:
    from pruning.core.structure import geometry_of

    PruningPlan.uniform(geometry_of(_dense_config(job)), job.keep_heads, job.keep_ffn, job.align).save(job.out)
    print(f"wrote uniform plan (keep {job.keep_heads:g} of heads, {job.keep_ffn:g} of FFN units) to {job.out}")


def _dense_config(job: _ModelOrPreset):
    from pruning.artifacts.checkpoint import read_config, resolve_directory
    from pruning.zoo.presets import preset_config

    return preset_config(job.arch)[1] if job.arch else read_config(resolve_directory(job.model))


def run_compact(job: CompactJob) -> None:
    from pruning.artifacts.checkpoint import compact_checkpoint

    log.info("compacting %s with %s", job.model, job.plan)
    method = PlanFileMethod(plan_file=str(job.plan))
    stats = compact_checkpoint(job.model, PruningPlan.load(job.plan), job.out, method=method).stats
    print(
        f"wrote {job.out}: {stats.params:,} parameters (dense {stats.params_dense:,}, "
        f"{stats.params / stats.params_dense:.1%}); FLOPs ratio {stats.flops_ratio:.2f} at {stats.workload}"
    )


def run_export(job: ExportJob) -> None:
    from transformers import AutoTokenizer

    from pruning.artifacts.export import INT8_NAME, INT8_REPORT, export_checkpoint
    from pruning.methods.int8_calibration import calibrate_int8

    graph = export_checkpoint(job.model, job.out)
    print(f"wrote {graph}")
    if job.int8.int8_calib:  # the export directory holds the tokenizer; its weights are not needed here
        tokenizer = AutoTokenizer.from_pretrained(job.out)
        report = calibrate_int8(graph, tokenizer, job.int8, job.out / INT8_NAME)
        write_json(report.model_dump_json(indent=2), job.out / INT8_REPORT)
        print(
            f"wrote {job.out / INT8_NAME}: {len(report.kept_fp32)} of {len(report.sensitivity)} nodes kept in "
            f"float32, best span = fp32 on {report.agreement:.1%} of {report.windows} calibration windows "
            f"(all int8: {report.agreement_all_int8:.1%}); details in {job.out / INT8_REPORT}"
        )


def run_bench(job: BenchJob) -> None:
    from pruning.runtime.bench import benchmark, format_table, plot_rows

    dense, plan, arch = _bench_subject(job)
    rows = benchmark(dense, plan, arch, job.bench)
    notes = sys.stderr if job.json_out == "-" else sys.stdout  # stdout carries the JSON then
    print(format_table(rows), file=notes)
    if job.json_out:
        write_json("\n".join(row.model_dump_json() for row in rows), job.json_out)
    if job.plot:
        plot_rows(rows, job.plot)
        print(f"wrote {job.plot}", file=notes)


def _bench_subject(job: BenchJob):
    """The dense model, the plan and a name: from a preset, a dense directory or a compact one."""
    from pruning.artifacts.checkpoint import load_checkpoint
    from pruning.core.structure import geometry_of
    from pruning.zoo.presets import build_preset

    plan = None
    if job.arch:
        dense, arch = build_preset(job.arch), job.arch
    else:
        checkpoint = load_checkpoint(job.model)
        arch = Path(job.model).name
        if checkpoint.is_compact:
            # A compact checkpoint is benchmarked against the dense model it came from.
            plan = checkpoint.manifest.plan
            log.info("compact checkpoint: loading its dense source %s", checkpoint.manifest.source)
            dense = load_checkpoint(checkpoint.manifest.source).model
        else:
            dense = checkpoint.model
    if job.plan:
        plan = PruningPlan.load(job.plan)
    if plan is None:
        plan = PruningPlan.uniform(geometry_of(dense.config), job.keep_heads, job.keep_ffn, job.align)
    return dense, plan, arch


def run_latency(job: LatencyJob) -> None:
    from pruning.artifacts.checkpoint import load_checkpoint
    from pruning.core.errors import BlockserveError
    from pruning.core.structure import geometry_of
    from pruning.methods.posttrain.latency_model import LatencySettings, check_predictions, latency_table, random_plans
    from pruning.runtime.numerics import in_dtype
    from pruning.zoo.presets import build_preset

    if job.arch:
        dense = build_preset(job.arch)
    else:
        checkpoint = load_checkpoint(job.model)
        if checkpoint.is_compact:
            raise BlockserveError(f"{job.model} is compact; the latency model is measured on the dense model")
        dense = checkpoint.model
    timing = job.timing
    dense = in_dtype(dense, timing.torch_dtype())  # timed in the numerics that will serve
    shape = timing.shape(dense)
    settings = LatencySettings.for_timing(shape, timing)
    table, cached = latency_table(dense, settings, job.latency_cache, refresh=job.refresh)
    print(
        f"latency model ({'cached' if cached else f'measured in {table.seconds:.0f} s'}): dense {table.dense_ms:.1f} ms "
        f"at {shape.describe()}, {table.key.runtime} {table.key.dtype} on {table.key.device}, {table.key.threads} threads"
    )
    for name, curve in table.curves.items():
        half = curve.at(curve.counts[-1] / 2)
        print(f"  {name}: per layer {curve.fitted_ms[0]:+.2f} ms with none kept, {half:+.2f} ms with half")
    result = {"table": json.loads(table.model_dump_json()), "cached": cached, "checks": []}
    if job.check:
        plans = random_plans(geometry_of(dense.config), job.check, job.seed)
        checks = check_predictions(dense, table, plans, settings)
        for check in checks:
            print(
                f"  random plan ({check.plan}): predicted {check.predicted_ms:.1f} ms, "
                f"measured {check.measured_ms:.1f} ms, error {check.error:+.1%}"
            )
        errors = [abs(check.error) for check in checks]
        print(f"  mean |error| {sum(errors) / len(errors):.1%}, max {max(errors):.1%} over {len(checks)} random plans")
        result["checks"] = [check.model_dump() for check in checks]
    write_json(json.dumps(result, indent=1), job.json_out)


def run_init(job: InitJob) -> None:
    from pruning.zoo.local_init import init_checkpoint

    init_checkpoint(job.arch, list(job.corpus), job.out, vocab_size=job.vocab_size, seed=job.seed)
    print(f"wrote {job.out}: random {job.arch} weights, tokenizer trained on {len(job.corpus)} file(s)")


def run_serve(job: ServeJob) -> None:
    from service.app import read_serve_config, run_service

    document, config = read_serve_config(job.config)
    run_service(document, config)


def run_kuberay(job: KuberayJob) -> None:
    from service.kuberay import write_rayservice

    print(f"wrote {write_rayservice(job.config, job.out, job.cluster)}")


def run_tune(job) -> None:
    from blockserve.tune import format_report, tune

    report = tune(job)
    print(format_report(report), file=sys.stderr if job.json_out == "-" else sys.stdout)
    write_json(report.model_dump_json(indent=1), job.json_out)


def run_demo(job: DemoJob) -> None:
    from blockserve.demo import run_demo as demo

    demo(job.zoo, job.qa_model, job.sum_model, once=job.once, port=job.port, repeats=job.repeats,
         qa_method=job.qa_method)  # fmt: skip


def run_loadtest(job) -> None:
    from loadtests.cli import run

    run(job)
