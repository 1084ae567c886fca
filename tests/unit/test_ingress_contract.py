"""The ingress's contract pieces that need no running service: the body limit and the served schema."""

import pytest
from fastapi.testclient import TestClient

import service.ingress as ingress
from service.config import AppConfig


@pytest.fixture
def client():
    config = AppConfig.model_validate({
        "qa": {"default_variant": "pruned", "variants": {"dense": {"checkpoint": "d"}, "pruned": {"checkpoint": "p"}}},
        "summarize": {"default_variant": "dense", "variants": {"dense": {"checkpoint": "s"}},
                      "generation": {"num_beams": 3, "max_new_tokens": 40}},
        "max_request_bytes": 4096,
    })  # fmt: skip
    served = ingress._served()
    saved = dict(served)
    served.clear()
    served["config"] = config
    yield TestClient(ingress.api)
    served.clear()
    served.update(saved)


def test_a_body_over_the_limit_is_413_before_it_is_parsed(client):
    response = client.post("/v1/qa", content=b"{" + b" " * 5000 + b"}", headers={"content-type": "application/json"})
    assert response.status_code == 413 and "5002 bytes is over the 4096 byte limit" in response.json()["error"]
    # A chunked body (no Content-Length) is measured as it is read.
    chunks = iter([b"{", b" " * 5000, b"}"])
    response = client.post("/v1/qa", content=chunks, headers={"content-type": "application/json"})
    assert response.status_code == 413 and "over the 4096 byte limit" in response.json()["error"]


def test_the_schema_carries_the_configs_bounds_and_variants(client):
    schema = client.get("/openapi.json").json()
    components = schema["components"]["schemas"]
    summarize = components["SummarizeRequest"]["properties"]
    assert {"type": "integer", "minimum": 1, "maximum": 3} in summarize["num_beams"]["anyOf"]
    assert any(o.get("maximum") == 40 for o in summarize["max_new_tokens"]["anyOf"])
    assert {"type": "string", "enum": ["dense", "pruned"]} in components["QARequest"]["properties"]["variant"]["anyOf"]
    assert {"type": "null"} in components["QAResponse"]["properties"]["score"]["anyOf"]
    assert "text/plain" in str(schema["paths"]["/metrics"]["get"]["responses"]["200"]["content"])


class _Replica:
    """A model deployment handle that answers from a list of outcomes and counts its calls."""

    def __init__(self, *outcomes) -> None:
        self.outcomes, self.calls = list(outcomes), 0

    def remote(self, payload):
        self.calls += 1
        outcome = self.outcomes.pop(0)

        class Response:
            def __await__(self):
                async def value():
                    return outcome

                return value().__await__()

            def cancel(self):
                pass

        return Response()


class _NoMetrics:
    def __getattr__(self, name):
        return type("Update", (), {"remote": staticmethod(lambda *args: None)})


# Ray Serve's ingress wrapper has an async __del__, which a bare instance never awaits.
_BARE = pytest.mark.filterwarnings("ignore:coroutine .*__del__.* was never awaited:RuntimeWarning")


def _bare_ingress(config: AppConfig, servers: dict):
    """The ingress class without Ray: its request logic with stand-in handles."""
    from service.admission import RefusalHold

    cls = ingress.Ingress.func_or_class
    obj = cls.__new__(cls)
    obj.config, obj.servers, obj.collector, obj._hold = config, servers, _NoMetrics(), RefusalHold()
    return obj


@_BARE
def test_a_route_the_server_was_not_configured_for_is_404_not_500():
    import asyncio

    config = AppConfig.model_validate({"qa": {"default_variant": "dense", "variants": {"dense": {"checkpoint": "d"}}}})
    bare = _bare_ingress(config, {"qa": {"dense": _Replica()}})
    _, response = asyncio.run(bare._call("summarize", None, object()))
    assert response.status_code == 404 and b"does not serve /v1/summarize (it serves /v1/qa)" in response.body


@_BARE
def test_after_a_refusal_the_ingress_refuses_by_itself_until_the_replica_expects_to_admit():
    import asyncio

    from service.deployments import Outcome

    config = AppConfig.model_validate({"qa": {"default_variant": "dense", "variants": {"dense": {"checkpoint": "d"}}}})
    replica = _Replica(Outcome(503, error="overloaded", retry_after_s=31.0, admit_again_in_s=30.0))
    bare = _bare_ingress(config, {"qa": {"dense": replica}})
    _, first = asyncio.run(bare._call("qa", None, object()))
    assert first.status == 503 and replica.calls == 1
    _, second = asyncio.run(bare._call("qa", None, object()))
    assert second.status_code == 503 and replica.calls == 1  # answered at the ingress: no hop
    assert int(second.headers["Retry-After"]) == 30 and b"admit requests again in" in second.body
