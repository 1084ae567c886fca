"""The service's configuration as one pydantic model, read from a Ray Serve config file.

`deploy/serve.yaml` names `service.app:build_app` as the application and passes this model's fields
as `args`; a field that is wrong fails the start with a message naming it. Batching knobs live in
each variant's `batching`, which is sent to replicas as `user_config`, so they change without a
restart.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, model_validator

from pruning.core.task_registry import ROUTES
from pruning.runtime.numerics import DType
from service.batcher import BatchPolicy

# The model threads' niceness when the HTTP work beside them is light (colocated, behind HAProxy).
LIGHT_FRONT_NICE = 4


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BatchingConfig(Strict):
    """Dynamic batching of one deployment (sent as `user_config`: changes apply without restarts)."""

    max_batch_size: int = Field(8, ge=1, le=256, description="requests per model call")
    max_batch_tokens: int = Field(
        4096, ge=16, description="padded-token budget per batch, so one long input does not pad a whole batch"
    )
    max_wait_ms: float = Field(
        0.0, ge=0.0, le=5000.0,
        description="wait this long for a batch to fill (0: an idle model runs what is queued at once)",
    )  # fmt: skip
    max_queue_wait_s: float | None = Field(
        None, gt=0.0, le=3600.0,
        description="admission: refuse (503 + Retry-After) when the expected queue wait is longer "
        "(default: half the task's request_timeout_s)",
    )  # fmt: skip

    # Measured on 2 CPU cores (MiniLM bf16, 64 dev questions queued at once): batches of ≤ 8 padded to their
    # longest ran at 43–45 req/s, one at a time 42–52, with this budget at 0.1: 52–57.
    max_padding: float | None = Field(
        0.1, ge=0.0, le=100.0,
        description="padding budget: a request joins a batch only while the batch's padded tokens stay within "
        "(1 + this) × its real tokens; the others keep their place for the next batch (null: no bound)",
    )  # fmt: skip

    @model_validator(mode="before")
    @classmethod
    def _ray_batch_timeout(cls, data: object) -> object:
        """`batch_wait_timeout_s` (the `@serve.batch` knob, in seconds) is read as `max_wait_ms`."""
        if isinstance(data, dict) and "batch_wait_timeout_s" in data:
            data = dict(data)
            data.setdefault("max_wait_ms", 1000.0 * float(data.pop("batch_wait_timeout_s")))
        return data

    def policy(self, request_timeout_s: float = 30.0) -> BatchPolicy:
        """The batcher's policy; admission waits at most half the deadline unless configured."""
        admission = self.max_queue_wait_s if self.max_queue_wait_s is not None else request_timeout_s / 2
        return BatchPolicy(
            self.max_batch_size, self.max_batch_tokens, self.max_wait_ms / 1000.0, admission, self.max_padding
        )


class AutoscalingConfig(Strict):
    """Ray Serve autoscaling of one deployment: replicas follow the requests each one holds."""

    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(4, ge=1)
    target_ongoing_requests: float = Field(
        8.0, gt=0.0, description="requests per replica the autoscaler aims for (about one full batch)"
    )
    upscale_delay_s: float = Field(10.0, ge=0.0)
    downscale_delay_s: float = Field(120.0, ge=0.0, description="slow: loading a checkpoint costs seconds")

    @model_validator(mode="after")
    def _range(self) -> AutoscalingConfig:
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas ({self.max_replicas}) is below min_replicas ({self.min_replicas})")
        return self


class GenerationConfig(Strict):
    """Decoding defaults for summarization; a request may lower the limits, never raise them."""

    num_beams: int = Field(4, ge=1, le=16)
    max_new_tokens: int = Field(128, ge=1, le=1024)
    min_new_tokens: int = Field(0, ge=0)
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = Field(3, ge=0)

    @model_validator(mode="after")
    def _lengths(self) -> GenerationConfig:
        if self.min_new_tokens > self.max_new_tokens:
            raise ValueError(f"min_new_tokens ({self.min_new_tokens}) exceeds max_new_tokens ({self.max_new_tokens})")
        return self


