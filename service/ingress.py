"""The HTTP layer: validates, routes to the variant's deployment, maps outcomes to status codes.

Routes: POST /v1/qa, POST /v1/summarize, GET /v1/models, /healthz, /readyz, /metrics, /docs.
Status codes: 422 malformed body, 413 over token limits, 404 unknown variant, 503 + Retry-After
when the variant's queue is full or its expected wait is over `max_queue_wait_s` (then, until the
replica expects to admit again, the ingress refuses by itself: `service.admission`), 504 past the
request deadline. Nothing a user sends gives a 500.

No `from __future__ import annotations` here: FastAPI reads the route signatures' types at runtime.
"""

import asyncio
import copy
import importlib
import math
import random
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError

from service.admission import RefusalHold
from service.colocated import colocated_servers
from service.config import AppConfig
from service.deployments import Outcome, _metrics_collector
from service.qa_engine import QAInput
from service.schemas import (
    Answer,
    ErrorBody,
    QARequest,
    QAResponse,
    SummarizeRequest,
    SummarizeResponse,
    VariantInfo,
)
from service.shadow import COMPARE
from service.summarize_engine import SummaryInput

api = FastAPI(
    title="blockserve",
    description="Dense and block-pruned transformers side by side: extractive QA and summarization.",
    version="0.1.0",
)
ERRORS = {code: {"model": ErrorBody} for code in (404, 413, 422, 503, 504)}


# The request texts are stripped, then need one non-space character: say that, not pydantic's regex.
_PLAIN_MESSAGES = {
    "string_too_short": "must not be empty or only white space",
    "string_pattern_mismatch": "must not be empty or only white space",
}


@api.exception_handler(RequestValidationError)
async def _malformed(request: Request, error: RequestValidationError) -> JSONResponse:
    parts = [
        f"{'.'.join(str(p) for p in item['loc'] if p != 'body') or 'body'}: "
        f"{_PLAIN_MESSAGES.get(item['type'], item['msg'])}"
        for item in error.errors()
    ]
    return JSONResponse({"error": "; ".join(parts)}, status_code=422)


def _error(status: int, message: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers or None)


# Ray Serve freezes `api` (and this class) into a by-value pickle: in the replica, their functions see
# copies of this module's globals, not the module. What the replica's config decides (the body limit,
# the schema's bounds) is kept in the imported module itself, which every copy finds by name.
_SERVED: dict[str, Any] = {}


def _served() -> dict[str, Any]:
    return importlib.import_module(__name__)._SERVED


def _served_openapi() -> dict:
    served = _served()
    if "openapi" not in served:
        schema = get_openapi(title=api.title, version=api.version, description=api.description, routes=api.routes)
        config = served.get("config")
        if config is None:
            return schema  # not serving (e.g. documentation built offline): the static schema
        served["openapi"] = with_config_bounds(schema, config)
    return served["openapi"]


api.openapi = _served_openapi


@api.middleware("http")
async def _body_size_limit(request: Request, call_next):
    """413 before parsing for a body over the limit, by its Content-Length (a chunked body without one
    is read, then measured: Starlette replays it to the route)."""
    config = _served().get("config")
    limit = config.max_request_bytes if config is not None else None
    if limit is not None and request.method in ("POST", "PUT", "PATCH"):
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return _error(413, f"request body of {declared} bytes is over the {limit} byte limit")
        if declared is None and len(await request.body()) > limit:
            return _error(413, f"request body is over the {limit} byte limit")
    return await call_next(request)


def with_config_bounds(schema: dict, config: AppConfig) -> dict:
    """The OpenAPI schema with the bounds the running config sets on request fields, so a client (or a
    fuzzer) that follows the schema never gets a 422 for a value the schema allowed."""
    schema = copy.deepcopy(schema)
    components = schema["components"]["schemas"]
    for model, task in (("QARequest", config.qa), ("SummarizeRequest", config.summarize)):
        if task is not None and model in components:  # the variants this server has, by name
            field = components[model]["properties"]["variant"]
            for option in field.get("anyOf", [field]):
                if option.get("type") == "string":
                    option["enum"] = sorted(task.variants)
    if config.summarize is not None:
        fields = schema["components"]["schemas"]["SummarizeRequest"]["properties"]
        for name, bound in (("num_beams", config.summarize.generation.num_beams),
                            ("max_new_tokens", config.summarize.generation.max_new_tokens)):  # fmt: skip
            for option in fields[name].get("anyOf", [fields[name]]):
                if option.get("type") == "integer":
                    option["maximum"] = bound
            fields[name]["description"] = f"{fields[name].get('description', '')} (this server: at most {bound})"
    return schema


