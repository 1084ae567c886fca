"""`service.app:build_app`: the Ray Serve application builder named by `deploy/serve.yaml`."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from ray.serve import Application

from pruning.core.errors import BlockserveError
from pruning.core.plan import describe_validation_error
from pruning.core.task_registry import route_entry
from service.config import AppConfig
from service.ingress import Ingress

log = logging.getLogger(__name__)


class ConfigError(BlockserveError):
    """The service's config file is unreadable or invalid (the message names the field)."""


def build_app(args: dict[str, Any]) -> Application:
    """Validate the config (errors name the field) and bind one deployment per (task, variant) behind the
    ingress — or, with `colocate`, only the ingress, which builds the model servers in its own process."""
    config = AppConfig.model_validate(args)
    log.info("blockserve topology: %s", config.topology())
    servers = None if config.colocate else _model_deployments(config)
    # Apart from the models, the ingress only validates and routes: it reserves no CPU the model replicas
    # could use, and holds every request the models can take, so requests wait in the models' batch queues,
    # not in the proxy; the proxy holds only a few more (`proxy_queue`) for when the ingress itself falls behind.
    return Ingress.options(
        name="ingress",
        ray_actor_options=config.colocated_resources() if config.colocate else {"num_cpus": 0},
        max_ongoing_requests=config.ingress_capacity(),
        max_queued_requests=config.proxy_queue,
    ).bind(config.model_dump(), servers)


def _model_deployments(config: AppConfig) -> dict[str, dict[str, Application]]:
    """route → variant → its model deployment, scaled and resourced as the variant's config says."""
    servers: dict[str, dict[str, Application]] = {}
    for route, task in config.tasks().items():
        server = route_entry(route).resolve("server")
        servers[route] = {
            name: server.options(
                name=f"{route}-{name}",
                **variant.scaling_options(),
                ray_actor_options={"num_cpus": variant.num_cpus, "num_gpus": variant.num_gpus},
                max_ongoing_requests=variant.max_ongoing_requests,
                max_queued_requests=variant.max_queued_requests,
                user_config=variant.batching.model_dump(),
            ).bind(*task.server_args(name))
            for name, variant in task.variants.items()
        }
    return servers


def read_serve_config(path: str | Path) -> tuple[dict[str, Any], AppConfig]:
    """A Ray Serve config file and the validated `args` of its blockserve application."""
    import yaml

    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"{path}: {error}") from None
    applications = document.get("applications") if isinstance(document, dict) else None
    ours = [app for app in applications or [] if app.get("import_path") == "service.app:build_app"]
    if not ours:
        raise ConfigError(f"{path} has no application with import_path service.app:build_app")
    try:
        return document, AppConfig.model_validate(ours[0].get("args") or {})
    except ValidationError as error:
        raise ConfigError(
            f"{path}: applications[{ours[0].get('name')}].args: {describe_validation_error(error)}"
        ) from None


@contextmanager
def environment_restored() -> Iterator[None]:
    """The process environment as it was, after the block: `run_service` sets `http_front`'s variables for the
    Ray it starts, and a process that starts Ray again (tests, benchmarks, `demo --once`) must start the next
    one from that one's config, not from the last."""
    import os

    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def prepare_ray_environment(config: AppConfig) -> None:
    """Set what `config.http_front` needs in this process's environment, which the Ray it starts inherits.

    Call before `ray.init`; a variable the user set wins. Joining a running cluster, its own environment
    decides (a warning says so when it would differ).
    """
    import os

    import ray

    wanted = config.ray_environment()
    if ray.is_initialized() or os.environ.get("RAY_ADDRESS"):
        if any(os.environ.get(name) != value for name, value in wanted.items()):
            log.warning("http_front %s needs %s in the Ray cluster's environment; a running cluster keeps its own",
                        config.http_front, wanted)  # fmt: skip
        return
    for name, value in wanted.items():
        os.environ.setdefault(name, value)


def run_service(document: dict[str, Any], config: AppConfig, *, block: bool = True, log_to_driver: bool = True) -> str:
    """Start Ray (or join RAY_ADDRESS), deploy the application with the file's HTTP options; returns its URL.

    With `block`, serves until Ctrl-C and then shuts the application down; without `log_to_driver`, the
    replicas' logs stay in Ray's log files.
    """
    import time

    import ray
    from ray import serve

    http = document.get("http_options") or {}
    host, port = http.get("host", "127.0.0.1"), int(http.get("port", 8000))
    application = next(app for app in document["applications"] if app.get("import_path") == "service.app:build_app")
    prepare_ray_environment(config)
    ray.init(ignore_reinit_error=True, include_dashboard=False, log_to_driver=log_to_driver)
    serve.start(http_options={"host": host, "port": port})
    serve.run(
        build_app(config.model_dump()),
        name=application.get("name", "blockserve"),
        route_prefix=application.get("route_prefix", "/"),
    )
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    if block:
        print(f"serving on {url} (docs: {url}/docs, metrics: {url}/metrics); Ctrl-C stops", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            serve.shutdown()
    return url
