import itertools
import math
import random
import statistics

import pytest

from loadtests.prometheus import Histogram, parse
from service.metrics import LATENCY_BUCKETS, BatchObservation, ServiceMetrics

INF = math.inf
REQUEST = "blockserve_request_duration_seconds"
QA_DENSE = {"task": "qa", "variant": "dense"}

# 10 observations: 2 in (0, 0.1], 4 in (0.1, 0.2], 2 in (0.2, 0.4], 2 above 0.4.
HAND = Histogram((0.1, 0.2, 0.4, INF), (2, 6, 8, 10), sum=2.5, count=10)


def _scrape(metrics: ServiceMetrics):
    return parse(metrics.render().decode())


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        (0.5, 0.1 + 0.1 * (5 - 2) / 4),  # rank 5 lies in (0.1, 0.2], 3 of its 4 observations in
        (0.1, 0.0 + 0.1 * 1 / 2),  # rank 1 in the first bucket: interpolated from 0
        (0.7, 0.2 + 0.2 * (7 - 6) / 2),
        (0.8, 0.4),  # rank 8 is the top of (0.2, 0.4]
        (0.9, 0.4),  # rank 9 is in +Inf: the highest finite bound
        (1.0, 0.4),
    ],
)
def test_quantile_follows_histogram_quantile(q, expected):
    assert HAND.quantile(q) == pytest.approx(expected)


def test_quantile_skips_empty_buckets_below_the_rank():
    # Nothing in (0.1, 0.2]: rank 3 of 4 lies in (0.2, 0.4], interpolated from its own lower bound.
    histogram = Histogram((0.1, 0.2, 0.4, INF), (2, 2, 4, 4), sum=1.0, count=4)
    assert histogram.quantile(0.75) == pytest.approx(0.2 + 0.2 * (3 - 2) / 2)


def test_quantile_of_an_empty_histogram_is_none():
    assert Histogram().quantile(0.5) is None
    assert Histogram((0.1, INF), (0, 0), 0.0, 0).quantile(0.99) is None
    assert Histogram().mean() is None


@pytest.mark.parametrize("q", [-0.01, 1.01, 50])
def test_quantile_outside_unit_interval_is_refused(q):
    with pytest.raises(ValueError, match="outside"):
        HAND.quantile(q)


def test_parse_reads_service_histograms_and_counters():
    metrics = ServiceMetrics()
    for seconds in (0.012, 0.030, 0.050):
        metrics.observe_request("qa", "dense", 200, seconds)
    metrics.observe_request("qa", "dense", 503, 0.001)
    metrics.observe_request("qa", "pruned", 200, 0.020)
    metrics.observe_request("summarize", "dense", 200, 2.0)
    metrics.observe_batch(BatchObservation("qa", "dense", 3, 0.04, [0.001, 0.002, 0.003], [100, 200, 300]))
    metrics.reject("qa", "dense", "too_long")
    snapshot = _scrape(metrics)

    dense = snapshot.histogram(REQUEST, **QA_DENSE)
    assert dense.count == 3  # the 503 is counted, not timed
    assert dense.sum == pytest.approx(0.092)
    assert dense.mean() == pytest.approx(0.092 / 3)
    assert dense.bounds == (*LATENCY_BUCKETS, INF)
    # Label filtering: by task alone sums dense and pruned; by variant alone sums both tasks.
    assert snapshot.histogram(REQUEST, task="qa").count == 4
    assert snapshot.histogram(REQUEST, variant="dense").count == 4
    assert snapshot.histogram(REQUEST).count == 5
    assert snapshot.histogram(REQUEST, task="qa", variant="nope").count == 0
    assert snapshot.histogram("blockserve_batch_size", **QA_DENSE).mean() == 3
    assert snapshot.histogram("blockserve_queue_wait_seconds", **QA_DENSE).count == 3

    assert snapshot.counter("blockserve_requests_total", "status", **QA_DENSE) == {"200": 3, "503": 1}
    assert snapshot.counter("blockserve_requests_total", "status", task="qa") == {"200": 4, "503": 1}
    assert snapshot.counter("blockserve_requests_total", "variant", status="200") == {"dense": 4, "pruned": 1}
    assert snapshot.counter("blockserve_rejected_total", "reason", **QA_DENSE) == {"too_long": 1}


