"""Model deployments: one Ray Serve deployment per (task, variant), with dynamic batching.

Each replica loads its checkpoint through `pruning.load_checkpoint` (dense or compact), warms up, and
serves `__call__(request) -> Outcome`. Requests queue in the replica's `service.batcher.Batcher`: when
the model is free it runs what is queued, up to `max_batch_size` requests and `max_batch_tokens`
padded tokens, so an idle replica never waits for company (`max_wait_ms` adds a fill wait, 0 by
default). The knobs arrive in `user_config` and change without a restart.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import ray
from ray import serve

from pruning.artifacts.checkpoint import load_checkpoint
from pruning.runtime.candidates import Candidate, onnx_forward, qa_forward
from pruning.runtime.numerics import dtype_name, resolve_dtype
from service.batcher import Batcher, BatchRun, Overloaded
from service.config import BatchingConfig, GenerationConfig, LimitsConfig, VariantConfig
from service.errors import InputTooLong, SettingsTooHigh
from service.metrics import BatchObservation
from service.metrics_buffer import BufferedMetrics
from service.model_thread import idle_thread, model_thread
from service.qa_engine import EncodedQA, QAEngine, QAInput
from service.schemas import VariantInfo
from service.summarize_engine import EncodedSummary, SummarizeEngine, SummaryInput

log = logging.getLogger(__name__)
COLLECTOR_NAME = "blockserve-metrics"
COLLECTOR_NAMESPACE = "blockserve"


@dataclass
class Outcome:
    """What a model replica returns: a result, or an HTTP status and a message for the user."""

    status: int
    result: Any = None
    error: str = ""
    model_seconds: float = 0.0
    retry_after_s: float | None = None  # 503s: when to come back
    admit_again_in_s: float | None = None  # admission refusals: when this replica expects to admit again


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


class _ModelServer:
    """Shared by the QA and summarization deployments: loading, batching knobs, metrics, info."""

    task = ""

    def __init__(
        self, variant_name: str, variant: dict, limits: dict, generation: dict, model_executor: Executor | None = None
    ) -> None:
        self.variant_name = variant_name
        self.variant = VariantConfig.from_server_args(variant)
        self.limits = LimitsConfig.model_validate(limits)
        self.generation = GenerationConfig.model_validate(generation)
        self.device = resolve_device(self.variant.device)
        import torch

        # Every torch call of the replica runs on this one thread: loading (dtype casts are parallel loops),
        # warm-up, batches. Each thread that runs a parallel op keeps an OpenMP team of its own, and a second
        # team in the process — from loading on the main thread, or from `asyncio.to_thread` moving batches
        # between pool threads — made every forward ~30 % slower here (MiniLM bf16, 2 threads: 18.7 → 24.5 ms).
        self.threads = self.variant.threads or torch.get_num_threads()  # Ray's default: num_cpus, 1 when fractional
        # Colocated variants (`service.colocated`) share their process's one model thread.
        self._model_thread = model_executor or model_thread(self.threads, f"model-{variant_name}", self.variant.nice)
        self._model_thread.submit(self._load).result()
        self._idle_lane: Executor | None = None  # shadow work, started with the first (`shadow`)
        self.batching = BatchingConfig()
        self.batcher = Batcher(self._run_batch, self.batching.policy(self.limits.request_timeout_s))
        self.collector = _metrics_collector()

    def _load(self) -> None:
        import torch

        # ONNX variants export the fp32 model (and quantise that export for int8).
        dtype = torch.float32 if self.variant.runtime == "onnx" else resolve_dtype(self.variant.dtype, self.device)
        self.checkpoint = load_checkpoint(self.variant.checkpoint, device=self.device, dtype=dtype)
        self.tokenizer = self.checkpoint.tokenizer()
        self.engine = self._build_engine()
        self._warm_up()

    def _build_engine(self):
        raise NotImplementedError

    def _warm_up(self) -> None:
        raise NotImplementedError

    def reconfigure(self, user_config: dict) -> None:
        self.batching = BatchingConfig.model_validate(user_config or {})
        self.batcher.reconfigure(self.batching.policy(self.limits.request_timeout_s))
        log.info("%s/%s batching: %s", self.task, self.variant_name, self.batching)

    async def check_health(self) -> None:
        # A real, tiny inference, on the model's thread: after the running batch, never beside it.
        await asyncio.get_running_loop().run_in_executor(self._model_thread, self._warm_up)

    def info(self, is_default: bool = False) -> VariantInfo:
        manifest = self.checkpoint.manifest
        plan = manifest.plan if manifest else None
        return VariantInfo(
            task=self.task,
            variant=self.variant_name,
            checkpoint=self.variant.checkpoint,
            is_default=is_default,
            compact=manifest is not None,
            source=manifest.source if manifest else None,
            plan=plan,
            plan_summary=plan.summary() if plan else None,
            plan_digest=plan.digest() if plan else None,
            params=sum(p.numel() for p in self.checkpoint.model.parameters()),
            flops_ratio=manifest.stats.flops_ratio if manifest else None,
            device=self.device,
            dtype=self._dtype_name(),
            runtime=self.variant.runtime,
            compiled=self.variant.compiled,
            batching=self.batching,
            replica_pid=os.getpid(),
            threads=self.threads,
        )

    def _dtype_name(self) -> str:
        if self.variant.runtime == "onnx":
            if self.variant.dtype == "auto":  # the graph's numerics: half on CUDA, as torch's auto
                return "float16" if self.device.startswith("cuda") else "float32"
            return self.variant.dtype
        return dtype_name(next(self.checkpoint.model.parameters()).dtype)

    def _prepared(self, payload: Any) -> tuple[Any, int] | Outcome:
        """`prepare`'s (encoding, tokens), or the 413/422 outcome of a request over the limits."""
        try:
            return self.prepare(payload)
        except InputTooLong as error:
            self.collector.reject.remote(self.task, self.variant_name, "too_long")
            return Outcome(413, error=str(error))
        except SettingsTooHigh as error:
            return Outcome(422, error=str(error))

    async def __call__(self, payload: Any) -> Outcome:
        prepared = self._prepared(payload)
        if isinstance(prepared, Outcome):
            return prepared
        prepared, tokens = prepared
        try:
            return await self.batcher.submit(prepared, tokens)
        except Overloaded as refused:
            self.collector.reject.remote(self.task, self.variant_name, "overloaded")
            return Outcome(
                503,
                error=f"variant {self.variant_name!r} is overloaded: {refused}",
                retry_after_s=refused.retry_after_s,
                admit_again_in_s=refused.admit_again_in_s,
            )

    async def shadow(self, payload: Any) -> Outcome:
        """`__call__`'s answer, for a shadow comparison: on a lane of its own at the lowest CPU priority
        (`service.model_thread.idle_thread`), not batched and not counted by admission, so it takes no
        request's place in line and only CPU time nothing else wants; the ingress caps shadows in flight.
        (ONNX variants: ONNX Runtime's own pool threads keep their normal priority.)"""
        prepared = self._prepared(payload)
        if isinstance(prepared, Outcome):
            return prepared
        if self._idle_lane is None:
            self._idle_lane = idle_thread(f"shadow-{self.variant_name}")
        started = time.perf_counter()
        [result] = await asyncio.get_running_loop().run_in_executor(self._idle_lane, self.infer, [prepared[0]])
        return Outcome(200, result=result, model_seconds=time.perf_counter() - started)

    def infer(self, payloads: list) -> list:
        raise NotImplementedError

    async def _run_batch(self, run: BatchRun) -> list[Outcome]:
        # The model runs in a thread so the replica's event loop keeps accepting requests meanwhile.
        results = await asyncio.get_running_loop().run_in_executor(self._model_thread, self.infer, run.payloads)
        seconds = time.perf_counter() - run.started
        self.collector.observe_batch.remote(
            BatchObservation(
                self.task, self.variant_name, len(run.payloads), seconds,
                [run.started - arrived for arrived in run.arrived], run.tokens,
            )
        )  # fmt: skip
        return [Outcome(200, result=result, model_seconds=seconds) for result in results]


