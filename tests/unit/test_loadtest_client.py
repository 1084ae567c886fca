import asyncio
import itertools
import socket
import statistics

import httpx
import pytest

from loadtests.client import NO_RESPONSE, Target, arrivals, closed_loop, open_loop
from loadtests.stub import Stub, running

BODIES = [{"question": "Who?", "context": "Ada did."}, {"question": "Where?", "context": "In London."}]
# Service times of the stub's one-at-a-time "replicas", in seconds.
TIMES = {"dense": 0.05, "pruned": 0.01, "slow": 0.1, "stuck": 0.5, "stuck2": 0.5}


@pytest.fixture(scope="module")
def url():
    with running(Stub(variants=TIMES)) as address:
        yield address


def _closed(url, variant, concurrency, duration_s, min_requests=0, timeout=30.0):
    async def go():
        async with httpx.AsyncClient(timeout=timeout) as client:
            target = Target(url, "qa", variant, BODIES)
            return await closed_loop(client, target, concurrency, duration_s, min_requests)

    return asyncio.run(go())


def _open(url, variant, rate, duration_s, seed=0, drain_s=30.0, first_index=0):
    async def go():
        async with httpx.AsyncClient(timeout=30.0) as client:
            target = Target(url, "qa", variant, BODIES)
            return await open_loop(client, target, rate, duration_s, seed, drain_s, first_index=first_index)

    return asyncio.run(go())


def _p50(records) -> float:
    return statistics.median(r.latency_ms for r in records)


def _throughput(records) -> float:
    return len(records) / max(r.done_s for r in records)


def test_closed_loop_latency_is_the_server_time_and_queues_with_concurrency(url):
    seconds = TIMES["dense"]
    alone = _closed(url, "dense", 1, 1.0)
    crowded = _closed(url, "dense", 4, 1.0)
    for records in (alone, crowded):
        assert [r.status for r in records] == [200] * len(records)
        # The client's clock wraps the server's (same process, same clock).
        assert all(r.latency_ms >= r.server_ms for r in records)
    assert all(r.latency_ms >= 950 * seconds for r in alone)
    assert statistics.median(r.latency_ms - r.server_ms for r in alone) < 30
    # One replica: 4 clients each wait for the 3 others, so p50 is about 4 × the service time ...
    assert _p50(crowded) > 2.5 * _p50(alone)
    # ... and throughput is capped at 1 / service time whatever the concurrency.
    for records in (alone, crowded):
        assert 0.5 / seconds <= _throughput(records) <= 1.05 / seconds
    assert len({r.index for r in crowded}) == len(crowded)


def test_min_requests_extends_a_window_for_a_slow_variant(url):
    short = _closed(url, "slow", 1, 0.2)
    assert len(short) < 5
    extended = _closed(url, "slow", 1, 0.2, min_requests=5)
    assert len(extended) == 5
    assert max(r.done_s for r in extended) >= 0.45
    # But never past 4 × the duration: 0.4 s of 0.1 s requests, not 100 of them.
    capped = _closed(url, "slow", 1, 0.1, min_requests=100)
    assert 2 <= len(capped) <= 6
    assert max(r.done_s for r in capped) < 1.0
    # A duration of 0 is the runner's warm-up: exactly the requests asked for (one per idle worker at most more).
    warmup = _closed(url, "pruned", 2, 0.0, min_requests=3)
    assert 3 <= len(warmup) <= 4


def test_arrivals_are_poisson_and_deterministic_per_seed():
    times = arrivals(100.0, 200.0, seed=5)
    assert times == arrivals(100.0, 200.0, seed=5)
    assert times != arrivals(100.0, 200.0, seed=6)
    assert all(0 <= t < 200.0 for t in times)
    assert times == sorted(times)
    assert len(times) == pytest.approx(20_000, rel=0.03)
    gaps = [b - a for a, b in itertools.pairwise([0.0, *times])]
    assert statistics.mean(gaps) == pytest.approx(1 / 100.0, rel=0.03)
    # Exponential gaps: the standard deviation equals the mean (a fixed-interval schedule would have 0).
    assert statistics.stdev(gaps) == pytest.approx(1 / 100.0, rel=0.05)
    assert arrivals(10.0, 0.0, seed=1) == []


def test_open_loop_keeps_every_scheduled_request(url):
    schedule = arrivals(40.0, 0.5, seed=3)
    records = _open(url, "pruned", 40.0, 0.5, seed=3, first_index=100)
    assert len(records) == len(schedule) > 5
    assert [r.scheduled_s for r in records] == schedule
    assert [r.index for r in records] == list(range(100, 100 + len(schedule)))
    assert all(r.ok for r in records)


