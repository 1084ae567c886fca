import pytest
from pydantic import ValidationError

from service.config import LIGHT_FRONT_NICE, AppConfig, VariantConfig


def _config(**overrides):
    data = {
        "qa": {
            "default_variant": "pruned",
            "variants": {"dense": {"checkpoint": "models/qa"}, "pruned": {"checkpoint": "models/qa-pruned"}},
        }
    }
    data["qa"].update(overrides)
    return data


def test_minimal_config_fills_defaults():
    config = AppConfig.model_validate(_config())
    assert list(config.tasks()) == ["qa"]
    pruned = config.qa.variants["pruned"]
    assert pruned.runtime == "torch" and pruned.device == "auto" and pruned.replicas == 1
    # Batches must be able to fill: Ray Serve's default max_ongoing_requests (5) would cap them.
    assert pruned.max_ongoing_requests >= pruned.batching.max_batch_size


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"default_variant": "fast"}, "default_variant 'fast' is not one of ['dense', 'pruned']"),
        ({"limits": {"window_tokens": 128, "window_stride": 128}}, "window_stride (128) must be smaller"),
        ({"limits": {"max_input_tokens": 0}}, "qa.limits.max_input_tokens"),
        ({"variants": {}}, "qa.variants"),
        ({"generation": {"min_new_tokens": 9, "max_new_tokens": 8}}, "min_new_tokens (9) exceeds"),
        ({"unknown": 1}, "qa.unknown"),
        (
            {"variants": {"dense": {"checkpoint": "x", "max_ongoing_requests": 4}}, "default_variant": "dense"},
            "max_ongoing_requests (4) is below batching.max_batch_size (8)",
        ),
        (
            {
                "variants": {"dense": {"checkpoint": "x", "batching": {"max_queue_wait_s": 30}}},
                "default_variant": "dense",
            },
            "max_queue_wait_s (30) must be below limits.request_timeout_s (30)",
        ),
        (
            {
                "variants": {"dense": {"checkpoint": "x", "shadow": {"fraction": 0.1, "against": "ref"}}},
                "default_variant": "dense",
            },
            "shadow.against: 'ref' is not a variant of this task",
        ),
        (
            {
                "variants": {"dense": {"checkpoint": "x", "shadow": {"fraction": 0, "against": "dense"}}},
                "default_variant": "dense",
            },
            "shadow.fraction",
        ),
    ],
)
def test_invalid_config_names_the_field(overrides, message):
    with pytest.raises(ValidationError) as error:
        AppConfig.model_validate(_config(**overrides))
    located = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.value.errors())
    assert message in located


def test_variant_fields_are_checked():
    data = _config()
    data["qa"]["variants"]["dense"]["runtime"] = "tensorrt"
    with pytest.raises(ValidationError, match="runtime"):
        AppConfig.model_validate(data)


def test_at_least_one_task():
    with pytest.raises(ValidationError, match="at least one"):
        AppConfig.model_validate({})


def test_the_shipped_serve_yaml_is_valid():
    from service.app import read_serve_config
    from tests.factories import ROOT

    document, config = read_serve_config(ROOT / "deploy" / "serve.yaml")
    assert set(config.tasks()) == {"qa", "summarize"}
    assert document["applications"][0]["import_path"] == "service.app:build_app"


def test_serve_command_names_the_bad_field(tmp_path, capsys):
    from blockserve.cli import main

    config = tmp_path / "serve.yaml"
    config.write_text(
        "applications:\n  - name: blockserve\n    import_path: service.app:build_app\n    args:\n"
        "      qa: {default_variant: fast, variants: {dense: {checkpoint: x}}}\n"
    )
    assert main(["serve", str(config)]) == 2
    err = capsys.readouterr().err
    assert "applications[blockserve].args: qa: default_variant 'fast' is not one of ['dense']" in err
    config.write_text("applications: []\n")
    assert main(["serve", str(config)]) == 2
    assert "no application with import_path service.app:build_app" in capsys.readouterr().err


def test_onnx_runtime_is_for_qa_only():
    data = {"summarize": {"default_variant": "d", "variants": {"d": {"checkpoint": "x", "runtime": "onnx"}}}}
    with pytest.raises(ValidationError, match="only 'torch' serves summarization"):
        AppConfig.model_validate(data)


def test_ingress_holds_every_request_the_models_can_hold():
    # Fewer, and the surplus would wait in Ray's HTTP proxy: invisible to the metrics, never batched.
    data = _config()
    data["qa"]["variants"]["dense"].update(max_ongoing_requests=16, max_queued_requests=10, replicas=2)
    data["qa"]["variants"]["pruned"].update(autoscaling={"min_replicas": 1, "max_replicas": 3})
    config = AppConfig.model_validate(data)
    assert config.ingress_capacity() == 2 * (16 + 10) + 3 * (32 + 64)


def test_threads_are_optional_and_positive():
    data = _config()
    assert AppConfig.model_validate(data).qa.variants["dense"].threads is None
    data["qa"]["variants"]["dense"]["threads"] = 0
    with pytest.raises(ValidationError, match="threads"):
        AppConfig.model_validate(data)


