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
    `handle.shadow.remote(payload)` → awaitables."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.info = _LocalMethod(server.info)
        self.shadow = _LocalMethod(server.shadow)

    def remote(self, payload: Any) -> asyncio.Task:
        return asyncio.ensure_future(self.server(payload))


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
            servers[route][name] = LocalHandle(server)
    return servers
