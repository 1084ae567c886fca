"""Model servers living in the ingress's own process (`colocate: true`), behind the part of a Ray Serve
`DeploymentHandle` the ingress uses — so the ingress routes, admits, retries and shadows the same way
whether a variant is a deployment of its own or an object beside it.

Why: on a small machine each hop costs CPU the model needs (measured on 2 cores: request − inference
5.9 ms at c=1 for the ingress → model replica call alone). One process gives that back, at the price of
per-variant scaling: colocated variants scale with the ingress's replicas.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

from ray.serve.exceptions import BackPressureError

from pruning.core.task_registry import route_entry
from service.config import AppConfig
from service.model_thread import model_thread


class _LocalMethod:
    def __init__(self, method) -> None:
        self._method = method

    def remote(self, *args, **kwargs):
        async def call():
            result = self._method(*args, **kwargs)
            return await result if inspect.isawaitable(result) else result

        return call()


class LocalHandle:
    """`handle.remote(payload)` → an awaitable, cancellable task; `handle.info.remote(...)` and
    `handle.shadow.remote(payload)` → awaitables.

    A variant's `max_ongoing_requests` + `max_queued_requests` bound what it holds here as they do behind a
    deployment handle (Ray raises `BackPressureError` past them): the same config refuses the same flood
    whichever topology `colocate: auto` picked."""

    def __init__(self, server: Any, capacity: int) -> None:
        self.server = server
        self.capacity = capacity
        self.in_flight = 0
        self.info = _LocalMethod(server.info)
        self.shadow = _LocalMethod(server.shadow)

    def remote(self, payload: Any) -> asyncio.Future:
        if self.in_flight >= self.capacity:  # raised on await, where a deployment handle raises it
            refused = asyncio.get_running_loop().create_future()
            refused.set_exception(
                BackPressureError(num_queued_requests=self.in_flight, max_queued_requests=self.capacity)
            )
            return refused
        self.in_flight += 1
        task = asyncio.ensure_future(self.server(payload))
        task.add_done_callback(self._finished)  # runs on completion, error and cancellation alike
        return task

    def _finished(self, _task: asyncio.Task) -> None:
        self.in_flight -= 1


def colocated_servers(config: AppConfig) -> dict[str, dict[str, LocalHandle]]:
    """route → variant → a handle on a model server built here. All variants run on one model thread: a
    second thread running torch work in the process would slow every forward (`service.model_thread`)."""
    import torch

    variants = config.variants()
    executor = model_thread(
        max(v.threads or torch.get_num_threads() for v in variants), "model", max(v.nice for v in variants)
    )
    servers: dict[str, dict[str, LocalHandle]] = {}
    for route, task in config.tasks().items():
        server_class = route_entry(route).resolve("server").func_or_class
        servers[route] = {}
        for name, variant in task.variants.items():
            server = server_class(*task.server_args(name), model_executor=executor)
            server.reconfigure(variant.batching.model_dump())  # a deployment gets it as user_config
            servers[route][name] = LocalHandle(server, variant.max_ongoing_requests + variant.max_queued_requests)
    return servers
