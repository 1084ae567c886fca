"""A real Ray Serve application on localhost with tiny local models: every route and error code."""

import asyncio
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import TypeAdapter

from pruning.artifacts.checkpoint import compact_checkpoint, load_checkpoint
from pruning.core.plan import PruningPlan
from pruning.core.structure import geometry_of
from pruning.runtime.candidates import torch_forward
from pruning.runtime.numerics import dtype_name, resolve_dtype
from service.config import LimitsConfig
from service.qa_engine import QAEngine, QAInput
from service.schemas import VariantInfo
from tests.factories import _CORPUS

pytestmark = pytest.mark.slow
URL = "http://127.0.0.1:8000"
LONG_CONTEXT = " ".join(_CORPUS * 3)


def _scrape_until(done, timeout_s: float = 15.0) -> dict:
    """`/metrics` as {(name, labels): value}, re-read until `done(samples)` holds or the timeout passes.

    The exposition is eventually consistent (`service.metrics_buffer`): an update from a replica can land
    one scrape after the response it belongs to.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        samples = {}
        for family in text_string_to_metric_families(httpx.get(f"{URL}/metrics", timeout=30).text):
            for sample in family.samples:
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        if done(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.25)


def _compact(dense_dir, out):
    config = load_checkpoint(dense_dir).model.config
    compact_checkpoint(dense_dir, PruningPlan.uniform(geometry_of(config), 0.5, 0.5), out)
    return out


@pytest.fixture(scope="module")
def app_config(dense_bert_dir, summarizer_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    variant = {"num_cpus": 0.1, "batching": {"max_batch_size": 8, "max_wait_ms": 200}}
    qa_limits = {"window_tokens": 48, "window_stride": 16, "max_question_tokens": 16, "max_input_tokens": 1000}
    return {
        "qa": {
            "default_variant": "pruned",
            "variants": {
                "dense": {"checkpoint": str(dense_bert_dir), **variant},
                "pruned": {
                    "checkpoint": str(_compact(dense_bert_dir, root / "qa-pruned")),
                    "runtime": "onnx",
                    **variant,
                },
            },
            "limits": qa_limits,
        },
        "summarize": {
            "default_variant": "dense",
            "variants": {
                "dense": {"checkpoint": str(summarizer_dir), **variant},
                "pruned": {"checkpoint": str(_compact(summarizer_dir, root / "sum-pruned")), **variant},
            },
            "limits": {"max_input_tokens": 120},
            "generation": {"num_beams": 2, "max_new_tokens": 8},
        },
        "max_request_bytes": 20_000,
    }


@pytest.fixture(scope="module")
def served(app_config):
    import os

    import ray
    from ray import serve

    from service.app import build_app

    # A busy 2-core machine can take longer than Ray's default 5 s to start the HTTP proxy.
    os.environ.setdefault("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "60")
    ray.init(num_cpus=4, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    serve.run(build_app(app_config), name="blockserve", route_prefix="/")
    yield app_config
    serve.shutdown()
    ray.shutdown()


def test_health_ready_and_models(served):
    assert httpx.get(f"{URL}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{URL}/readyz").status_code == 200
    models = httpx.get(f"{URL}/v1/models").json()
    by_name = {(m["task"], m["variant"]): m for m in models}
    assert set(by_name) == {("qa", "dense"), ("qa", "pruned"), ("summarize", "dense"), ("summarize", "pruned")}
    assert by_name[("qa", "pruned")]["compact"] and by_name[("qa", "pruned")]["is_default"]
    assert by_name[("qa", "pruned")]["params"] < by_name[("qa", "dense")]["params"]
    assert by_name[("qa", "pruned")]["flops_ratio"] > 1 and by_name[("qa", "dense")]["flops_ratio"] is None
    assert by_name[("qa", "pruned")]["runtime"] == "onnx" and by_name[("qa", "dense")]["runtime"] == "torch"
    assert "/v1/qa" in httpx.get(f"{URL}/openapi.json").json()["paths"]
    # The load test reads the same list with the service's own model, plans included.
    infos = {(i.task, i.variant): i for i in TypeAdapter(list[VariantInfo]).validate_python(models)}
    pruned, dense = infos[("qa", "pruned")], infos[("qa", "dense")]
    assert pruned.plan is not None and pruned.plan_digest == pruned.plan.digest()
    assert pruned.plan_summary == pruned.plan.summary() and pruned.plan_summary["encoder"].heads_kept > 0
    assert dense.plan is None and dense.plan_digest is None and dense.source is None
    # dtype auto: bfloat16 where the CPU has bf16 matrix units, else float32; ONNX Runtime runs the fp32 export.
    assert dense.dtype == dtype_name(resolve_dtype("auto", "cpu")) and pruned.dtype == "float32"


def test_qa_answers_equal_the_direct_models_best_span(served, dense_bert_dir):
    checkpoint = load_checkpoint(dense_bert_dir, dtype=resolve_dtype("auto", "cpu"))  # the served numerics
    limits = LimitsConfig.model_validate(served["qa"]["limits"])
    engine = QAEngine(torch_forward(checkpoint.model), checkpoint.tokenizer(), limits, 128)
    for context in (_CORPUS[1], LONG_CONTEXT):
        body = {"question": "Where is Fresno?", "context": context, "variant": "dense", "top_k": 2}
        response = httpx.post(f"{URL}/v1/qa", json=body, timeout=30)
        assert response.status_code == 200, response.text
        data = response.json()
        (expected, *_) = engine.answer([QAInput(body["question"], context)])[0]
        assert (data["start"], data["end"]) == (expected.start, expected.end)
        assert data["answer"] == context[expected.start : expected.end]
        assert data["variant"] == "dense" and data["model"] == str(dense_bert_dir) and data["latency_ms"] > 0
        assert len(data["answers"]) == 2
    # The default variant is the compact model on ONNX Runtime: same answer as the compact model in torch.
    compact = load_checkpoint(served["qa"]["variants"]["pruned"]["checkpoint"])
    reference = QAEngine(torch_forward(compact.model), compact.tokenizer(), limits, 128)
    for context in (_CORPUS[1], LONG_CONTEXT):
        default = httpx.post(f"{URL}/v1/qa", json={"question": "Where?", "context": context}, timeout=30).json()
        (expected, *_) = reference.answer([QAInput("Where?", context)])[0]
        assert default["variant"] == "pruned" and (default["start"], default["end"]) == (expected.start, expected.end)
        assert default["score"] == pytest.approx(expected.score, abs=1e-3)


def test_summarize(served):
    response = httpx.post(f"{URL}/v1/summarize", json={"text": _CORPUS[0], "variant": "pruned"}, timeout=30)
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["variant"] == "pruned" and isinstance(data["summary"], str) and 0 < data["output_tokens"] <= 8
    lowered = httpx.post(f"{URL}/v1/summarize", json={"text": _CORPUS[0], "max_new_tokens": 2}, timeout=30).json()
    assert lowered["output_tokens"] <= 2


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/v1/qa", {"question": "", "context": "x"}, 422, "question"),
        ("/v1/qa", {"context": "x"}, 422, "question: Field required"),
        ("/v1/qa", {"question": "q", "context": "x", "top_k": 0}, 422, "top_k"),
        ("/v1/qa", {"question": "q", "context": "x", "variant": "turbo"}, 404, "unknown variant 'turbo'"),
        ("/v1/qa", {"question": "q", "context": LONG_CONTEXT * 4}, 413, "the limit is 1000"),
        ("/v1/summarize", {"text": " \n\x1c "}, 422, "text: must not be empty or only white space"),
        ("/v1/summarize", {"text": "x", "num_beams": 5}, 422, "num_beams 5 is above this service's limit of 2"),
        ("/v1/summarize", {"text": LONG_CONTEXT}, 413, "the limit is 120"),
    ],
)
def test_user_errors_get_clear_4xx(served, path, body, status, message):
    response = httpx.post(f"{URL}{path}", json=body, timeout=30)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]


def test_concurrent_requests_share_a_batch_and_metrics_parse(served):
    async def burst():
        async with httpx.AsyncClient(timeout=60) as client:
            bodies = [{"question": f"Question {i}?", "context": _CORPUS[i % 5], "variant": "dense"} for i in range(6)]
            return await asyncio.gather(*(client.post(f"{URL}/v1/qa", json=b) for b in bodies))

    assert all(r.status_code == 200 for r in asyncio.run(burst()))
    too_long = {"question": "q", "context": LONG_CONTEXT * 4, "variant": "dense"}
    assert httpx.post(f"{URL}/v1/qa", json=too_long, timeout=30).status_code == 413
    labels = (("task", "qa"), ("variant", "dense"))
    rejected = ("blockserve_rejected_total", (("reason", "too_long"), *labels))
    served = ("blockserve_requests_total", (("status", "200"), *labels))

    def counted(samples) -> bool:
        return (
            samples.get(served, 0) >= 6
            and samples.get(rejected, 0) >= 1
            and (samples.get(("blockserve_batch_size_sum", labels), 0) >= 6)
        )

    samples = _scrape_until(counted)
    assert counted(samples), sorted(k for k in samples if "blockserve" in k[0])
    batches = samples[("blockserve_batch_size_count", labels)]
    assert samples[("blockserve_batch_size_sum", labels)] > batches  # at least one batch held more than one request
    assert samples[("blockserve_inference_seconds_count", labels)] == batches


@pytest.fixture(scope="module")
def tight(served, summarizer_dir):
    """A second application with a tiny queue and a deadline no request can meet."""
    from ray import serve

    from service.app import build_app

    # One running and one waiting, whichever topology `colocate: auto` picks (here: colocated).
    variant = {"checkpoint": str(summarizer_dir), "num_cpus": 0.1, "max_ongoing_requests": 1, "max_queued_requests": 1,
               "batching": {"max_batch_size": 1, "max_wait_ms": 0}}  # fmt: skip
    config = {
        "summarize": {
            "default_variant": "queue",
            "variants": {"queue": variant, "slow": variant},
            "generation": {"num_beams": 2, "max_new_tokens": 16, "no_repeat_ngram_size": 0},
        }
    }
    serve.run(build_app(config), name="tight", route_prefix="/tight")
    # The deadline is a task-wide limit: a third app gives `slow` a 1 ms one.
    config["summarize"]["limits"] = {"request_timeout_s": 0.001}
    config["summarize"]["default_variant"] = "slow"
    serve.run(build_app(config), name="deadline", route_prefix="/deadline")
    yield
    serve.delete("tight")
    serve.delete("deadline")


def test_full_queue_is_503_with_retry_after(tight):
    async def flood():
        async with httpx.AsyncClient(timeout=60) as client:
            body = {"text": _CORPUS[0] + " " + _CORPUS[3], "max_new_tokens": 16}
            return await asyncio.gather(*(client.post(f"{URL}/tight/v1/summarize", json=body) for _ in range(24)))

    responses = asyncio.run(flood())
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503} and 200 in statuses and 503 in statuses, statuses
    rejected = next(r for r in responses if r.status_code == 503)
    assert rejected.headers["Retry-After"] == "1" and "at capacity" in rejected.json()["error"]


def test_past_the_deadline_is_504(tight):
    response = httpx.post(f"{URL}/deadline/v1/summarize", json={"text": _CORPUS[0]}, timeout=30)
    assert response.status_code == 504 and "deadline" in response.json()["error"]
    # The replica survives: the next request with a normal deadline on the other app still works.
    assert httpx.post(f"{URL}/tight/v1/summarize", json={"text": _CORPUS[0]}, timeout=30).status_code == 200


def test_new_batching_knobs_reach_the_replicas(served):
    """Knobs travel in user_config → `reconfigure`. (`serve deploy` of an edited config file applies such a
    change in place; `serve.run` from Python, used here, may also restart replicas, so the pid is not checked.)"""
    from ray import serve

    from service.app import build_app

    def qa_dense():
        return next(m for m in httpx.get(f"{URL}/v1/models").json() if (m["task"], m["variant"]) == ("qa", "dense"))

    before = qa_dense()
    assert before["batching"]["max_batch_size"] == 8
    changed = {**served, "qa": {**served["qa"], "variants": {**served["qa"]["variants"]}}}
    changed["qa"]["variants"]["dense"] = {**served["qa"]["variants"]["dense"],
                                          "batching": {"max_batch_size": 2, "max_wait_ms": 50}}  # fmt: skip
    serve.run(build_app(changed), name="blockserve", route_prefix="/")
    after = qa_dense()
    assert after["batching"]["max_batch_size"] == 2 and after["batching"]["max_wait_ms"] == 50
    serve.run(build_app(served), name="blockserve", route_prefix="/")  # back to the module's config


def test_a_body_over_the_size_limit_is_413_before_parsing(served):
    response = httpx.post(f"{URL}/v1/qa", content=b"{" + b" " * 30_000 + b"}", timeout=30,
                          headers={"content-type": "application/json"})  # fmt: skip
    assert response.status_code == 413 and "20000 byte limit" in response.json()["error"]


def test_the_served_schema_carries_the_configs_bounds(served):
    schema = httpx.get(f"{URL}/openapi.json").json()
    beams = schema["components"]["schemas"]["SummarizeRequest"]["properties"]["num_beams"]
    assert any(option.get("maximum") == 2 for option in beams["anyOf"])
    score = schema["components"]["schemas"]["QAResponse"]["properties"]["score"]
    assert {"type": "null"} in score["anyOf"]
    assert "text/plain" in str(schema["paths"]["/metrics"]["get"]["responses"]["200"]["content"])


def test_the_api_contract_holds_under_schemathesis_with_all_checks(served):
    """Generated requests against the real service; every check schemathesis has, 0 failures."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis import checks

    checks.load_all_checks()
    every_check = checks.CHECKS.get_all()
    contract = schemathesis.config.SchemathesisConfig.from_path(Path(__file__).parents[2] / "schemathesis.toml")
    schema = schemathesis.openapi.from_url(f"{URL}/openapi.json", config=contract)
    failures = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.label for op in operations} >= {"POST /v1/qa", "POST /v1/summarize", "GET /metrics"}

    def property_test(operation):  # hypothesis's @given refuses defaulted arguments: bind by closure
        @given(case=operation.as_strategy())
        @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case):
            case.call_and_validate(base_url=URL, checks=every_check, timeout=60)

        return check

    for operation in operations:
        try:
            property_test(operation)()
        except Exception as error:  # collect every operation's failure, then report them together
            failures.append(f"{operation.label}: {error}"[:1500])
    assert not failures, "\n\n".join(failures)