@serve.deployment
class QAServer(_ModelServer):
    task = "qa"

    def _build_engine(self) -> QAEngine:
        positions = self.checkpoint.model.config.max_position_embeddings
        if self.variant.runtime == "onnx":
            return QAEngine(onnx_forward(self._onnx_session()), self.tokenizer, self.limits, positions)
        candidate = Candidate("torch", self._dtype_name(), compiled=self.variant.compiled)
        forward = qa_forward(self.checkpoint.model, candidate, self.checkpoint.directory, self.device)
        return QAEngine(forward, self.tokenizer, self.limits, positions)

    def _onnx_session(self):
        """The graph `blockserve export` wrote into the checkpoint for this dtype (int8: with its float32 nodes
        chosen by calibration), else `model.onnx` turned into it, else an export made now."""
        import tempfile
        from pathlib import Path

        from pruning.artifacts.export import onnx_in_numerics, onnx_session, prepared_graph
        from pruning.runtime.candidates import onnx_graph

        dtype, scratch = self._dtype_name(), Path(tempfile.mkdtemp(prefix="blockserve-onnx-"))
        path = prepared_graph(self.checkpoint.directory, dtype)
        if path is None:
            path = prepared_graph(self.checkpoint.directory, "float32") or onnx_graph(
                self.checkpoint.model.cpu(), "float32", scratch
            )
            path = onnx_in_numerics(path, dtype, scratch)
        log.info("%s/%s serves %s", self.task, self.variant_name, path)
        # Several replicas may share a CPU: idle ORT threads must not spin and steal it from the others.
        return onnx_session(path, device=self.device, threads=self.variant.threads, spinning=self.device == "cuda")

    def _warm_up(self) -> None:
        self.engine.answer([QAInput("What is served?", "Pruned models are served.")])
        if self.variant.compiled:  # a second length: the compiler's dynamic-shape graph is built now, not on a request
            self.engine.answer([QAInput("What is served here?", "Pruned and compacted models are served. " * 8)])

    def prepare(self, payload: QAInput) -> tuple[EncodedQA, int]:
        # Tokenized once: the encoding that is counted against the limits is the one the batch runs.
        encoded = self.engine.encode(payload)
        return encoded, encoded.tokens

    def infer(self, payloads: list[EncodedQA]) -> list:
        return self.engine.answer_encoded(payloads)


