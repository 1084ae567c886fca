"""Dynamic batching that never waits when the model is idle.

One queue and one worker per replica. Whenever the model is free, the worker takes what is queued,
front first, up to `max_batch_size` requests and `max_batch_tokens` padded tokens (a batch pads to its
longest request, so one long input does not pad a batch of short ones), and runs it. With `max_padding`,
requests whose lengths would pad the batch beyond that share of its real tokens wait for the next batch
(on a CPU a padded token costs as much as a real one, and batching there buys little else). Requests that
arrive while it runs form the next batch: batches grow only under load, and a lone request on an idle
replica runs at once. (Ray Serve's `@serve.batch` instead waits `batch_wait_timeout_s` from the first
request even when nothing else is coming.) `max_wait_s` > 0 restores a short fill wait, for GPUs where
a fuller batch is worth a few milliseconds; it is 0 by default.

A request whose deadline passes while queued, or whose caller has gone (its future cancelled), is
dropped before it costs model time. Admission: with `max_queue_wait_s`, a request is refused at once
(`Overloaded`, with the expected wait) when the work ahead of it — queued padded tokens plus what is
left of the running batch — divided by the replica's measured throughput (padded tokens per second,
a moving average over batches) exceeds it. Until a batch has been measured, everything is admitted.
The clock and the sleep are injectable, so tests drive time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

P = TypeVar("P")  # what a request carries to the model
R = TypeVar("R")  # what the model returns per request


class DeadlineExceeded(Exception):
    """The request's deadline passed before the model could start it."""


class Overloaded(Exception):
    """Admission refused: the expected queue wait is over the limit (`retry_after_s`: that wait)."""

    def __init__(self, expected_wait_s: float, limit_s: float) -> None:
        super().__init__(f"expected queue wait {expected_wait_s:.2f} s is over the {limit_s:g} s limit")
        self.retry_after_s = expected_wait_s
        # The queue drains at the measured throughput: the wait is back under the limit after this long.
        self.admit_again_in_s = max(0.0, expected_wait_s - limit_s)


@dataclass(frozen=True)
class BatchPolicy:
    max_batch_size: int = 8
    max_batch_tokens: int = 4096
    max_wait_s: float = 0.0
    max_queue_wait_s: float | None = None  # admission limit; None admits everything
    max_padding: float | None = None  # padded tokens ≤ (1 + this) × real tokens per batch; None: no bound


@dataclass
class Pending(Generic[P, R]):
    payload: P
    tokens: int
    arrived: float
    deadline: float | None
    future: asyncio.Future = field(repr=False)


@dataclass(frozen=True)
class BatchRun(Generic[P]):
    """One model call: the payloads, and when each request waited from (for the queue-wait metric)."""

    payloads: list[P]
    tokens: list[int]
    arrived: list[float]
    started: float


