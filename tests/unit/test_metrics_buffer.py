"""Metric updates leave a process in batches: one collector call per flush period, in order."""

import asyncio

from service.metrics_buffer import BufferedMetrics


class _Method:
    def __init__(self, calls: list, name: str, value=None) -> None:
        self.calls, self.name, self.value = calls, name, value

    def remote(self, *args):
        self.calls.append((self.name, args))
        if self.value is not None:
            future = asyncio.get_running_loop().create_future()
            future.set_result(self.value)
            return future
        return None


class FakeCollector:
    def __init__(self) -> None:
        self.calls: list = []
        self.record = _Method(self.calls, "record")
        self.render = _Method(self.calls, "render", b"exposition")


def test_updates_in_a_loop_are_sent_together_after_one_period():
    async def scenario():
        collector = FakeCollector()
        metrics = BufferedMetrics(collector, flush_s=0.01)
        metrics.observe_request.remote("qa", "dense", 200, 0.02)
        metrics.reject.remote("qa", "dense", "overloaded")
        metrics.observe_request.remote("qa", "dense", 503, 0.001)
        assert collector.calls == []  # nothing sent on the request path
        await asyncio.sleep(0.05)
        assert collector.calls == [("record", ([
            ("observe_request", ("qa", "dense", 200, 0.02)),
            ("reject", ("qa", "dense", "overloaded")),
            ("observe_request", ("qa", "dense", 503, 0.001)),
        ],))]  # fmt: skip
        metrics.reject.remote("qa", "pruned", "too_long")  # a new period after a quiet one
        await asyncio.sleep(0.05)
        assert len(collector.calls) == 2

    asyncio.run(scenario())


def test_a_scrape_includes_this_processes_pending_updates():
    async def scenario():
        collector = FakeCollector()
        metrics = BufferedMetrics(collector, flush_s=0.01)
        metrics.reject.remote("qa", "dense", "overloaded")
        assert await metrics.render() == b"exposition"  # sent before the timer fired, then rendered
        assert [name for name, _ in collector.calls] == ["record", "render"]

    asyncio.run(scenario())


def test_outside_an_event_loop_an_update_is_sent_at_once():
    collector = FakeCollector()
    BufferedMetrics(collector).reject.remote("qa", "dense", "too_long")
    assert collector.calls == [("record", ([("reject", ("qa", "dense", "too_long"))],))]


def test_only_the_collectors_updates_can_be_buffered():
    import pytest

    with pytest.raises(AttributeError):
        BufferedMetrics(FakeCollector()).render_everything  # noqa: B018
