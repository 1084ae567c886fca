"""Metric updates gathered per process and sent to the collector actor a few times a second.

Every update used to be its own actor call: two or three per request, each a Ray task submission in the
caller and a task in the collector. Under overload, on a machine where the HTTP path, the collector and
the model share the cores, that was CPU the refusals and the model needed. Updates are now queued here
and sent in one call per `FLUSH_S` (the first update of a quiet period schedules the flush).

The exposition is therefore eventually consistent: a scrape sends its own process's updates and waits one
period for the other processes' flushes, which counts what was answered before it in the usual case, but
calls from different processes to the collector are not ordered, so an update can land one scrape later.
Prometheus scrapes every few seconds and reads rates, which a delay of one period does not change.
"""

from __future__ import annotations

import asyncio
from typing import Any

FLUSH_S = 0.05


class BufferedMetrics:
    """The collector's update methods (`observe_request`, `reject`, ...), called like it, sent in batches."""

    UPDATES = ("observe_batch", "observe_request", "reject", "observe_shadow", "drop_shadow")

    def __init__(self, collector: Any, flush_s: float = FLUSH_S) -> None:
        self.collector = collector
        self.flush_s = flush_s
        self._events: list[tuple[str, tuple]] = []
        self._flush_task: asyncio.Task | None = None

    def __getattr__(self, name: str):
        if name not in self.UPDATES:
            raise AttributeError(name)
        return _Update(self, name)

    def add(self, method: str, args: tuple) -> None:
        self._events.append((method, args))
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop in this thread: nothing to batch with, send now
            self.flush()
            return
        if self._flush_task is None or self._flush_task.done():
            self._flush_task = loop.create_task(self._flush_later())

    async def _flush_later(self) -> None:
        await asyncio.sleep(self.flush_s)
        self.flush()

    def flush(self) -> None:
        if self._events:
            events, self._events = self._events, []
            self.collector.record.remote(events)

    async def render(self) -> bytes:
        """The collector's exposition, after this process's updates and (usually) one flush period of the others'."""
        self.flush()
        await asyncio.sleep(self.flush_s)
        return await self.collector.render.remote()


class _Update:
    """`buffer.reject.remote(...)` queues the update (the collector's own call syntax, kept for callers)."""

    def __init__(self, buffer: BufferedMetrics, method: str) -> None:
        self.buffer, self.method = buffer, method

    def remote(self, *args) -> None:
        self.buffer.add(self.method, args)
