"""A stand-in for the service with set latencies: to test the load generator without models or Ray.

Each variant is one "replica" that serves a request at a time for a fixed number of seconds (like a
model that is busy for one forward pass), so throughput saturates at 1 / seconds and queueing shows
up in latency. It speaks the service's API: the same request schemas (422 on bad bodies), 404 for
an unknown variant, `GET /v1/models`, `/readyz`, and `/metrics` rendered by the service's own
`ServiceMetrics` (request duration, queue wait, inference, batch size 1). `stall(seconds)` makes the
next request hold its replica that much longer, to test what an open loop sees of a stalled server.

No `from __future__ import annotations`: FastAPI reads the route's body type at runtime.
"""

import asyncio
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from service.config import BatchingConfig
from service.metrics import BatchObservation, ServiceMetrics
from service.schemas import QARequest, SummarizeRequest, VariantInfo


@dataclass
class StubVariant:
    seconds: float  # service time of one request
    fail_every: int = 0  # every n-th request answers 503 (0: never)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    served: int = 0
    stall_s: float = 0.0


class Stub:
    def __init__(self, route: str = "qa", variants: dict[str, float] | None = None, fail_every: dict | None = None):
        self.route = route
        self.variants = {
            name: StubVariant(seconds, (fail_every or {}).get(name, 0))
            for name, seconds in (variants or {"dense": 0.04, "pruned": 0.02}).items()
        }
        self.metrics = ServiceMetrics()
        self.app = self._build()

    def stall(self, seconds: float) -> None:
        for variant in self.variants.values():
            variant.stall_s = seconds

    async def _serve(self, name: str | None) -> dict | JSONResponse:
        name = name or next(iter(self.variants))
        if name not in self.variants:
            return JSONResponse({"error": f"unknown variant {name!r}"}, status_code=404)
        variant = self.variants[name]
        arrived = time.perf_counter()
        variant.served += 1
        if variant.fail_every and variant.served % variant.fail_every == 0:
            self.metrics.observe_request(self.route, name, 503, time.perf_counter() - arrived)
            return JSONResponse({"error": "stub at capacity"}, status_code=503, headers={"Retry-After": "1"})
        async with variant.lock:
            started = time.perf_counter()
            stall, variant.stall_s = variant.stall_s, 0.0
            await asyncio.sleep(variant.seconds + stall)
            inference = time.perf_counter() - started
        self.metrics.observe_batch(BatchObservation(self.route, name, 1, inference, [started - arrived], [8]))
        seconds = time.perf_counter() - arrived
        self.metrics.observe_request(self.route, name, 200, seconds)
        return {
            "variant": name,
            "model": f"stub/{name}",
            "latency_ms": 1000 * seconds,
            "inference_ms": 1000 * inference,
        }

    def _build(self) -> FastAPI:
        app = FastAPI(title="blockserve stub")
        schema = {"qa": QARequest, "summarize": SummarizeRequest}[self.route]

        async def answer(body: schema):
            served = await self._serve(body.variant)
            if isinstance(served, JSONResponse):
                return served
            extra = {"answer": "stub", "score": 0.0, "start": 0, "end": 0, "answers": []} if self.route == "qa" else {
                "summary": "stub", "input_tokens": 8, "output_tokens": 1}  # fmt: skip
            return {**served, **extra}

        app.post(f"/v1/{self.route}")(answer)

        @app.get("/v1/models")
        async def models() -> list[VariantInfo]:
            return [
                VariantInfo(
                    task=self.route,
                    variant=name,
                    checkpoint=f"stub/{name}",
                    is_default=i == 0,
                    compact=False,
                    source=None,
                    plan=None,
                    plan_summary=None,
                    plan_digest=None,
                    params=0,
                    flops_ratio=None,
                    device="cpu",
                    dtype="float32",
                    runtime="stub",
                    batching=BatchingConfig(),
                    replica_pid=os.getpid(),
                    threads=1,
                )  # fmt: skip
                for i, name in enumerate(self.variants)
            ]

        @app.get("/readyz")
        async def readyz() -> dict:
            return {"status": "ready"}

        @app.get("/metrics")
        async def metrics() -> Response:
            return Response(self.metrics.render(), media_type=CONTENT_TYPE_LATEST)

        return app


@contextmanager
def running(stub: Stub) -> Iterator[str]:
    """Serve `stub` with uvicorn on a free local port in a background thread; yields its URL."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(stub.app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the stub server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
