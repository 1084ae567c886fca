"""From windows to results: per variant and load level, client and server percentiles, and the ratios.

A level pools its repeats: client percentiles over every answered request, server percentiles over
the summed histogram differences. Latency percentiles count answered requests (200) only; errors are
counted beside them, and a level with more than `max_error_ratio` errors misses the SLO whatever its
latency. The headline ratios are baseline p50 / variant p50 at concurrency 1, where queueing and
batching do not enter and the model's own speed shows.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict

import numpy as np
from pydantic import BaseModel

from loadtests.prometheus import Histogram
from loadtests.runner import LoadSettings, Window


class Quantiles(BaseModel):
    """Milliseconds."""

    p50: float
    p95: float
    p99: float
    mean: float

    @classmethod
    def of_samples(cls, samples_ms: list[float]) -> Quantiles | None:
        if not samples_ms:
            return None
        p50, p95, p99 = np.percentile(samples_ms, [50, 95, 99])
        return cls(p50=p50, p95=p95, p99=p99, mean=float(np.mean(samples_ms)))

    @classmethod
    def of_histogram(cls, histogram: Histogram, scale: float = 1000.0) -> Quantiles | None:
        if not histogram.count:
            return None
        return cls(
            p50=scale * histogram.quantile(0.5),
            p95=scale * histogram.quantile(0.95),
            p99=scale * histogram.quantile(0.99),
            mean=scale * histogram.mean(),
        )


class ServerView(BaseModel):
    """The server's Prometheus histograms for the same windows (milliseconds, batch sizes in requests)."""

    requests: int
    statuses: dict[str, int]
    rejected: dict[str, int]
    request: Quantiles | None  # blockserve_request_duration_seconds: arrival at the ingress to response
    queue_wait: Quantiles | None
    inference: Quantiles | None  # per batch
    batch_size_mean: float | None


class LevelResult(BaseModel):
    variant: str
    mode: str  # "closed" or "open"
    level: float  # concurrency, or offered requests per second
    repeats: int
    requests: int
    ok: int
    errors: int
    statuses: dict[str, int]  # "0" = no response (timeout, connection error)
    error_examples: list[str]
    seconds: float
    throughput_rps: float  # answered requests per second of window
    client: Quantiles | None
    server: ServerView | None
    repeat_p50_ms: list[float]  # client p50 of each repeat, to show the spread
    meets_slo: bool


class VariantRatio(BaseModel):
    """Baseline / variant at concurrency 1 (> 1: the variant is faster)."""

    variant: str
    client: float | None = None
    client_by_repeat: list[float] = []
    server: float | None = None  # p50 from the server's histograms
    server_mean: float | None = None  # mean (histogram sum / count): no bucket interpolation
    bench: float | None = None
    client_vs_bench: float | None = None  # client / bench - 1
    server_vs_client: float | None = None  # server / client - 1


class SloResult(BaseModel):
    variant: str
    max_throughput_rps: float | None  # None: no level met the SLO
    at: str | None  # the level that achieved it


