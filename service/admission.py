"""Refusals at the ingress, without a hop to a replica, while a variant has said it cannot take work.

A replica refuses a request when the work queued ahead of it would take longer than `max_queue_wait_s`;
it then knows how long until it would admit again: the queue drains at the replica's throughput, so the
expected wait falls back under the limit after about (wait − limit) seconds. The ingress keeps that
moment per variant and answers 503 itself until then. Under overload this keeps refusals cheap (no
model-replica call, no tokenization) and fast, which is what keeps the accepted requests' latency
bounded on a machine where the HTTP path and the model share the cores.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable


class RefusalHold:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._until: dict[Hashable, float] = {}

    def refused(self, key: Hashable, admit_again_in_s: float) -> None:
        """A replica of `key` refused; it expects to admit again in `admit_again_in_s` seconds."""
        until = self._clock() + max(0.0, admit_again_in_s)
        if until > self._until.get(key, -math.inf):
            self._until[key] = until

    def remaining_s(self, key: Hashable) -> float | None:
        """Seconds `key` is still held (refused here), or None when requests should go to the replicas."""
        until = self._until.get(key)
        if until is None:
            return None
        left = until - self._clock()
        if left <= 0:
            del self._until[key]
            return None
        return left
