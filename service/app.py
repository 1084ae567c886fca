"""`service.app:build_app`: the Ray Serve application builder named by `deploy/serve.yaml`."""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from service.config import AppConfig
from service.deployments import QAServer, SummarizeServer
from service.ingress import Ingress

SERVERS = {"qa": QAServer, "summarize": SummarizeServer}


def build_app(args: dict[str, Any]) -> Application:
    """Validate the config (errors name the field) and bind one deployment per (task, variant) behind the ingress."""
    config = AppConfig.model_validate(args)
    servers: dict[str, dict[str, Application]] = {}
    for route, task in config.tasks().items():
        servers[route] = {}
        for name, variant in task.variants.items():
            servers[route][name] = (
                SERVERS[route]
                .options(
                    name=f"{route}-{name}",
                    num_replicas=variant.replicas,
                    ray_actor_options={"num_cpus": variant.num_cpus, "num_gpus": variant.num_gpus},
                    max_ongoing_requests=variant.max_ongoing_requests,
                    max_queued_requests=variant.max_queued_requests,
                    user_config=variant.batching.model_dump(),
                )
                .bind(name, variant.model_dump(), task.limits.model_dump(), task.generation.model_dump())
            )
    return Ingress.options(name="ingress").bind(config.model_dump(), servers)
