"""The replica batcher, with a fake model and a clock the test moves (no timing, no Ray)."""

import asyncio

import pytest

from service.batcher import Batcher, BatchPolicy, BatchRun, DeadlineExceeded, Overloaded


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


class FakeModel:
    """Records every batch; `hold` keeps the model busy until the test releases it."""

    def __init__(self, clock: Clock) -> None:
        self.clock, self.runs = clock, []
        self.hold = asyncio.Event()
        self.hold.set()
        self.started = asyncio.Event()
        self.fail = False

    async def __call__(self, run: BatchRun) -> list[str]:
        self.runs.append((self.clock(), list(run.payloads)))
        self.started.set()
        await self.hold.wait()
        if self.fail:
            raise RuntimeError("model broke")
        return [f"answer {p}" for p in run.payloads]


def _setup(**policy):
    clock = Clock()
    model = FakeModel(clock)
    return clock, model, Batcher(model, BatchPolicy(**policy), clock=clock, sleep=clock.sleep)


async def _settle():
    for _ in range(5):
        await asyncio.sleep(0)


def test_an_idle_replica_runs_a_lone_request_at_once():
    async def scenario():
        clock, model, batcher = _setup(max_batch_size=8)
        clock.now = 5.0
        assert await batcher.submit("q", tokens=10) == "answer q"
        assert model.runs == [(5.0, ["q"])] and clock.sleeps == []  # no timer at all

    asyncio.run(scenario())


def test_requests_arriving_during_a_run_form_the_next_batches_up_to_the_count():
    async def scenario():
        clock, model, batcher = _setup(max_batch_size=3)
        model.hold.clear()
        first = asyncio.ensure_future(batcher.submit("a", 10))
        await model.started.wait()
        later = [asyncio.ensure_future(batcher.submit(name, 10)) for name in "bcdef"]
        await _settle()
        assert [payloads for _, payloads in model.runs] == [["a"]]  # still running the first
        model.hold.set()
        results = await asyncio.gather(first, *later)
        assert results == [f"answer {n}" for n in "abcdef"]
        assert [payloads for _, payloads in model.runs] == [["a"], ["b", "c", "d"], ["e", "f"]]

    asyncio.run(scenario())


def _batches_queued_behind_a_run(submissions, **policy):
    """Results and batches when `submissions` ((payload, tokens), ...) queue while a first request runs."""

    async def scenario():
        clock, model, batcher = _setup(**policy)
        model.hold.clear()
        first = asyncio.ensure_future(batcher.submit("x", 10))
        await model.started.wait()
        rest = [asyncio.ensure_future(batcher.submit(name, tokens)) for name, tokens in submissions]
        await _settle()
        model.hold.set()
        results = await asyncio.gather(first, *rest)
        return results, [payloads for _, payloads in model.runs]

    return asyncio.run(scenario())


def test_the_token_budget_splits_batches_by_padded_length():
    # 2 × 100 fits; adding 300 pads all three to 900 > 400; 300 alone runs (a request always runs).
    submissions = (("a", 100), ("b", 100), ("c", 300), ("d", 50))
    _, batches = _batches_queued_behind_a_run(submissions, max_batch_size=8, max_batch_tokens=400)
    assert batches == [["x"], ["a", "b"], ["c"], ["d"]]


def test_a_padding_budget_groups_similar_lengths_and_keeps_the_others_in_line():
    submissions = (("a", 100), ("b", 300), ("c", 110), ("d", 290), ("e", 95), ("f", 120), ("g", 280))
    results, batches = _batches_queued_behind_a_run(
        submissions, max_batch_size=3, max_batch_tokens=10_000, max_padding=0.25
    )
    assert results == ["answer x"] + [f"answer {name}" for name, _ in submissions]  # nothing lost
    # a: 100 takes c (110) and e (95); b (300) waited one batch and then leads its own with d and g;
    # f (120) kept its place behind b and d and runs as soon as it is the oldest.
    assert batches == [["x"], ["a", "c", "e"], ["b", "d", "g"], ["f"]]


def test_without_a_padding_budget_the_queue_runs_front_first():
    submissions = (("a", 100), ("b", 300), ("c", 110))
    _, batches = _batches_queued_behind_a_run(submissions, max_batch_size=3, max_batch_tokens=10_000)
    assert batches == [["x"], ["a", "b", "c"]]


def test_a_deadline_passed_in_the_queue_fails_without_model_time():
    async def scenario():
        clock, model, batcher = _setup(max_batch_size=8)
        model.hold.clear()
        first = asyncio.ensure_future(batcher.submit("a", 10))
        await model.started.wait()
        late = asyncio.ensure_future(batcher.submit("late", 10, timeout_s=1.0))
        in_time = asyncio.ensure_future(batcher.submit("ok", 10, timeout_s=5.0))
        await _settle()
        clock.now += 2.0  # the model took 2 s on "a"
        model.hold.set()
        assert await first == "answer a" and await in_time == "answer ok"
        with pytest.raises(DeadlineExceeded):
            await late
        assert all("late" not in payloads for _, payloads in model.runs)

    asyncio.run(scenario())