@pytest.fixture(scope="module")
def admission(served, summarizer_dir):
    """An application whose variant refuses when more than 50 ms of work is queued."""
    from ray import serve

    from service.app import build_app

    variant = {"checkpoint": str(summarizer_dir), "num_cpus": 0.1, "max_ongoing_requests": 64,
               "batching": {"max_batch_size": 1, "max_queue_wait_s": 0.05}}  # fmt: skip
    config = {"summarize": {"default_variant": "only", "variants": {"only": variant},
                            "generation": {"num_beams": 2, "max_new_tokens": 16, "no_repeat_ngram_size": 0}}}  # fmt: skip
    serve.run(build_app(config), name="admission", route_prefix="/admission")
    yield
    serve.delete("admission")


def test_overload_is_refused_at_once_with_a_retry_after_from_the_queue(admission):
    body = {"text": _CORPUS[0] + " " + _CORPUS[3], "max_new_tokens": 16}
    assert httpx.post(f"{URL}/admission/v1/summarize", json=body, timeout=60).status_code == 200  # measured now

    async def flood():
        async with httpx.AsyncClient(timeout=60) as client:
            return await asyncio.gather(*(client.post(f"{URL}/admission/v1/summarize", json=body) for _ in range(16)))

    responses = asyncio.run(flood())
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503} and 200 in statuses and 503 in statuses, statuses
    refused = next(r for r in responses if r.status_code == 503)
    assert "overloaded" in refused.json()["error"] and int(refused.headers["Retry-After"]) >= 1
    samples = _scrape_until(lambda samples: any(("reason", "overloaded") in labels for _, labels in samples))
    assert any(("reason", "overloaded") in labels for _, labels in samples)


