"""A colocated variant refuses past its queue bounds the way a deployment handle does: on await, with
`BackPressureError`, and takes work again once what it held is done."""

import asyncio

import pytest
from ray.serve.exceptions import BackPressureError

from service.colocated import LocalHandle


class _GatedServer:
    def __init__(self) -> None:
        self.gate = asyncio.Event()

    async def __call__(self, payload):
        await self.gate.wait()
        return payload

    def info(self):
        return {}

    def shadow(self, payload):
        return payload


def test_full_handle_refuses_on_await_and_recovers_when_work_finishes():
    async def scenario():
        server = _GatedServer()
        handle = LocalHandle(server, capacity=2)
        held = [handle.remote(1), handle.remote(2)]
        refused = handle.remote(3)  # no exception here: the ingress awaits inside its try
        with pytest.raises(BackPressureError):
            await refused
        assert handle.in_flight == 2
        server.gate.set()
        assert await asyncio.gather(*held) == [1, 2]
        assert handle.in_flight == 0
        assert await handle.remote(4) == 4

    asyncio.run(scenario())


def test_cancelled_and_failed_requests_give_their_place_back():
    class Failing(_GatedServer):
        async def __call__(self, payload):
            if payload == "fail":
                raise RuntimeError("model error")
            return await super().__call__(payload)

    async def scenario():
        handle = LocalHandle(Failing(), capacity=1)
        waiting = handle.remote("wait")
        await asyncio.sleep(0)
        waiting.cancel()  # what the ingress does at the deadline
        await asyncio.gather(waiting, return_exceptions=True)
        assert handle.in_flight == 0
        with pytest.raises(RuntimeError):
            await handle.remote("fail")
        assert handle.in_flight == 0

    asyncio.run(scenario())