def test_the_ray_batch_timeout_is_read_as_a_fill_wait():
    config = AppConfig.model_validate(_config(variants={"dense": {"checkpoint": "x", "batching": {"batch_wait_timeout_s": 0.005}}},
                                              default_variant="dense"))  # fmt: skip
    batching = config.qa.variants["dense"].batching
    assert batching.max_wait_ms == 5.0 and batching.policy().max_wait_s == 0.005
    assert AppConfig.model_validate(_config()).qa.variants["dense"].batching.max_wait_ms == 0.0  # no wait by default


def test_the_padding_budget_reaches_the_batcher_and_rejects_nonsense():
    batching = {"checkpoint": "x", "batching": {"max_padding": 0.2}}
    config = AppConfig.model_validate(_config(variants={"dense": batching}, default_variant="dense"))
    assert config.qa.variants["dense"].batching.policy().max_padding == 0.2
    assert AppConfig.model_validate(_config()).qa.variants["dense"].batching.max_padding == 0.1  # on by default
    with pytest.raises(ValidationError, match="max_padding"):
        AppConfig.model_validate(
            _config(variants={"dense": {"checkpoint": "x", "batching": {"max_padding": -1}}}, default_variant="dense")
        )


def test_model_thread_priority_follows_the_http_front_unless_set_within_linux_bounds():
    # Colocated behind HAProxy the HTTP work beside the model is light: the model yields to it.
    assert AppConfig.model_validate(_config()).qa.variants["dense"].nice == LIGHT_FRONT_NICE
    # Behind Ray's Python proxy, or in a replica of its own, it keeps the process's priority.
    for topology in ({"http_front": "ray-proxy"}, {"colocate": False}):
        assert AppConfig.model_validate({**_config(), **topology}).qa.variants["dense"].nice == 0
    for given in (0, 7):
        lowered = {"dense": {"checkpoint": "x", "nice": given}}
        assert (
            AppConfig.model_validate(_config(variants=lowered, default_variant="dense")).qa.variants["dense"].nice
            == given
        )
    for bad in (-1, 20):
        with pytest.raises(ValidationError, match="nice"):
            AppConfig.model_validate(
                _config(variants={"dense": {"checkpoint": "x", "nice": bad}}, default_variant="dense")
            )


def test_colocated_variants_reserve_their_sum_and_do_not_scale_alone():
    data = {**_config(), "colocate": True}
    data["qa"]["variants"]["dense"].update(num_cpus=0.5)
    data["qa"]["variants"]["pruned"].update(num_cpus=1.5, num_gpus=0.25)
    assert AppConfig.model_validate(data).colocated_resources() == {"num_cpus": 2.0, "num_gpus": 0.25}
    data["qa"]["variants"]["pruned"].update(replicas=2)
    with pytest.raises(ValidationError, match="qa.variants.pruned: with colocate, variants live in the ingress"):
        AppConfig.model_validate(data)
    data["qa"]["variants"]["pruned"].pop("replicas")
    data["qa"]["variants"]["pruned"].update(autoscaling={"min_replicas": 1, "max_replicas": 3})
    with pytest.raises(ValidationError, match="remove replicas/autoscaling"):
        AppConfig.model_validate(data)
    data["colocate"] = False  # the same variants as deployments of their own are fine
    assert AppConfig.model_validate(data).colocate is False


def test_auto_topology_colocates_one_task_of_single_cpu_replicas_behind_haproxy():
    config = AppConfig.model_validate(_config())
    assert config.colocate is True and config.http_front == "haproxy"
    assert config.topology() == "models in the ingress replica, haproxy in front"
    # Anything that asks for a deployment of its own keeps one per variant, without an error.
    for asks in ({"replicas": 2}, {"autoscaling": {"min_replicas": 1, "max_replicas": 3}}, {"num_gpus": 0.5}):
        data = _config()
        data["qa"]["variants"]["pruned"].update(asks)
        assert AppConfig.model_validate(data).colocate is False, asks
    # A second task would share the one model thread (a long summary holding QA requests): deployments.
    both = {**_config(), "summarize": {"default_variant": "d", "variants": {"d": {"checkpoint": "bart"}}}}
    assert AppConfig.model_validate(both).colocate is False
    assert AppConfig.model_validate({**both, "colocate": True}).colocate is True  # asked for: honoured


def test_resolved_config_round_trips_to_the_same_topology():
    """The ingress and the model replicas re-read the dump: they must see what the driver resolved."""
    config = AppConfig.model_validate(_config())
    again = AppConfig.model_validate(config.model_dump())
    assert (again.colocate, again.http_front, again.qa.variants["dense"].nice) == (True, "haproxy", LIGHT_FRONT_NICE)
    assert again == config


def test_a_model_server_accepts_the_variant_its_config_accepted():
    """A small `max_ongoing_requests` with a batch to match is valid; the server, which gets the variant
    without its batching (that travels apart), must not re-check it against the default batch size."""
    variant = {"checkpoint": "/m", "max_ongoing_requests": 1, "batching": {"max_batch_size": 1}}
    config = AppConfig.model_validate({"qa": {"default_variant": "v", "variants": {"v": variant}}})
    _, server_variant, _, _ = config.qa.server_args("v")
    assert VariantConfig.from_server_args(server_variant).max_ongoing_requests == 1
    with pytest.raises(ValidationError, match="batches could never fill"):
        AppConfig.model_validate({"qa": {"default_variant": "v", "variants": {"v": {**variant, "batching": {}}}}})
