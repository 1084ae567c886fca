"""Starts the service from a Serve config for a one-command load test, and waits until it is ready."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from pruning.core.errors import BlockserveError

log = logging.getLogger("blockserve.loadtest")


class ServiceError(BlockserveError):
    """The service under test cannot be reached or is not ready in time."""


def wait_ready(url: str, timeout_s: float) -> None:
    """Poll `GET /readyz` until every replica answers (200) or `timeout_s` passes."""
    deadline, last = time.monotonic() + timeout_s, "no answer"
    while time.monotonic() < deadline:
        try:
            response = httpx.get(f"{url}/readyz", timeout=10)
            if response.status_code == 200:
                return
            last = f"{response.status_code} {response.text[:200]}"
        except httpx.HTTPError as error:
            last = f"{type(error).__name__}: {error}"
        time.sleep(1.0)
    raise ServiceError(f"{url} is not ready after {timeout_s:g} s (last: {last})")


@contextmanager
def served(config: Path, port: int | None = None, ready_timeout_s: float = 600.0) -> Iterator[str]:
    """The application of `config` running on Ray Serve (this process starts Ray); yields its URL."""
    import ray
    from ray import serve

    from service.app import environment_restored, read_serve_config, run_service

    document, app_config = read_serve_config(config)
    if port is not None:
        document = {**document, "http_options": {**(document.get("http_options") or {}), "port": port}}
    log.info("starting the service of %s (Ray Serve, models load in the replicas)", config)
    started = time.perf_counter()
    # A busy machine (the load generator shares it) can take longer than Ray's default 5 s to start the proxy.
    with environment_restored():
        os.environ.setdefault("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "60")
        try:
            # Replicas' logs (one line per request) stay in Ray's log files instead of interleaving with progress.
            url = run_service(document, app_config, block=False, log_to_driver=False)
            wait_ready(url, ready_timeout_s)
            log.info("service ready at %s after %.0f s", url, time.perf_counter() - started)
            yield url
        finally:
            serve.shutdown()
            ray.shutdown()