def test_a_cancelled_request_costs_no_model_time():
    async def scenario():
        clock, model, batcher = _setup(max_batch_size=8)
        model.hold.clear()
        first = asyncio.ensure_future(batcher.submit("a", 10))
        await model.started.wait()
        gone = asyncio.ensure_future(batcher.submit("gone", 10))
        stays = asyncio.ensure_future(batcher.submit("stays", 10))
        await _settle()
        gone.cancel()
        model.hold.set()
        await asyncio.gather(first, stays)
        assert [payloads for _, payloads in model.runs] == [["a"], ["stays"]]

    asyncio.run(scenario())


def test_reconfiguration_applies_to_the_next_batch_and_loses_nothing():
    async def scenario():
        clock, model, batcher = _setup(max_batch_size=1)
        model.hold.clear()
        first = asyncio.ensure_future(batcher.submit("a", 10))
        await model.started.wait()
        rest = [asyncio.ensure_future(batcher.submit(n, 10)) for n in "bcde"]
        await _settle()
        batcher.reconfigure(BatchPolicy(max_batch_size=4))
        model.hold.set()
        await asyncio.gather(first, *rest)
        assert [payloads for _, payloads in model.runs] == [["a"], ["b", "c", "d", "e"]]

    asyncio.run(scenario())


def test_an_optional_fill_wait_waits_for_a_lone_request_but_not_for_a_full_batch():
    async def scenario():
        clock, model, batcher = _setup(max_batch_size=2, max_wait_s=0.005)
        assert await batcher.submit("alone", 10) == "answer alone"
        assert model.runs == [(pytest.approx(0.005), ["alone"])]
        start = clock.now
        pair = await asyncio.gather(batcher.submit("a", 10), batcher.submit("b", 10))
        assert pair == ["answer a", "answer b"]
        assert model.runs[-1] == (start, ["a", "b"])  # full: no wait

    asyncio.run(scenario())


def test_a_failing_batch_fails_its_callers_and_the_next_batch_still_runs():
    async def scenario():
        clock, model, batcher = _setup(max_batch_size=8)
        model.fail = True
        with pytest.raises(RuntimeError, match="model broke"):
            await batcher.submit("a", 10)
        model.fail = False
        assert await batcher.submit("b", 10) == "answer b"

    asyncio.run(scenario())


def test_admission_refuses_at_once_when_the_expected_wait_is_over_the_limit():
    async def scenario():
        clock, model, batcher = _setup(max_batch_size=4, max_queue_wait_s=1.0)
        model.hold.clear()
        running = asyncio.ensure_future(batcher.submit("running", 100))  # unmeasured: admitted
        await model.started.wait()
        batcher.observe_throughput(padded_tokens=1000, seconds=1.0)  # fake throughput: 1000 padded tokens/s
        # The running batch (100 tokens) has 0.1 s left; each queued 100-token request adds 0.1 s.
        queued = [asyncio.ensure_future(batcher.submit(f"q{i}", 100)) for i in range(9)]
        await _settle()
        assert batcher.expected_wait_s() == pytest.approx(0.1 + 0.9)
        clock.now += 0.05  # half of the running batch done: 0.95 s ahead, still under 1.0
        assert batcher.expected_wait_s() == pytest.approx(0.95)
        admitted = asyncio.ensure_future(batcher.submit("admitted", 100))
        await _settle()
        with pytest.raises(Overloaded) as refused:  # 1.05 s ahead now
            await batcher.submit("refused", 100)
        assert refused.value.retry_after_s == pytest.approx(1.05)
        assert refused.value.admit_again_in_s == pytest.approx(0.05)  # drained back under the limit by then
        assert batcher.queued == 10  # the refused one was never queued
        model.hold.set()
        await asyncio.gather(running, admitted, *queued)
        assert all("refused" not in payloads for _, payloads in model.runs)

    asyncio.run(scenario())


def test_an_unmeasured_or_unlimited_replica_admits_everything():
    async def scenario():
        clock, model, batcher = _setup(max_batch_size=2)
        batcher.observe_throughput(10, 1.0)  # very slow, but no limit configured
        model.hold.clear()
        tasks = [asyncio.ensure_future(batcher.submit(i, 100)) for i in range(20)]
        await _settle()
        assert batcher.queued == 18 and batcher.expected_wait_s() > 100  # a batch of 2 is running
        model.hold.set()
        assert len(await asyncio.gather(*tasks)) == 20

    asyncio.run(scenario())


def test_throughput_is_measured_from_batches():
    async def scenario():
        clock, _, batcher = _setup(max_batch_size=4)

        async def slow(run):
            clock.now += 0.5  # the model takes 0.5 s per batch
            return list(run.payloads)

        batcher._run = slow
        await asyncio.gather(*(batcher.submit(i, 50) for i in range(4)))  # first alone, then 3 together
        assert batcher.tokens_per_s is not None and batcher.tokens_per_s > 0

    asyncio.run(scenario())