def test_a_stall_shows_in_every_open_loop_request_but_one_closed_loop_request():
    # The key property of an open loop: a server that stalls delays every request that arrives during
    # the stall, and latency from the *scheduled* time shows it. A closed loop at concurrency 1 sends
    # nothing while it waits, so the same stall shows up in a single sample (coordinated omission).
    stall, slow_ms = 0.6, 300.0
    stub = Stub(variants={"dense": 0.02})
    with running(stub) as address:
        stub.stall(stall)
        open_records = _open(address, "dense", 30.0, 1.5, seed=7)
        stub.stall(stall)
        closed_records = _closed(address, "dense", 1, 1.0)
    assert all(r.ok for r in open_records + closed_records)

    first = open_records[0].scheduled_s
    during = [r for r in open_records if r.scheduled_s < first + stall - slow_ms / 1000]
    assert len(during) >= 5
    # Sent on time, answered only after the stall: each waited at least the rest of the stall. "On time" for
    # most, with room for a busy 2-core machine (full `make test` runs saw single sends 0.1-0.4 s late): a
    # sender the stall blocked would send every one of these at least slow_ms late.
    lateness = [r.sent_s - r.scheduled_s for r in during]
    assert sum(late < 0.1 for late in lateness) >= 0.8 * len(lateness), lateness
    assert all(r.latency_ms >= slow_ms for r in during)
    assert sum(r.latency_ms >= slow_ms for r in open_records) >= len(during)

    slow_closed = [r for r in closed_records if r.latency_ms >= slow_ms]
    assert [r.index for r in slow_closed] == [0]
    assert len(closed_records) >= 5


def test_server_errors_are_recorded_with_their_message():
    stub = Stub(variants={"dense": 0.01}, fail_every={"dense": 3})
    with running(stub) as address:
        records = _closed(address, "dense", 1, 0.3)
    assert len(records) >= 6
    # Concurrency 1: requests reach the stub in index order, so every third one fails.
    assert [r.status for r in records] == [503 if (r.index + 1) % 3 == 0 else 200 for r in records]
    assert {r.error for r in records if r.status == 503} == {"stub at capacity"}
    assert all(r.error == "" and r.server_ms is not None for r in records if r.ok)


def test_nothing_listening_gives_status_zero_records_not_an_exception():
    with socket.socket() as sock:  # a port that was free a moment ago, with nothing on it now
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dead = f"http://127.0.0.1:{port}"
    closed = _closed(dead, "dense", 2, 0.1)
    opened = _open(dead, "dense", 50.0, 0.2, seed=1)
    assert len(opened) == len(arrivals(50.0, 0.2, seed=1))
    for records in (closed, opened):
        assert records
        assert {r.status for r in records} == {NO_RESPONSE}
        assert all(r.error.startswith("ConnectError") for r in records)
        assert not any(r.ok for r in records)


def test_a_request_past_the_client_timeout_is_a_timeout_record(url):
    records = _closed(url, "stuck", 1, 0.05, min_requests=1, timeout=0.1)
    assert len(records) == 1
    assert records[0].status == NO_RESPONSE and records[0].error == "timeout"
    assert 100 <= records[0].latency_ms < TIMES["stuck"] * 1000


def test_open_loop_records_requests_unanswered_after_the_drain(url):
    schedule = arrivals(20.0, 0.3, seed=5)
    records = _open(url, "stuck2", 20.0, 0.3, seed=5, drain_s=0.05)
    assert len(records) == len(schedule) >= 3
    # Every request needs 0.5 s; the window gives up 0.05 s after its 0.3 s.
    assert {r.status for r in records} == {NO_RESPONSE}
    assert {r.error for r in records} == {"no answer within 0.05 s after the window"}
    assert all(r.done_s < 1.0 for r in records)


def test_a_timed_window_starts_with_the_live_objects_frozen_out_of_collection(url, monkeypatch):
    """The generator's own full collections (230 ms with torch imported) must not land in a window."""
    import gc

    import loadtests.client as client_module

    settled = []
    monkeypatch.setattr(client_module, "settle_collector", lambda: settled.append(gc.get_freeze_count()))
    _closed(url, "pruned", 1, 0.0, min_requests=1)
    _open(url, "pruned", 50, 0.05)
    assert len(settled) == 2  # once per loop, before its clock starts

    gc.unfreeze()
    before = gc.get_freeze_count()
    monkeypatch.undo()
    client_module.settle_collector()
    assert gc.get_freeze_count() > before  # what was alive is no longer scanned by later collections