@pytest.fixture(scope="module")
def fragile(served, summarizer_dir):
    """Two replicas of one variant, so one can be killed while the other serves."""
    from ray import serve

    from service.app import build_app

    variant = {"checkpoint": str(summarizer_dir), "num_cpus": 0.1, "replicas": 2,
               "batching": {"max_batch_size": 2}}  # fmt: skip
    config = {"summarize": {"default_variant": "only", "variants": {"only": variant},
                            "generation": {"num_beams": 1, "max_new_tokens": 8}}}  # fmt: skip
    serve.run(build_app(config), name="fragile", route_prefix="/fragile")
    yield
    serve.delete("fragile")


def test_a_replica_killed_under_load_gives_no_500_and_the_service_recovers(fragile):
    import os
    import signal

    body = {"text": _CORPUS[1], "max_new_tokens": 8}
    pids = set()
    for _ in range(20):  # find both replicas' processes
        pids.add(next(m for m in httpx.get(f"{URL}/fragile/v1/models").json())["replica_pid"])
        if len(pids) == 2:
            break

    async def load():
        async with httpx.AsyncClient(timeout=120) as client:

            async def worker():
                return [(await client.post(f"{URL}/fragile/v1/summarize", json=body)).status_code for _ in range(10)]

            async def killer():
                await asyncio.sleep(0.5)
                os.kill(sorted(pids)[0], signal.SIGKILL)

            results = await asyncio.gather(*(worker() for _ in range(4)), killer())
            return [status for statuses in results[:4] for status in statuses]

    statuses = asyncio.run(load())
    assert len(statuses) == 40 and set(statuses) <= {200, 503}, statuses  # every request answered or refused
    for _ in range(60):  # Serve restarts the replica; the service answers without a restart of ours
        if httpx.post(f"{URL}/fragile/v1/summarize", json=body, timeout=60).status_code == 200:
            break
    else:
        raise AssertionError("no 200 after the replica was killed")


