"""Runs the windows of a load test: every load level, every repeat, variants alternated.

Per window: a few warm-up requests (discarded), a `/metrics` scrape, the measured load, a wait until
the server has counted every answered request, a second scrape. The server's view of the window is
the second scrape minus the first, for the window's variant only; variants never run at once.
Repeats alternate the order (dense, pruned / pruned, dense / ...) so slow drift of the machine
falls on both.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Annotated

import httpx
from pydantic import BaseModel, ConfigDict, Field, model_validator
from tqdm import tqdm

from loadtests.client import Load, RequestRecord, Target, closed_loop, open_loop
from loadtests.payloads import Payloads
from loadtests.prometheus import Histogram, Snapshot, parse
from pruning.core.options import Flag
from pruning.core.task_registry import Route

log = logging.getLogger("blockserve.loadtest")
REQUEST, QUEUE, INFERENCE, BATCH = (
    f"blockserve_{name}"
    for name in ("request_duration_seconds", "queue_wait_seconds", "inference_seconds", "batch_size")
)


class LoadSettings(BaseModel):
    """What load to apply; every field is a flag of `blockserve loadtest`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    route: Annotated[Route, Flag("--task")] = Field("qa", description="route under test (/v1/TASK)")
    variants: tuple[str, ...] = Field(("dense", "pruned"), min_length=2, description="the first is the baseline")
    concurrency: Annotated[tuple[int, ...], Flag(nargs="*")] = Field((1, 2, 4, 8), description="closed-loop levels")
    rates: Annotated[tuple[float, ...], Flag(nargs="*")] = Field((), description="open-loop Poisson rates (req/s)")
    duration_s: Annotated[float, Flag("--duration")] = Field(
        10.0, gt=0, le=86400, description="seconds per measured window"
    )
    min_requests: int = Field(10, ge=1, le=10**6, description="closed loop: at least this many per window")
    warmup: int = Field(3, ge=0, le=10**4, description="requests per window before measuring, discarded")
    repeats: int = Field(3, ge=1, le=1000, description="windows per variant and level (order alternated)")
    timeout_s: Annotated[float, Flag("--timeout")] = Field(
        60.0, gt=0, le=3600, description="client timeout per request (s); open loop: drain time"
    )
    slo_ms: float = Field(1000.0, gt=0, le=1e7, description="p99 objective for max throughput under SLO")
    max_error_ratio: float = Field(0.01, ge=0, le=1, description="a level with more errors misses the SLO")
    seed: int = Field(0, ge=0, le=2**32 - 1)

    @model_validator(mode="after")
    def _levels(self) -> LoadSettings:
        if not self.concurrency and not self.rates:
            raise ValueError("give at least one concurrency level or one arrival rate")
        if any(not 1 <= c <= 4096 for c in self.concurrency) or any(not 0 < r <= 1e5 for r in self.rates):
            raise ValueError("`concurrency` levels must be in 1..4096 and `rates` in (0, 100000] req/s")
        if len(set(self.variants)) != len(self.variants):
            raise ValueError(f"variants repeat: {self.variants}")
        return self

    def loads(self) -> list[Load]:
        return [Load("closed", c) for c in self.concurrency] + [Load("open", r) for r in self.rates]


@dataclass(frozen=True)
class ServerWindow:
    """What `/metrics` added during one window, for one variant."""

    request: Histogram
    queue_wait: Histogram
    inference: Histogram
    batch_size: Histogram
    statuses: dict[str, float]
    rejected: dict[str, float]

    @classmethod
    def of(cls, window: Snapshot, route: str, variant: str) -> ServerWindow:
        labels = {"task": route, "variant": variant}
        return cls(
            window.histogram(REQUEST, **labels),
            window.histogram(QUEUE, **labels),
            window.histogram(INFERENCE, **labels),
            window.histogram(BATCH, **labels),
            window.counter("blockserve_requests_total", "status", **labels),
            window.counter("blockserve_rejected_total", "reason", **labels),
        )