@serve.deployment
class SummarizeServer(_ModelServer):
    task = "summarize"

    def _build_engine(self) -> SummarizeEngine:
        return SummarizeEngine(self.checkpoint.model, self.tokenizer, self.limits, self.generation)

    def _warm_up(self) -> None:
        self.engine.summarize([SummaryInput("Pruned models are served side by side.", max_new_tokens=2)])

    def prepare(self, payload: SummaryInput) -> tuple[EncodedSummary, int]:
        encoded = self.engine.encode(payload)
        return encoded, encoded.tokens

    def infer(self, payloads: list[EncodedSummary]) -> list:
        return self.engine.summarize_encoded(payloads)


@ray.remote(num_cpus=0)
class MetricsCollector:
    """The one registry of the application (see `service.metrics`)."""

    def __init__(self) -> None:
        from service.metrics import ServiceMetrics

        self.metrics = ServiceMetrics()

    def observe_batch(self, batch: BatchObservation) -> None:
        self.metrics.observe_batch(batch)

    def observe_request(self, task: str, variant: str, status: int, seconds: float) -> None:
        self.metrics.observe_request(task, variant, status, seconds)

    def reject(self, task: str, variant: str, reason: str) -> None:
        self.metrics.reject(task, variant, reason)

    def observe_shadow(self, task: str, variant: str, against: str, scores: dict[str, float]) -> None:
        self.metrics.observe_shadow(task, variant, against, scores)

    def drop_shadow(self, task: str, variant: str, reason: str) -> None:
        self.metrics.drop_shadow(task, variant, reason)

    def record(self, events: list[tuple[str, tuple]]) -> None:
        """A batch of updates from one process (`service.metrics_buffer`), applied in order."""
        for method, args in events:
            if method in BufferedMetrics.UPDATES:
                getattr(self, method)(*args)

    def render(self) -> bytes:
        return self.metrics.render()

    def ready(self) -> bool:
        return True


def _metrics_collector() -> BufferedMetrics:
    # Detached and named: every replica of every deployment finds the same one, and it outlives replica restarts.
    actor = MetricsCollector.options(
        name=COLLECTOR_NAME, namespace=COLLECTOR_NAMESPACE, get_if_exists=True, lifetime="detached"
    ).remote()
    # One round trip now: a process's first call to an actor resolves where it lives, which on a busy machine
    # took long enough that the first batch's metrics reached the collector only after a scrape.
    ray.get(actor.ready.remote(), timeout=60)
    return BufferedMetrics(actor)