class Batcher(Generic[P, R]):
    """`await submit(payload, tokens)` → the model's result for it, batched with whatever else is queued."""

    def __init__(
        self,
        run: Callable[[BatchRun[P]], Awaitable[list[R]]],
        policy: BatchPolicy = BatchPolicy(),
        clock: Callable[[], float] = time.perf_counter,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        self._run, self.policy, self._clock, self._sleep = run, policy, clock, sleep
        self._queue: deque[Pending[P, R]] = deque()
        self._wake = asyncio.Event()
        self._worker: asyncio.Task | None = None
        self.batches = 0
        self.tokens_per_s: float | None = None  # measured throughput, padded tokens per second
        self._running: tuple[int, float] | None = None  # (padded tokens, started) of the batch on the model

    def observe_throughput(self, padded_tokens: int, seconds: float, weight: float = 0.3) -> None:
        """Fold one batch's measured speed into the moving average admission uses."""
        if seconds <= 0:
            return
        rate = padded_tokens / seconds
        self.tokens_per_s = rate if self.tokens_per_s is None else (1 - weight) * self.tokens_per_s + weight * rate

    def expected_wait_s(self) -> float | None:
        """Seconds a request arriving now would queue: the work ahead ÷ the measured throughput."""
        if not self.tokens_per_s:
            return None
        ahead = self._padded(list(self._queue))
        left = 0.0
        if self._running is not None:
            tokens, started = self._running
            left = max(0.0, tokens / self.tokens_per_s - (self._clock() - started))
        return ahead / self.tokens_per_s + left

    @staticmethod
    def _padded(items: list) -> int:
        return len(items) * max((item.tokens for item in items), default=0)

    def reconfigure(self, policy: BatchPolicy) -> None:
        """Applies from the next batch on; nothing queued is lost."""
        self.policy = policy
        self._wake.set()

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def queued_tokens(self) -> int:
        return sum(item.tokens for item in self._queue)

    async def submit(self, payload: P, tokens: int, timeout_s: float | None = None) -> R:
        """The model's result; raises `Overloaded` at once when admission refuses, `DeadlineExceeded`
        when `timeout_s` passes before the request's batch starts."""
        limit = self.policy.max_queue_wait_s
        if limit is not None:
            wait = self.expected_wait_s()
            if wait is not None and wait > limit:
                raise Overloaded(wait, limit)
        now = self._clock()
        future = asyncio.get_running_loop().create_future()
        deadline = None if timeout_s is None else now + timeout_s
        self._queue.append(Pending(payload, max(int(tokens), 1), now, deadline, future))
        self._ensure_worker()
        self._wake.set()
        return await future

    def _ensure_worker(self) -> None:
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._loop(), name="batcher")

    def _take(self) -> list[Pending[P, R]]:
        """The queue's front, and what joins it within the budgets (always at least one request); expired
        ones dropped. With `max_padding`, a request that would pad the batch past it is passed over and
        keeps its place in line; every batch starts with the oldest request, so a request waits at most one
        batch per request ahead of it, as in a plain queue."""
        now, batch, longest, real, kept = self._clock(), [], 0, 0, deque()
        while self._queue:
            item = self._queue.popleft()
            if item.future.done():  # the caller gave up (cancelled): no model time for it
                continue
            if item.deadline is not None and now > item.deadline:
                item.future.set_exception(DeadlineExceeded("the deadline passed while queued"))
                continue
            if batch and len(batch) >= self.policy.max_batch_size:
                kept.append(item)
                break
            padded = (len(batch) + 1) * max(longest, item.tokens)
            too_padded = self.policy.max_padding is not None and padded > (1 + self.policy.max_padding) * (
                real + item.tokens
            )
            if batch and (padded > self.policy.max_batch_tokens or too_padded):
                kept.append(item)
                if self.policy.max_padding is None:
                    break  # front first: without a padding budget, nothing overtakes
                continue
            batch.append(item)
            longest, real = max(longest, item.tokens), real + item.tokens
        kept.extend(self._queue)
        self._queue = kept
        return batch

    def _full(self) -> bool:
        queued = list(self._queue)
        return len(queued) >= self.policy.max_batch_size or self._padded(queued) >= self.policy.max_batch_tokens

    def _fill_wait(self) -> float:
        """Seconds still to wait for the batch to fill: 0 unless `max_wait_s` is set and it is not full."""
        if self.policy.max_wait_s <= 0 or self._full():
            return 0.0
        return max(0.0, self._queue[0].arrived + self.policy.max_wait_s - self._clock())

    async def _loop(self) -> None:
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            remaining = self._fill_wait()
            if remaining > 0:  # only with max_wait_s > 0: until it fills, or the oldest has waited enough
                self._wake.clear()
                waiters = [asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(self._sleep(remaining))]
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                for waiter in waiters:
                    waiter.cancel()
                continue
            batch = self._take()
            if not batch:
                continue
            run = BatchRun(
                [i.payload for i in batch], [i.tokens for i in batch], [i.arrived for i in batch], self._clock()
            )
            self.batches += 1
            padded = self._padded(batch)
            self._running = (padded, run.started)
            try:
                results = await self._run(run)
                self.observe_throughput(padded, self._clock() - run.started)
            except Exception as error:  # the batch's callers get the error; the worker keeps serving
                log.exception("batch of %d failed", len(batch))
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(error)
                continue
            finally:
                self._running = None
            for item, result in zip(batch, results, strict=True):
                if not item.future.done():
                    item.future.set_result(result)