def _level(windows: list[Window], settings: LoadSettings) -> LevelResult:
    first = windows[0]
    records = [r for w in windows for r in w.records]
    ok = [r for r in records if r.ok]
    errors = [r for r in records if not r.ok]
    seconds = sum(w.seconds for w in windows)
    client = Quantiles.of_samples([r.latency_ms for r in ok])
    server = None
    if all(w.server is not None for w in windows):
        views = [w.server for w in windows]
        total = {name: sum((getattr(v, name) for v in views), Histogram()) for name in ("request", "queue_wait", "inference", "batch_size")}  # fmt: skip
        statuses: Counter = Counter()
        rejected: Counter = Counter()
        for view in views:
            statuses.update({k: int(v) for k, v in view.statuses.items()})
            rejected.update({k: int(v) for k, v in view.rejected.items()})
        server = ServerView(
            requests=sum(statuses.values()),
            statuses=dict(statuses),
            rejected=dict(rejected),
            request=Quantiles.of_histogram(total["request"]),
            queue_wait=Quantiles.of_histogram(total["queue_wait"]),
            inference=Quantiles.of_histogram(total["inference"]),
            batch_size_mean=total["batch_size"].mean(),
        )
    repeat_p50 = []
    for window in windows:
        samples = [r.latency_ms for r in window.records if r.ok]
        if samples:
            repeat_p50.append(statistics.median(samples))
    meets = (
        client is not None
        and client.p99 <= settings.slo_ms
        and len(errors) <= settings.max_error_ratio * max(len(records), 1)
    )
    return LevelResult(
        variant=first.variant,
        mode=first.load.mode,
        level=first.load.level,
        repeats=len(windows),
        requests=len(records),
        ok=len(ok),
        errors=len(errors),
        statuses=dict(Counter(str(r.status) for r in records)),
        error_examples=list(dict.fromkeys(r.error for r in errors))[:3],
        seconds=seconds,
        throughput_rps=len(ok) / seconds if seconds else 0.0,
        client=client,
        server=server,
        repeat_p50_ms=repeat_p50,
        meets_slo=meets,
    )


def level_results(windows: list[Window], settings: LoadSettings) -> list[LevelResult]:
    groups: dict[tuple, list[Window]] = defaultdict(list)
    for window in windows:
        groups[(window.variant, window.load.mode, window.load.level)].append(window)
    order = {name: i for i, name in enumerate(settings.variants)}
    keys = sorted(groups, key=lambda k: (order[k[0]], k[1] == "open", k[2]))
    return [_level(groups[key], settings) for key in keys]


def find(levels: list[LevelResult], variant: str, mode: str, level: float) -> LevelResult | None:
    return next((r for r in levels if (r.variant, r.mode, r.level) == (variant, mode, level)), None)


def ratios(levels: list[LevelResult], settings: LoadSettings, bench: dict[str, float | None]) -> list[VariantRatio]:
    """Baseline p50 / variant p50 at concurrency 1, client and server side, next to `blockserve bench`'s ratio."""
    baseline = find(levels, settings.variants[0], "closed", 1)
    results = []
    for variant in settings.variants[1:]:
        other = find(levels, variant, "closed", 1)
        if baseline is None or other is None or baseline.client is None or other.client is None:
            results.append(VariantRatio(variant=variant, bench=bench.get(variant)))
            continue
        client = baseline.client.p50 / other.client.p50
        by_repeat = [a / b for a, b in zip(baseline.repeat_p50_ms, other.repeat_p50_ms, strict=False)]
        server = server_mean = None
        if baseline.server and other.server and baseline.server.request and other.server.request:
            server = baseline.server.request.p50 / other.server.request.p50
            server_mean = baseline.server.request.mean / other.server.request.mean
        bench_ratio = bench.get(variant)
        results.append(
            VariantRatio(
                variant=variant,
                client=client,
                client_by_repeat=by_repeat,
                server=server,
                server_mean=server_mean,
                bench=bench_ratio,
                client_vs_bench=client / bench_ratio - 1 if bench_ratio else None,
                server_vs_client=server / client - 1 if server else None,
            )
        )
    return results


def slo_results(levels: list[LevelResult], settings: LoadSettings) -> list[SloResult]:
    """Per variant, the highest throughput among the levels whose p99 and error ratio meet the SLO."""
    results = []
    for variant in settings.variants:
        meeting = [r for r in levels if r.variant == variant and r.meets_slo]
        best = max(meeting, key=lambda r: r.throughput_rps, default=None)
        at = None
        if best is not None:
            at = f"concurrency {best.level:g}" if best.mode == "closed" else f"{best.level:g} req/s offered"
        results.append(SloResult(variant=variant, max_throughput_rps=best.throughput_rps if best else None, at=at))
    return results