@serve.deployment
@serve.ingress(api)
class Ingress:
    def __init__(self, config: dict, servers: dict[str, dict[str, Any]] | None) -> None:
        self.config = AppConfig.model_validate(config)
        # route → variant → DeploymentHandle, or with `colocate` a handle on a model server in this process
        self.servers = servers if servers is not None else colocated_servers(self.config)
        self.collector = _metrics_collector()
        self._shadows: dict[tuple[str, str], int] = {}  # (route, variant) → shadow requests in flight
        self._shadow_tasks: set[asyncio.Task] = set()
        self._random = random.Random()
        self._hold = RefusalHold()
        _served()["config"] = self.config

    async def _call(self, route: str, variant: str | None, payload: Any) -> tuple[str, Outcome | JSONResponse]:
        task = self.config.tasks().get(route)
        if task is None:  # the route exists in the API, but this server was configured without the task
            configured = ", ".join(f"/v1/{name}" for name in self.config.tasks())
            return variant or "", _error(404, f"this server does not serve /v1/{route} (it serves {configured})")
        name = variant or task.default_variant
        if name not in self.servers[route]:
            known = ", ".join(sorted(self.servers[route]))
            return name, _error(404, f"unknown variant {name!r} for /v1/{route} (configured: {known})")
        held = self._hold.remaining_s((route, name))
        if held is not None:  # its replicas said they cannot take work yet: no hop to hear it again
            self.collector.reject.remote(route, name, "overloaded_at_ingress")
            message = f"variant {name!r} is overloaded; it expects to admit requests again in {held:.2f} s"
            return name, _error(503, message, **{"Retry-After": str(max(1, math.ceil(held)))})
        deadline = time.perf_counter() + task.limits.request_timeout_s
        for attempt in range(2):  # inference is idempotent: a request whose replica died is retried once
            response = self.servers[route][name].remote(payload)

            async def result(response=response) -> Outcome:
                return await response

            try:
                remaining = max(0.001, deadline - time.perf_counter())
                outcome = await asyncio.wait_for(result(), timeout=remaining)
                if outcome.admit_again_in_s is not None:
                    self._hold.refused((route, name), outcome.admit_again_in_s)
                return name, outcome
            except TimeoutError:
                response.cancel()
                self.collector.reject.remote(route, name, "deadline")
                return name, _error(504, f"no answer within the {task.limits.request_timeout_s:g} s deadline")
            except BackPressureError:
                self.collector.reject.remote(route, name, "queue_full")
                return name, _error(503, f"variant {name!r} is at capacity; retry shortly", **{"Retry-After": "1"})
            except RayActorError:  # the replica died or became unreachable mid-request
                self.collector.reject.remote(route, name, "replica_failed" if attempt else "replica_retried")
        message = f"variant {name!r} lost its replica twice while serving this request; retry shortly"
        return name, _error(503, message, **{"Retry-After": "1"})

    def _finish(self, route: str, variant: str, status: int, started: float) -> float:
        seconds = time.perf_counter() - started
        self.collector.observe_request.remote(route, variant, status, seconds)
        return seconds

    async def _serve(self, route: str, variant: str | None, payload: Any) -> tuple[str, Any, float] | JSONResponse:
        """(variant, outcome, server seconds) of a served request, or the error response; both are counted."""
        started = time.perf_counter()
        name, outcome = await self._call(route, variant, payload)
        if isinstance(outcome, JSONResponse):
            status, response = outcome.status_code, outcome
        elif outcome.status != 200:
            headers = (
                {} if outcome.retry_after_s is None else {"Retry-After": str(max(1, math.ceil(outcome.retry_after_s)))}
            )
            status, response = outcome.status, _error(outcome.status, outcome.error, **headers)
        else:
            status, response = 200, None
        seconds = self._finish(route, name, status, started)
        if response is None:
            self._maybe_shadow(route, name, payload, outcome)
            return name, outcome, seconds
        return response

    def _maybe_shadow(self, route: str, name: str, payload: Any, outcome: Outcome) -> None:
        """Sample this answered request for a shadow comparison; the task runs after the response."""
        shadow = self.config.tasks()[route].variants[name].shadow
        if shadow is None or self._random.random() >= shadow.fraction:
            return
        key = (route, name)
        if self._shadows.get(key, 0) >= shadow.max_in_flight:  # load first: shadows are the first to go
            self.collector.drop_shadow.remote(route, name, "in_flight_cap")
            return
        self._shadows[key] = self._shadows.get(key, 0) + 1
        task = asyncio.get_running_loop().create_task(self._shadow(route, name, shadow.against, payload, outcome))
        self._shadow_tasks.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._shadow_tasks.discard)

    async def _shadow(self, route: str, name: str, against: str, payload: Any, primary: Outcome) -> None:
        try:
            # The reference's idle lane: never in line before a request, never on CPU a request wants.
            reference = await self.servers[route][against].shadow.remote(payload)
            if reference.status != 200:
                self.collector.drop_shadow.remote(route, name, "reference_refused")
                return
            scores = COMPARE[route](payload, primary.result, reference.result)
            self.collector.observe_shadow.remote(route, name, against, scores)
        except BackPressureError:
            self.collector.drop_shadow.remote(route, name, "reference_refused")
        except Exception:  # noqa: BLE001 - a shadow must never surface: count it and move on
            self.collector.drop_shadow.remote(route, name, "error")
        finally:
            self._shadows[(route, name)] -= 1

    @api.post("/v1/qa", response_model=QAResponse, responses=ERRORS)
    async def qa(self, body: QARequest):
        served = await self._serve("qa", body.variant, QAInput(body.question, body.context, body.top_k))
        if isinstance(served, JSONResponse):
            return served
        variant, outcome, seconds = served
        answers = [
            Answer(answer=body.context[s.start : s.end], score=s.score, start=s.start, end=s.end)
            for s in outcome.result
        ]
        best = answers[0] if answers else None  # no span fits (e.g. a context of only punctuation)
        return QAResponse(
            variant=variant, model=self.config.qa.variants[variant].checkpoint, latency_ms=1000 * seconds,
            inference_ms=1000 * outcome.model_seconds, answer=best.answer if best else "",
            score=best.score if best else None, start=best.start if best else 0, end=best.end if best else 0,
            answers=answers,
        )  # fmt: skip

    @api.post("/v1/summarize", response_model=SummarizeResponse, responses=ERRORS)
    async def summarize(self, body: SummarizeRequest):
        payload = SummaryInput(body.text, body.max_new_tokens, body.num_beams)
        served = await self._serve("summarize", body.variant, payload)
        if isinstance(served, JSONResponse):
            return served
        variant, outcome, seconds = served
        summary = outcome.result
        return SummarizeResponse(
            variant=variant, model=self.config.summarize.variants[variant].checkpoint, latency_ms=1000 * seconds,
            inference_ms=1000 * outcome.model_seconds, summary=summary.text, input_tokens=summary.input_tokens, output_tokens=summary.output_tokens,
        )  # fmt: skip

    @api.get("/v1/models", response_model=list[VariantInfo])
    async def models(self) -> list[VariantInfo]:
        infos = []
        for route, variants in self.servers.items():
            default = self.config.tasks()[route].default_variant
            for name, handle in variants.items():
                infos.append(await handle.info.remote(is_default=name == default))
        return infos

    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @api.get("/readyz")
    async def readyz(self):
        try:
            for variants in self.servers.values():
                await asyncio.wait_for(asyncio.gather(*(h.info.remote() for h in variants.values())), timeout=5)
        except Exception as error:  # any replica not answering means not ready, whatever the cause
            return _error(503, f"not ready: {error}", **{"Retry-After": "5"})
        return {"status": "ready"}

    @api.get(
        "/metrics",
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}},
                         "description": "Prometheus text exposition format"}},
    )  # fmt: skip
    async def metrics(self) -> Response:
        return Response(await self.collector.render(), media_type=CONTENT_TYPE_LATEST)
