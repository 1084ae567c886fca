"""The server's view of a load window: `/metrics` scraped before and after, subtracted.

Counters and histogram buckets are cumulative since the service started, so the difference of two
scrapes is exactly what the window added (the load test runs one variant at a time and waits for the
server's counts to catch up before the second scrape). Quantiles follow Prometheus'
`histogram_quantile`: linear interpolation inside the bucket that holds the rank.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

Labels = tuple[tuple[str, str], ...]  # sorted (name, value) pairs, without `le`


def _labels(values: dict[str, str]) -> Labels:
    return tuple(sorted((k, v) for k, v in values.items() if k != "le"))


def _matches(labels: Labels, wanted: dict[str, str]) -> bool:
    return all((k, v) in labels for k, v in wanted.items())


@dataclass(frozen=True)
class Histogram:
    """One histogram series: cumulative bucket counts by upper bound (the last is +Inf), sum and count."""

    bounds: tuple[float, ...] = ()
    cumulative: tuple[float, ...] = ()
    sum: float = 0.0
    count: float = 0.0

    def __sub__(self, earlier: Histogram) -> Histogram:
        if not earlier.bounds:
            return self
        if not self.bounds:  # the series vanished (service restarted): nothing is attributable to the window
            return Histogram()
        if earlier.bounds != self.bounds:
            raise ValueError("histogram buckets changed between scrapes (was the service restarted?)")
        return Histogram(
            self.bounds,
            tuple(a - b for a, b in zip(self.cumulative, earlier.cumulative, strict=True)),
            self.sum - earlier.sum,
            self.count - earlier.count,
        )

    def __add__(self, other: Histogram) -> Histogram:
        if not other.bounds:
            return self
        if not self.bounds:
            return other
        if other.bounds != self.bounds:
            raise ValueError("cannot add histograms with different buckets")
        return Histogram(
            self.bounds,
            tuple(a + b for a, b in zip(self.cumulative, other.cumulative, strict=True)),
            self.sum + other.sum,
            self.count + other.count,
        )

    def mean(self) -> float | None:
        return self.sum / self.count if self.count else None

    def quantile(self, q: float) -> float | None:
        """Prometheus' `histogram_quantile(q, ...)` on this series; None when it holds no observations."""
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile {q} is outside [0, 1]")
        if not self.count or not self.bounds:
            return None
        rank = q * self.cumulative[-1]
        index = next(i for i, c in enumerate(self.cumulative) if c >= rank)
        if math.isinf(self.bounds[index]):
            # Above the highest finite bound nothing is known: Prometheus answers that bound.
            return self.bounds[-2] if len(self.bounds) > 1 else None
        lower = self.bounds[index - 1] if index > 0 else 0.0
        below = self.cumulative[index - 1] if index > 0 else 0.0
        in_bucket = self.cumulative[index] - below
        if in_bucket <= 0:
            return self.bounds[index]
        return lower + (self.bounds[index] - lower) * (rank - below) / in_bucket


@dataclass(frozen=True)
class Snapshot:
    """Every counter and histogram series of one `/metrics` scrape."""

    counters: dict[tuple[str, Labels], float] = field(default_factory=dict)
    histograms: dict[tuple[str, Labels], Histogram] = field(default_factory=dict)

    def __sub__(self, earlier: Snapshot) -> Snapshot:
        counters = {key: value - earlier.counters.get(key, 0.0) for key, value in self.counters.items()}
        histograms = {key: value - earlier.histograms.get(key, Histogram()) for key, value in self.histograms.items()}
        return Snapshot(counters, histograms)

    def histogram(self, name: str, **labels: str) -> Histogram:
        """The sum of the series of `name` whose labels include `labels` (empty when there are none)."""
        total = Histogram()
        for (series, series_labels), value in self.histograms.items():
            if series == name and _matches(series_labels, labels):
                total = total + value
        return total

    def counter(self, name: str, by: str, **labels: str) -> dict[str, float]:
        """Counter `name` summed per value of label `by`, over series whose labels include `labels`."""
        totals: dict[str, float] = {}
        for (series, series_labels), value in self.counters.items():
            if series == name and _matches(series_labels, labels):
                key = dict(series_labels).get(by, "")
                totals[key] = totals.get(key, 0.0) + value
        return totals


def parse(text: str) -> Snapshot:
    """A Prometheus text exposition → its counters (by `_total` name) and histograms."""
    counters: dict[tuple[str, Labels], float] = {}
    buckets: dict[tuple[str, Labels], dict[float, float]] = {}
    sums: dict[tuple[str, Labels], float] = {}
    counts: dict[tuple[str, Labels], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (family.name, _labels(sample.labels))
            if family.type == "counter" and sample.name.endswith("_total"):
                counters[(sample.name, key[1])] = sample.value
            elif family.type == "histogram":
                if sample.name.endswith("_bucket"):
                    buckets.setdefault(key, {})[float(sample.labels["le"])] = sample.value
                elif sample.name.endswith("_sum"):
                    sums[key] = sample.value
                elif sample.name.endswith("_count"):
                    counts[key] = sample.value
    histograms = {
        key: Histogram(
            tuple(sorted(values)), tuple(values[b] for b in sorted(values)), sums.get(key, 0.0), counts.get(key, 0.0)
        )  # fmt: skip
        for key, values in buckets.items()
    }
    return Snapshot(counters, histograms)
