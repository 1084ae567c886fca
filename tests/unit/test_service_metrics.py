from prometheus_client.parser import text_string_to_metric_families

from service.metrics import BatchObservation, ServiceMetrics


def _samples(metrics: ServiceMetrics) -> dict[tuple[str, tuple], float]:
    text = metrics.render().decode()
    return {
        _key(sample.name, **sample.labels): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _key(name: str, **labels: str) -> tuple[str, tuple]:
    return name, tuple(sorted(labels.items()))


def test_names_labels_and_values_parse_back():
    metrics = ServiceMetrics()
    metrics.observe_batch(BatchObservation("qa", "pruned", 3, 0.02, [0.001, 0.004, 0.009], [120, 300, 40]))
    metrics.observe_request("qa", "pruned", 200, 0.031)
    metrics.observe_request("qa", "dense", 413, 0.001)
    metrics.reject("qa", "dense", "too_long")
    samples = _samples(metrics)
    pruned = {"task": "qa", "variant": "pruned"}
    dense = {"task": "qa", "variant": "dense"}
    assert samples[_key("blockserve_batch_size_count", **pruned)] == 1
    assert samples[_key("blockserve_batch_size_sum", **pruned)] == 3
    assert samples[_key("blockserve_queue_wait_seconds_count", **pruned)] == 3
    assert samples[_key("blockserve_input_tokens_sum", **pruned)] == 460
    assert samples[_key("blockserve_inference_seconds_sum", **pruned)] == 0.02
    assert samples[_key("blockserve_request_duration_seconds_count", **pruned)] == 1
    assert samples[_key("blockserve_requests_total", **pruned, status="200")] == 1
    assert samples[_key("blockserve_requests_total", **dense, status="413")] == 1
    assert samples[_key("blockserve_rejected_total", **dense, reason="too_long")] == 1
    # Errors are counted, not timed as served requests.
    assert _key("blockserve_request_duration_seconds_count", **dense) not in samples


def test_latency_buckets_span_a_millisecond_to_thirty_seconds():
    metrics = ServiceMetrics()
    metrics.observe_request("summarize", "dense", 200, 25.0)
    samples = _samples(metrics)
    labels = {"task": "summarize", "variant": "dense"}
    assert samples[_key("blockserve_request_duration_seconds_bucket", **labels, le="0.001")] == 0
    assert samples[_key("blockserve_request_duration_seconds_bucket", **labels, le="20.0")] == 0
    assert samples[_key("blockserve_request_duration_seconds_bucket", **labels, le="30.0")] == 1