@dataclass(frozen=True)
class Window:
    variant: str
    load: Load
    repeat: int
    records: list[RequestRecord]
    seconds: float  # from the first scheduled request to the last answer (open loop: at least the duration)
    server: ServerWindow | None


class LoadTest:
    def __init__(self, url: str, settings: LoadSettings, payloads: Payloads) -> None:
        self.url = url.rstrip("/")
        self.settings = settings
        self.payloads = payloads
        self._metrics_missing = False

    async def _scrape(self, client: httpx.AsyncClient) -> Snapshot | None:
        if self._metrics_missing:
            return None
        try:
            response = await client.get(f"{self.url}/metrics")
            response.raise_for_status()
        except httpx.HTTPError as error:
            log.warning("no server-side view: GET /metrics failed (%s)", error)
            self._metrics_missing = True
            return None
        return parse(response.text)

    async def _server_window(self, client, before: Snapshot | None, variant: str, answered: int) -> ServerWindow | None:
        """The window's server view, once the server has counted every answered request (≤ 10 s)."""
        if before is None:
            return None
        deadline = time.perf_counter() + 10.0
        while True:
            after = await self._scrape(client)
            if after is None:
                return None
            window = ServerWindow.of(after - before, self.settings.route, variant)
            if sum(window.statuses.values()) >= answered or time.perf_counter() > deadline:
                if sum(window.statuses.values()) < answered:
                    log.warning("server counted %d of %d answered requests", sum(window.statuses.values()), answered)
                return window
            await asyncio.sleep(0.2)

    async def _window(self, client, variant: str, load: Load, repeat: int, position: int) -> Window:
        s = self.settings
        target = Target(self.url, s.route, variant, self.payloads.bodies)
        first = repeat * 997  # the same bodies, in the same order, for every variant of a repeat
        if s.warmup:
            workers = min(s.warmup, int(load.level) if load.mode == "closed" else 1)
            await closed_loop(client, target, workers, 0.0, s.warmup, repeat, first_index=first + 10**6)
        before = await self._scrape(client)
        if load.mode == "closed":
            records = await closed_loop(client, target, int(load.level), s.duration_s, s.min_requests, repeat, first)
        else:
            seed = s.seed + 1000 * repeat + position  # the same arrival times for every variant of a repeat
            records = await open_loop(client, target, load.level, s.duration_s, seed, s.timeout_s, repeat, first)
        seconds = max((r.done_s for r in records), default=0.0)
        if load.mode == "open":
            seconds = max(seconds, s.duration_s)
        answered = sum(1 for r in records if r.status)
        server = await self._server_window(client, before, variant, answered)
        return Window(variant, load, repeat, records, seconds, server)

    async def run(self) -> list[Window]:
        s = self.settings
        plan = [
            (load, position, repeat, variant)
            for position, load in enumerate(s.loads())
            for repeat in range(s.repeats)
            for variant in (s.variants if repeat % 2 == 0 else tuple(reversed(s.variants)))
        ]
        limits = httpx.Limits(max_connections=1024, max_keepalive_connections=256)
        windows = []
        async with httpx.AsyncClient(timeout=s.timeout_s, limits=limits) as client:
            progress = tqdm(plan, desc="load test", unit="window")
            for load, position, repeat, variant in progress:
                progress.set_postfix_str(f"{variant} {load.describe()} repeat {repeat + 1}/{s.repeats}")
                window = await self._window(client, variant, load, repeat, position)
                ok = sorted(r.latency_ms for r in window.records if r.ok)
                log.info(
                    "%s %s repeat %d: %d requests (%d errors), p50 %s ms",
                    variant, load.describe(), repeat + 1, len(window.records), len(window.records) - len(ok),
                    f"{ok[len(ok) // 2]:.1f}" if ok else "—",
                )  # fmt: skip
                windows.append(window)
        return windows
