"""The one timing helper: interleaved repeats with warm-up, reported as medians.

Candidates are timed in alternation (A B A B ...) so slow drift of a noisy machine (frequency
scaling, a neighbour's load) hits both equally instead of biasing whichever ran second.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

from pruning.runtime.numerics import synchronizer


@dataclass(frozen=True)
class Timing:
    samples_ms: tuple[float, ...]

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples_ms)

    @property
    def spread_ms(self) -> float:
        """Inter-quartile range, to say how noisy the median is."""
        if len(self.samples_ms) < 4:
            return max(self.samples_ms) - min(self.samples_ms)
        quartiles = statistics.quantiles(self.samples_ms, n=4)
        return quartiles[2] - quartiles[0]


def time_interleaved(
    candidates: dict[str, Callable[[], object]], warmup: int, repeats: int, device: str = "cpu"
) -> dict[str, Timing]:
    """Run each candidate `warmup` times, then `repeats` times in alternation; wall-clock per call.

    On CUDA the clock starts and stops only after the device has finished its queued work (a kernel
    launch returns at once: without the synchronisation, timings would measure launches).
    """
    sync = synchronizer(device)
    if repeats < 1:
        raise ValueError("repeats must be at least 1")
    for _ in range(warmup):
        for run in candidates.values():
            run()
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, run in candidates.items():
            sync()
            start = time.perf_counter()
            run()
            sync()
            samples[name].append((time.perf_counter() - start) * 1000.0)
    return {name: Timing(tuple(values)) for name, values in samples.items()}