class LimitsConfig(Strict):
    """Input limits: requests over them get 413 with the count and the limit."""

    max_input_tokens: int = Field(4096, ge=8, description="QA: context tokens; summarization: article tokens")
    max_question_tokens: int = Field(64, ge=4, description="QA only")
    window_tokens: int = Field(384, ge=32, description="QA: tokens per doc-stride window")
    window_stride: int = Field(128, ge=0, description="QA: overlap between windows")
    max_answer_tokens: int = Field(30, ge=1, description="QA: longest answer span")
    request_timeout_s: float = Field(30.0, gt=0.0, description="deadline per request (504 after it)")
    # 8, not 32: at c=1 padding to 32 cost 1.4 ms of 18 (MiniLM bf16, interleaved in process); the kernel
    # cache the shapes need is sized by `service.model_thread`.
    pad_to_multiple_of: int = Field(
        8, ge=1, le=1024,
        description="pad each batch's sequence length up to a multiple of this: the CPU/GPU kernel libraries "
        "build kernels per shape, and a pruned model's per-layer widths multiply the shapes of free lengths",
    )  # fmt: skip

    @model_validator(mode="after")
    def _windows(self) -> LimitsConfig:
        if self.window_stride >= self.window_tokens:
            raise ValueError(f"window_stride ({self.window_stride}) must be smaller than window_tokens")
        if self.max_question_tokens + 8 >= self.window_tokens:
            raise ValueError("max_question_tokens leaves no room for context in a window")
        if self.window_stride >= self.window_tokens - self.max_question_tokens - 8:
            raise ValueError(
                f"window_stride ({self.window_stride}) leaves no new context per window after a question of "
                f"max_question_tokens ({self.max_question_tokens}) in window_tokens ({self.window_tokens})"
            )
        return self


class ShadowConfig(Strict):
    """Re-run a sample of this variant's requests on a reference variant, off the response path."""

    fraction: float = Field(gt=0.0, le=1.0, description="share of this variant's requests re-run on `against`")
    against: str = Field(description="the reference variant (e.g. dense), of the same task")
    max_in_flight: int = Field(2, ge=1, le=1024, description="shadow requests at once; beyond it samples are dropped")


_BATCHING_APART = "batching_apart"