def test_snapshot_difference_is_exactly_the_window():
    metrics = ServiceMetrics()
    for _ in range(50):  # before the window: fast requests that must not leak into it
        metrics.observe_request("qa", "dense", 200, 0.010)
    before = _scrape(metrics)
    for seconds in (0.9, 1.0, 1.0, 1.1):
        metrics.observe_request("qa", "dense", 200, seconds)
    metrics.observe_request("qa", "dense", 503, 0.001)
    window = _scrape(metrics) - before

    latency = window.histogram(REQUEST, **QA_DENSE)
    assert latency.count == 4
    assert latency.sum == pytest.approx(4.0)
    # The median of the window alone is near 1 s; with the earlier 50 it would be 10 ms.
    assert 0.9 <= latency.quantile(0.5) <= 1.1
    assert window.counter("blockserve_requests_total", "status", **QA_DENSE) == {"200": 4, "503": 1}


def test_series_absent_before_counts_fully():
    metrics = ServiceMetrics()
    metrics.observe_request("qa", "dense", 200, 0.01)
    before = _scrape(metrics)
    metrics.observe_request("qa", "pruned", 200, 0.02)
    metrics.observe_request("qa", "pruned", 200, 0.03)
    window = _scrape(metrics) - before
    assert window.histogram(REQUEST, task="qa", variant="pruned").count == 2
    assert window.counter("blockserve_requests_total", "status", task="qa", variant="pruned") == {"200": 2}
    assert window.histogram(REQUEST, **QA_DENSE).count == 0


def test_subtracting_histograms_with_other_buckets_is_refused():
    earlier = Histogram((0.1, 0.5, INF), (1, 1, 1), 0.05, 1)
    later = Histogram((0.1, 0.2, INF), (1, 2, 2), 0.2, 2)
    with pytest.raises(ValueError, match="buckets"):
        later - earlier
    with pytest.raises(ValueError, match="buckets"):
        later + earlier


def test_fine_buckets_estimate_the_median_within_seven_percent():
    # Why LATENCY_BUCKETS are ≤ 12.5 % apart: the headline is a ratio of two histogram p50s, and
    # 0.3 s and 0.45 s must each be estimated closely, not land in one coarse bucket.
    rng = random.Random(1234)
    metrics = ServiceMetrics()
    samples = {
        "pruned": [rng.gauss(0.30, 0.03) for _ in range(200)],
        "dense": [rng.gauss(0.45, 0.045) for _ in range(200)],
    }
    for variant, values in samples.items():
        for seconds in values:
            metrics.observe_request("qa", variant, 200, seconds)
    snapshot = _scrape(metrics)
    estimates = {}
    for variant, values in samples.items():
        exact = statistics.median(values)
        estimates[variant] = snapshot.histogram(REQUEST, task="qa", variant=variant).quantile(0.5)
        assert estimates[variant] == pytest.approx(exact, rel=0.07), variant
    exact_ratio = statistics.median(samples["dense"]) / statistics.median(samples["pruned"])
    assert estimates["dense"] / estimates["pruned"] == pytest.approx(exact_ratio, rel=0.10)
    # The same samples in the old 1-2.5-5 buckets miss by far more: the check above can fail.
    coarse = (0.1, 0.25, 0.5, 1.0, INF)
    pruned = samples["pruned"]
    old = Histogram(coarse, tuple(sum(v <= b for v in pruned) for b in coarse), sum(pruned), len(pruned))
    assert old.quantile(0.5) != pytest.approx(statistics.median(pruned), rel=0.07)


def test_latency_buckets_are_at_most_twelve_and_a_half_percent_apart():
    bounds = LATENCY_BUCKETS
    assert bounds[0] == 0.001 and bounds[-1] == 30.0
    assert all(b / a <= 1.125 + 1e-9 for a, b in itertools.pairwise(bounds))
