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