class VariantConfig(Strict):
    """One model variant of a task (e.g. `dense`, `pruned`): one Ray Serve deployment."""

    checkpoint: str = Field(description="dense or compact checkpoint directory, or hub id")
    runtime: Literal["torch", "onnx"] = "torch"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: DType | Literal["int8"] = Field(
        "auto",
        description="torch: auto = float16 on CUDA, bfloat16 on CPUs with AMX/avx512_bf16, float32 on others; "
        "onnx: float32 (auto), float16 (CUDA) or int8 (dynamic quantisation of the export, CPU)",
    )
    compiled: bool = Field(
        False, description="QA with runtime torch: torch.compile the model at replica start (warmed before ready)"
    )
    replicas: int = Field(1, ge=1, description="fixed replica count; leave unset with `autoscaling`")
    autoscaling: AutoscalingConfig | None = None
    num_cpus: float = Field(1.0, gt=0.0)
    num_gpus: float = Field(0.0, ge=0.0, description="per replica; fractions share a GPU")
    # Ray sets OMP_NUM_THREADS to num_cpus (1 when fractional); a replica that shares its CPUs with
    # idle ones (dense and pruned side by side, busy one at a time) may want more threads than that.
    threads: int | None = Field(
        None,
        ge=1,
        description="intra-op threads of the model (torch / ONNX Runtime); default: Ray's (num_cpus, 1 when fractional)",
    )
    # 8× overload on 2 cores, colocate + HAProxy: 503 p99 236 ms at 0, 35 ms at 4 (capacity 27.0, 28.6 req/s).
    # Behind Ray's Python proxy, whose HTTP work is heavier, 4 starved the model instead (capacity 22 req/s,
    # slower refusals at 4×): so the default follows the HTTP front (`AppConfig.resolved`).
    nice: int | None = Field(
        None, ge=0, le=19,
        description="lower the model threads' CPU priority by this much (Linux), so the HTTP path sharing "
        f"their cores answers first under overload (refusals included); default: {LIGHT_FRONT_NICE} when the "
        "model lives in the ingress behind HAProxy, else 0",
    )  # fmt: skip
    max_queued_requests: int = Field(64, ge=1, description="beyond this, 503 with Retry-After")
    # Ray Serve's default of 5 would silently cap batches. Not derived from the batch size: changing
    # it restarts replicas, while batching knobs must change in place.
    max_ongoing_requests: int = Field(32, ge=1, description="requests a replica holds at once (≥ max_batch_size)")
    batching: BatchingConfig = BatchingConfig()
    shadow: ShadowConfig | None = None

    @model_validator(mode="after")
    def _numerics_of_the_runtime(self) -> VariantConfig:
        if self.runtime == "onnx" and self.dtype not in ("auto", "float32", "float16", "int8"):
            raise ValueError(f"runtime onnx runs float32, float16 or int8, not {self.dtype}")
        if self.runtime == "torch" and self.dtype == "int8":
            raise ValueError("dtype int8 needs runtime onnx (dynamic quantisation of the exported graph)")
        if self.compiled and self.runtime != "torch":
            raise ValueError("compiled applies to runtime torch")
        return self

    @model_validator(mode="after")
    def _one_way_to_scale(self) -> VariantConfig:
        if self.autoscaling is not None and "replicas" in self.model_fields_set:
            raise ValueError("give either replicas (fixed) or autoscaling, not both")
        return self

    def scaling_options(self) -> dict:
        """The Ray Serve deployment options for this variant's replica count."""
        if self.autoscaling is None:
            return {"num_replicas": self.replicas}
        return {"autoscaling_config": self.autoscaling.model_dump()}

    @classmethod
    def from_server_args(cls, variant: dict) -> VariantConfig:
        """The variant as `TaskConfig.server_args` hands it to a model server: batching travels apart, so
        checks against it were made on the whole config and must not be re-made against its defaults."""
        return cls.model_validate(variant, context={_BATCHING_APART: True})

    @model_validator(mode="after")
    def _batches_can_fill(self, info: ValidationInfo) -> VariantConfig:
        if info.context and info.context.get(_BATCHING_APART):
            return self
        if self.max_ongoing_requests < self.batching.max_batch_size:
            raise ValueError(
                f"max_ongoing_requests ({self.max_ongoing_requests}) is below batching.max_batch_size "
                f"({self.batching.max_batch_size}): batches could never fill"
            )
        return self


class TaskConfig(Strict):
    default_variant: str
    variants: dict[str, VariantConfig] = Field(min_length=1)
    limits: LimitsConfig = LimitsConfig()
    generation: GenerationConfig = GenerationConfig()

    @model_validator(mode="after")
    def _shadows_exist(self) -> TaskConfig:
        for name, variant in self.variants.items():
            if variant.shadow is not None and variant.shadow.against not in self.variants:
                raise ValueError(
                    f"variants.{name}.shadow.against: {variant.shadow.against!r} is not a variant of this task"
                )
            if variant.shadow is not None and variant.shadow.against == name:
                raise ValueError(f"variants.{name}.shadow.against: a variant cannot shadow itself")
        return self

    @model_validator(mode="after")
    def _admission_below_the_deadline(self) -> TaskConfig:
        for name, variant in self.variants.items():
            wait = variant.batching.max_queue_wait_s
            if wait is not None and wait >= self.limits.request_timeout_s:
                raise ValueError(
                    f"variants.{name}.batching.max_queue_wait_s ({wait:g}) must be below "
                    f"limits.request_timeout_s ({self.limits.request_timeout_s:g}): admitted requests must be answerable"
                )
        return self

    def server_args(self, name: str) -> tuple[str, dict, dict, dict]:
        """The init arguments of variant `name`'s model server (`service.deployments`), deployed or colocated.

        Batching travels apart (Ray's `user_config`, or `reconfigure` when colocated): changing it must not
        restart replicas.
        """
        variant = self.variants[name].model_dump(exclude={"batching", "autoscaling"})
        return name, variant, self.limits.model_dump(), self.generation.model_dump()

    @model_validator(mode="after")
    def _default_exists(self) -> TaskConfig:
        if self.default_variant not in self.variants:
            raise ValueError(f"default_variant {self.default_variant!r} is not one of {sorted(self.variants)}")
        return self


