"""The HTTP layer: validates, routes to the variant's deployment, maps outcomes to status codes.

Routes: POST /v1/qa, POST /v1/summarize, GET /v1/models, /healthz, /readyz, /metrics, /docs.
Status codes: 422 malformed body, 413 over token limits, 404 unknown variant, 503 + Retry-After
when the variant's queue is full, 504 past the request deadline. Nothing a user sends gives a 500.

No `from __future__ import annotations` here: FastAPI reads the route signatures' types at runtime.
"""

import asyncio
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from ray import serve
from ray.serve.exceptions import BackPressureError

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
from service.summarize_engine import SummaryInput

api = FastAPI(
    title="blockserve",
    description="Dense and block-pruned transformers side by side: extractive QA and summarization.",
    version="0.1.0",
)
ERRORS = {code: {"model": ErrorBody} for code in (404, 413, 422, 503, 504)}


@api.exception_handler(RequestValidationError)
async def _malformed(request: Request, error: RequestValidationError) -> JSONResponse:
    parts = [
        f"{'.'.join(str(p) for p in item['loc'] if p != 'body') or 'body'}: {item['msg']}" for item in error.errors()
    ]
    return JSONResponse({"error": "; ".join(parts)}, status_code=422)


def _error(status: int, message: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers or None)


@serve.deployment
@serve.ingress(api)
class Ingress:
    def __init__(self, config: dict, servers: dict[str, dict[str, Any]]) -> None:
        self.config = AppConfig.model_validate(config)
        self.servers = servers  # route → variant → DeploymentHandle
        self.collector = _metrics_collector()

    async def _call(self, route: str, variant: str | None, payload: Any) -> tuple[str, Outcome | JSONResponse]:
        task = self.config.tasks()[route]
        name = variant or task.default_variant
        if name not in self.servers[route]:
            known = ", ".join(sorted(self.servers[route]))
            return name, _error(404, f"unknown variant {name!r} for /v1/{route} (configured: {known})")
        response = self.servers[route][name].remote(payload)

        async def result() -> Outcome:
            return await response

        try:
            return name, await asyncio.wait_for(result(), timeout=task.limits.request_timeout_s)
        except TimeoutError:
            response.cancel()
            self.collector.reject.remote(route, name, "deadline")
            return name, _error(504, f"no answer within the {task.limits.request_timeout_s:g} s deadline")
        except BackPressureError:
            self.collector.reject.remote(route, name, "queue_full")
            return name, _error(503, f"variant {name!r} is at capacity; retry shortly", **{"Retry-After": "1"})

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
            status, response = outcome.status, _error(outcome.status, outcome.error)
        else:
            status, response = 200, None
        seconds = self._finish(route, name, status, started)
        return response if response is not None else (name, outcome, seconds)

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
        best = answers[0] if answers else Answer(answer="", score=float("-inf"), start=0, end=0)
        return QAResponse(
            variant=variant, model=self.config.qa.variants[variant].checkpoint, latency_ms=1000 * seconds,
            inference_ms=1000 * outcome.model_seconds, answer=best.answer, score=best.score, start=best.start, end=best.end, answers=answers,
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

    @api.get("/metrics")
    async def metrics(self) -> Response:
        return Response(await self.collector.render.remote(), media_type=CONTENT_TYPE_LATEST)
