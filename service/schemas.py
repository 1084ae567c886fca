"""Request and response bodies of the HTTP API (pydantic: 422 with the field's name when malformed)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from pruning.core.plan import PlanSummary, PruningPlan
from service.config import BatchingConfig


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


# Text is stripped before it is checked, so a whitespace-only string is empty: the schema says so with a
# pattern (at least one non-space character), which clients and contract fuzzers read, not only min_length.
# The separators U+001C-001F are spelled out: Python's regex counts them as space, the server's (Rust) does
# not, and the pattern must mean the same to a Python fuzzer and to the server.
TEXT = r"[^\s\x1c-\x1f]"


class QARequest(Strict):
    question: str = Field(min_length=1, pattern=TEXT, description="the question")
    context: str = Field(min_length=1, pattern=TEXT, description="the text holding the answer")
    variant: str | None = Field(None, description="model variant (default: the config's default_variant)")
    top_k: int = Field(1, ge=1, le=20, description="answers to return, best first")


class Answer(BaseModel):
    answer: str
    score: float = Field(description="start logit + end logit of the span")
    start: int = Field(description="character offset of the answer in `context`")
    end: int = Field(description="character offset just past the answer")


class Served(BaseModel):
    """Which model served a request and how long the server spent on it."""

    variant: str
    model: str = Field(description="checkpoint the variant loaded")
    latency_ms: float = Field(description="server-side time from request arrival to response")
    inference_ms: float = Field(description="model time of the batch that served the request")


class QAResponse(Served):
    answer: str = Field(description="the best span; empty when the context holds no possible span")
    score: float | None = Field(description="start + end logit of the best span; null when there is no span")
    start: int
    end: int
    answers: list[Answer] = Field(description="top_k answers, best first (the first is the one above)")


class SummarizeRequest(Strict):
    text: str = Field(min_length=1, pattern=TEXT, description="the article to summarise")
    variant: str | None = None
    max_new_tokens: int | None = Field(None, ge=1, description="may lower the configured limit, never raise it")
    num_beams: int | None = Field(None, ge=1, description="may lower the configured beam width, never raise it")


class SummarizeResponse(Served):
    summary: str
    input_tokens: int
    output_tokens: int


class VariantInfo(BaseModel):
    """One served variant, as `/v1/models` reports it (the load test reads it back with this model)."""

    task: str = Field(description="route: qa or summarize")
    variant: str
    checkpoint: str
    is_default: bool
    compact: bool
    source: str | None = Field(description="the dense checkpoint a compact one was made from")
    plan: PruningPlan | None = Field(description="kept heads and FFN units per layer (None: dense)")
    plan_summary: PlanSummary | None = Field(description="per stack: heads and FFN units kept of total")
    plan_digest: str | None = Field(description="content hash of the plan: equal digests, equal plans")
    params: int
    flops_ratio: float | None
    device: str
    dtype: str = Field(description="the numerics the model runs in (auto resolved)")
    runtime: str
    compiled: bool = Field(False, description="torch.compile'd at replica start")
    batching: BatchingConfig
    replica_pid: int
    threads: int = Field(description="intra-op threads the replica's model runs with")


class ErrorBody(BaseModel):
    error: str = Field(description="what is wrong, in words a user can act on")