def _scales_alone(variant: VariantConfig) -> bool:
    """A variant that asks for its own replica count or autoscaling: it needs a deployment of its own."""
    return variant.autoscaling is not None or variant.replicas != 1


class AppConfig(Strict):
    """The whole application: which tasks are served, by which variants."""

    qa: TaskConfig | None = None
    summarize: TaskConfig | None = None
    max_request_bytes: int = Field(
        1_000_000, ge=1024, le=10**9, description="request bodies over this get 413 before they are parsed"
    )
    proxy_queue: int = Field(
        32,
        ge=1,
        description="requests Ray's HTTP proxy may hold for a saturated ingress; beyond it the proxy answers 503 "
        "(without a bound, an overloaded machine leaves them waiting there, unanswered)",
    )

    # 2 cores, the shared MiniLM (BENCHMARKS.md, issues 16 and 17): in one process behind HAProxy, c=1 is
    # ~4 ms behind a plain FastAPI process (17 ms through Ray's proxy and a model replica), and 8× overload
    # is refused in < 50 ms p99 with accepted requests inside their bound (Ray's proxy: accepted p99 19 s).
    colocate: bool | Literal["auto"] = Field(
        "auto",
        description="run every variant's model inside the ingress replica: one process, no hop between the HTTP "
        "layer and the model (lowest latency on a small machine); variants then share the ingress's replicas and "
        "one model thread, so per-variant replicas, autoscaling and GPUs do not apply. auto: colocated when the "
        "config serves one task and every variant is one CPU replica (nothing that scales or takes a GPU share "
        "alone, and no second task whose long requests would hold the shared model thread); otherwise a "
        "deployment per variant",
    )

    http_front: Literal["ray-proxy", "haproxy"] = Field(
        "haproxy",
        description="what answers HTTP: HAProxy routing straight to the ingress replica's own HTTP server (Ray's "
        "throughput-optimized mode with direct ingress; on 2 cores it took client − request from ~14 ms to ~4 ms "
        "and keeps refusing in milliseconds under overload), or Ray Serve's Python proxy. A setting of the Ray "
        "cluster: applied where blockserve starts Ray (`blockserve serve`) or writes the cluster (`blockserve kuberay`)",
    )

    # Ray starts every worker (replicas, proxy, HAProxy) at nice 15, below its own daemons and anything else
    # on the machine. 8× overload on 2 cores, colocate + HAProxy, the load generator beside it: 503 p99
    # 28.7 / 25.1 ms and capacity 27.6 / 29.7 req/s at 0, against 36.2 / 54.7 / 37.4 ms and 24.6–25.3 req/s at
    # 15; c=1 unchanged (four alternating starts).
    ray_worker_niceness: int | None = Field(
        0, ge=0, le=19,
        description="CPU niceness of Ray's worker processes (replicas, proxy, HAProxy); Ray's own default is 15, "
        "which puts serving below every other process on the machine; null keeps Ray's. A setting of the Ray "
        "cluster, applied like http_front",
    )  # fmt: skip

    def ray_environment(self) -> dict[str, str]:
        """Environment the Ray cluster's processes need for `http_front` and `ray_worker_niceness` (read by
        Ray and Ray Serve at start)."""
        environment = {}
        if self.http_front == "haproxy":
            environment |= {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_HA_PROXY": "1"}
        if self.ray_worker_niceness is not None:
            environment["RAY_worker_niceness"] = str(self.ray_worker_niceness)
        return environment

    @model_validator(mode="after")
    def _resolved(self) -> AppConfig:
        """Settle what `auto` and unset defaults mean for this config, so every process that reads its dump
        (ingress, model replicas) sees the same topology."""
        if self.colocate == "auto":
            self.colocate = len(self.tasks()) == 1 and not any(
                _scales_alone(v) or v.num_gpus > 0 for v in self.variants()
            )
        light_front = self.colocate and self.http_front == "haproxy"
        for variant in self.variants():
            if variant.nice is None:
                variant.nice = LIGHT_FRONT_NICE if light_front else 0
        if not self.colocate:
            return self
        for route, task in self.tasks().items():
            for name, variant in task.variants.items():
                if _scales_alone(variant):
                    raise ValueError(
                        f"{route}.variants.{name}: with colocate, variants live in the ingress replica and scale "
                        "with it; remove replicas/autoscaling (or set colocate: false)"
                    )
        return self

    def topology(self) -> str:
        """One line for the logs: where the models run and what answers HTTP."""
        where = "in the ingress replica" if self.colocate else "in a deployment per variant"
        return f"models {where}, {self.http_front} in front"

    def colocated_resources(self) -> dict[str, float]:
        """What the ingress replica reserves when it holds the models: the sum of the variants' requests."""
        variants = self.variants()
        return {"num_cpus": sum(v.num_cpus for v in variants), "num_gpus": sum(v.num_gpus for v in variants)}

    @model_validator(mode="after")
    def _some_task(self) -> AppConfig:
        if self.qa is None and self.summarize is None:
            raise ValueError("configure at least one of 'qa' and 'summarize'")
        return self

    @model_validator(mode="after")
    def _onnx_only_for_qa(self) -> AppConfig:
        for name, variant in self.summarize.variants.items() if self.summarize else ():
            if variant.runtime != "torch":
                raise ValueError(
                    f"summarize.variants.{name}.runtime: only 'torch' serves summarization (onnx: qa only)"
                )
            if variant.compiled:
                raise ValueError(f"summarize.variants.{name}.compiled: generate() is not compiled (qa only)")
        return self

    def ingress_capacity(self) -> int:
        """Requests the ingress may hold at once: all that the model deployments can (running + queued).

        Ray Serve's default of 5 would queue the sixth concurrent request in the HTTP proxy, out of
        sight of the service's metrics and of batching (found by the load test: at 8 clients the
        server-side p50 was 2.4 s while clients saw 3.9 s, and batches never passed 3 requests).
        """
        total = 0
        for variant in self.variants():
            replicas = variant.autoscaling.max_replicas if variant.autoscaling else variant.replicas
            total += replicas * (variant.max_ongoing_requests + variant.max_queued_requests)
        return total

    def variants(self) -> list[VariantConfig]:
        """Every variant of every configured task."""
        return [variant for task in self.tasks().values() for variant in task.variants.values()]

    def tasks(self) -> dict[str, TaskConfig]:
        """Route name (`qa`, `summarize`) → its config, for the tasks that are configured."""
        return {route: config for route in ROUTES if (config := getattr(self, route)) is not None}


def padding_multiple(limits: LimitsConfig, longest: int, max_positions: int) -> int | None:
    """`limits.pad_to_multiple_of`, unless rounding `longest` up to it would pass the model's positions."""
    multiple = limits.pad_to_multiple_of
    if multiple <= 1 or -(-longest // multiple) * multiple > max_positions:
        return None
    return multiple
