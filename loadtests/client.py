"""The load generator: closed loop (fixed concurrency) and open loop (Poisson arrivals), over async httpx.

Closed loop: `concurrency` workers each send a request, wait for the answer, send the next. It
measures latency at a load the server sets the pace of.

Open loop: arrivals are drawn up front (exponential gaps at `rate` per second) and every request is
sent at its time whether or not earlier ones have returned. Latency runs from the *scheduled* time,
so time a request spent waiting for a connection, or for a late event loop, counts: a stalled server
shows up in every request that arrived during the stall (no coordinated omission).

Every request sent gets a record, answered or not (timeouts and connection errors have status 0).
Both loops start with `settle_collector`, so the generator's own garbage collector does not stall it.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

import httpx

NO_RESPONSE = 0  # status of a request that got no HTTP response


def settle_collector() -> None:
    """Collect now and freeze what is alive out of later collections; call before a timed window.

    The generator runs in a process that imports torch and transformers: a full collection there walks
    ~470k objects and took 230 ms, and every request due meanwhile was counted that much late (measured:
    8× overload's 503 p99 of 244–296 ms while the ingress's own longest collection took 12 ms). After the
    freeze a full collection walks only what the window allocates.
    """
    gc.collect()
    gc.freeze()


@dataclass(frozen=True)
class Load:
    """One load level: `closed` with `level` workers, or `open` with `level` requests per second."""

    mode: str
    level: float

    def describe(self) -> str:
        return f"concurrency {self.level:g}" if self.mode == "closed" else f"{self.level:g} req/s"


@dataclass(frozen=True)
class RequestRecord:
    """One request of a measured window; times in seconds from the window's start."""

    variant: str
    mode: str
    level: float
    repeat: int
    index: int
    scheduled_s: float  # when the request was due (closed loop: when it was sent)
    sent_s: float
    done_s: float
    status: int
    error: str = ""
    server_ms: float | None = None  # the service's own `latency_ms` for this request
    inference_ms: float | None = None  # model time of the batch that served it

    @property
    def ok(self) -> bool:
        return self.status == 200

    @property
    def latency_ms(self) -> float:
        return 1000.0 * (self.done_s - self.scheduled_s)


@dataclass(frozen=True)
class Target:
    """Where requests go: the route and the variant, and the bodies to cycle through."""

    url: str
    route: str
    variant: str
    bodies: Sequence[dict]

    def body(self, index: int) -> dict:
        return {**self.bodies[index % len(self.bodies)], "variant": self.variant}


@dataclass(frozen=True)
class Reply:
    status: int
    error: str = ""
    server_ms: float | None = None
    inference_ms: float | None = None


async def send(client: httpx.AsyncClient, target: Target, index: int) -> Reply:
    """POST one body; any failure becomes a status and a short reason, never an exception."""
    try:
        response = await client.post(f"{target.url}/v1/{target.route}", json=target.body(index))
    except httpx.TimeoutException:
        return Reply(NO_RESPONSE, "timeout")
    except httpx.HTTPError as error:
        return Reply(NO_RESPONSE, f"{type(error).__name__}: {error}"[:200])
    try:
        data = response.json()
    except ValueError:
        data = None
    if response.status_code != 200:
        message = data.get("error") if isinstance(data, dict) else None
        return Reply(response.status_code, str(message or response.text)[:200])
    if not isinstance(data, dict):
        return Reply(response.status_code, "200 with a body that is not a JSON object")
    return Reply(200, "", data.get("latency_ms"), data.get("inference_ms"))


def _record(target: Target, load: Load, repeat: int, index: int, due: float, sent: float, reply: Reply, done: float):
    return RequestRecord(
        target.variant, load.mode, load.level, repeat, index, due, sent, done,
        reply.status, reply.error, reply.server_ms, reply.inference_ms,
    )  # fmt: skip


async def closed_loop(
    client: httpx.AsyncClient,
    target: Target,
    concurrency: int,
    duration_s: float,
    min_requests: int = 0,
    repeat: int = 0,
    first_index: int = 0,
) -> list[RequestRecord]:
    """`concurrency` workers until `duration_s` has passed and `min_requests` have finished.

    A slow variant still gets `min_requests` samples, but never runs past 4 × `duration_s`
    (plus the requests then in flight). A `duration_s` of 0 (a warm-up) sends `min_requests`, uncapped.
    """
    load = Load("closed", concurrency)
    records: list[RequestRecord] = []
    settle_collector()
    start = time.perf_counter()
    counter = itertools.count(first_index)

    def more() -> bool:
        elapsed = time.perf_counter() - start
        return elapsed < duration_s or (len(records) < min_requests and (elapsed < 4 * duration_s or not duration_s))

    async def worker() -> None:
        while more():
            index = next(counter)
            sent = time.perf_counter() - start
            reply = await send(client, target, index)
            records.append(_record(target, load, repeat, index, sent, sent, reply, time.perf_counter() - start))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return sorted(records, key=lambda r: r.index)


def arrivals(rate: float, duration_s: float, seed: int) -> list[float]:
    """Poisson arrival times in [0, duration_s): exponential gaps with mean 1 / rate."""
    rng, times, now = random.Random(seed), [], 0.0
    while True:
        now += rng.expovariate(rate)
        if now >= duration_s:
            return times
        times.append(now)


async def open_loop(
    client: httpx.AsyncClient,
    target: Target,
    rate: float,
    duration_s: float,
    seed: int,
    drain_s: float,
    repeat: int = 0,
    first_index: int = 0,
) -> list[RequestRecord]:
    """Send at Poisson times for `duration_s`; wait up to `drain_s` more for answers, then give up on the rest."""
    load = Load("open", rate)
    schedule = arrivals(rate, duration_s, seed)
    settle_collector()
    start = time.perf_counter()

    async def one(offset: int, due: float) -> RequestRecord:
        sent = time.perf_counter() - start
        reply = await send(client, target, first_index + offset)
        return _record(target, load, repeat, first_index + offset, due, sent, reply, time.perf_counter() - start)

    tasks: list[asyncio.Task] = []
    for offset, due in enumerate(schedule):
        delay = start + due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(offset, due)))
    if tasks:
        await asyncio.wait(tasks, timeout=max(0.0, start + duration_s + drain_s - time.perf_counter()))
    records = []
    for offset, (task, due) in enumerate(zip(tasks, schedule, strict=True)):
        if task.done():
            records.append(task.result())
        else:  # still unanswered at the end of the drain: counted, not dropped
            task.cancel()
            now = time.perf_counter() - start
            reply = Reply(NO_RESPONSE, f"no answer within {drain_s:g} s after the window")
            records.append(_record(target, load, repeat, first_index + offset, due, due, reply, now))
    await asyncio.gather(*tasks, return_exceptions=True)
    return records