@pytest.fixture(scope="module")
def shadowed(served, dense_bert_dir):
    """QA where the 'pruned' variant is the dense checkpoint itself, shadowed against dense on every request."""
    from ray import serve

    from service.app import build_app

    base = {"checkpoint": str(dense_bert_dir), "num_cpus": 0.1}
    config = {"qa": {
        "default_variant": "same",
        "variants": {"dense": base, "same": {**base, "shadow": {"fraction": 1.0, "against": "dense", "max_in_flight": 64}}},
        "limits": served["qa"]["limits"],
    }}  # fmt: skip
    serve.run(build_app(config), name="shadowed", route_prefix="/shadowed")
    yield
    serve.delete("shadowed")


def test_shadow_agreement_reads_100_percent_for_a_variant_identical_to_its_reference(shadowed):
    for index in range(6):
        body = {"question": f"Question {index}?", "context": _CORPUS[index % 5]}
        assert httpx.post(f"{URL}/shadowed/v1/qa", json=body, timeout=60).status_code == 200
    labels = (("against", "dense"), ("task", "qa"), ("variant", "same"))
    key = ("blockserve_shadow_agreement_count", tuple(sorted((*labels, ("metric", "answer_f1")))))
    samples = _scrape_until(lambda samples: samples.get(key, 0) >= 6, timeout_s=30)  # comparisons finish later
    for metric in ("answer_f1", "span_exact_match"):
        series = tuple(sorted((*labels, ("metric", metric))))
        count = samples[("blockserve_shadow_agreement_count", series)]
        assert count >= 6 and samples[("blockserve_shadow_agreement_sum", series)] == count  # every one agrees


@pytest.fixture(scope="module")
def colocated(served, dense_bert_dir, summarizer_dir):
    """The same variants, but `colocate: true`: the models live in the ingress replica."""
    from ray import serve

    from service.app import build_app

    config = {
        "colocate": True,
        "qa": {**served["qa"], "default_variant": "pruned"},
        "summarize": {"default_variant": "dense", "variants": {"dense": {"checkpoint": str(summarizer_dir), "num_cpus": 0.1}},
                      "limits": served["summarize"]["limits"], "generation": served["summarize"]["generation"]},
    }  # fmt: skip
    serve.run(build_app(config), name="colocated", route_prefix="/colocated")
    yield config
    serve.delete("colocated")


def test_colocated_variants_answer_like_deployed_ones_from_one_process(colocated):
    models = httpx.get(f"{URL}/colocated/v1/models", timeout=30).json()
    assert {(m["task"], m["variant"]) for m in models} == {("qa", "dense"), ("qa", "pruned"), ("summarize", "dense")}
    assert len({m["replica_pid"] for m in models}) == 1  # one process: the ingress's
    assert httpx.get(f"{URL}/colocated/readyz", timeout=30).status_code == 200
    for variant in ("dense", "pruned"):
        body = {"question": "Where is Fresno?", "context": LONG_CONTEXT, "variant": variant, "top_k": 2}
        near = httpx.post(f"{URL}/colocated/v1/qa", json=body, timeout=30)
        far = httpx.post(f"{URL}/v1/qa", json=body, timeout=30)
        assert near.status_code == far.status_code == 200, near.text
        assert (near.json()["start"], near.json()["end"]) == (far.json()["start"], far.json()["end"])
        assert near.json()["answers"] == far.json()["answers"]
    summary = httpx.post(f"{URL}/colocated/v1/summarize", json={"text": _CORPUS[0]}, timeout=60)
    assert summary.status_code == 200 and summary.json()["variant"] == "dense"
    # The same errors as with deployed variants.
    unknown = httpx.post(f"{URL}/colocated/v1/qa", json={"question": "Q?", "context": "C.", "variant": "x"}, timeout=30)
    assert unknown.status_code == 404 and "unknown variant 'x'" in unknown.json()["error"]
    too_long = httpx.post(f"{URL}/colocated/v1/summarize", json={"text": LONG_CONTEXT * 3}, timeout=30)
    assert too_long.status_code == 413, too_long.text

    # Concurrent requests still batch: the colocated batcher is the same.
    async def burst():
        async with httpx.AsyncClient(timeout=60) as client:
            body = {"question": "Where?", "context": _CORPUS[2], "variant": "dense"}
            return await asyncio.gather(*(client.post(f"{URL}/colocated/v1/qa", json=body) for _ in range(8)))

    assert all(r.status_code == 200 for r in asyncio.run(burst()))
