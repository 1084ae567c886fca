"""A short real load test: the service started from a Serve config by the load test, tiny local models."""

import json

import pytest
import yaml

from loadtests.run import PayloadOptions, run_loadtest
from loadtests.runner import LoadSettings
from pruning.artifacts.checkpoint import compact_checkpoint, load_checkpoint
from pruning.core.plan import PruningPlan
from pruning.core.structure import geometry_of

pytestmark = pytest.mark.slow
PORT = 8040  # test_service uses 8000, test_demo 8010: modules start and stop their own Ray


@pytest.fixture(scope="module")
def serve_config(dense_bert_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("loadtest")
    config = load_checkpoint(dense_bert_dir).model.config
    pruned = root / "qa-pruned"
    compact_checkpoint(dense_bert_dir, PruningPlan.uniform(geometry_of(config), 0.5, 0.5), pruned)
    variant = {"num_cpus": 0.25, "threads": 1, "batching": {"max_batch_size": 4, "max_wait_ms": 0}}
    args = {
        "qa": {
            "default_variant": "pruned",
            "variants": {
                "dense": {"checkpoint": str(dense_bert_dir), **variant},
                "pruned": {"checkpoint": str(pruned), **variant},
            },  # fmt: skip
            "limits": {"window_tokens": 64, "window_stride": 16, "max_question_tokens": 16},
        }
    }
    document = {
        "http_options": {"host": "127.0.0.1", "port": PORT},
        "applications": [{"name": "blockserve", "route_prefix": "/", "import_path": "service.app:build_app", "args": args}],
    }  # fmt: skip
    path = root / "serve.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.fixture(scope="module")
def summary(serve_config, squad_file, tmp_path_factory):
    settings = LoadSettings(concurrency=(1, 3), rates=(15.0,), duration_s=1.0, min_requests=5, warmup=2, repeats=3)
    out = tmp_path_factory.mktemp("report")
    result = run_loadtest(
        settings, PayloadOptions(data=squad_file, tokens=64, count=8), out, config=serve_config, bench_repeats=3
    )
    return result, out


def test_every_window_is_answered_and_counted_by_the_server(summary):
    result, _ = summary
    levels = result.levels()
    assert {(r.variant, r.mode, r.level) for r in levels} == {
        (v, m, level) for v in ("dense", "pruned") for m, level in (("closed", 1), ("closed", 3), ("open", 15))
    }
    for level in levels:
        assert level.errors == 0, (level.variant, level.mode, level.level, level.error_examples)
        assert level.repeats == 3 and len(level.repeat_p50_ms) == 3
        # The server's histograms saw exactly the measured requests: warm-up and other variants excluded.
        assert level.server.requests == level.ok == level.requests
        assert level.server.request.p50 <= level.client.p50 * 1.15  # the server's time is inside the client's
        assert level.server.batch_size_mean >= 1
    closed = {r.variant: r for r in levels if (r.mode, r.level) == ("closed", 1)}
    assert all(r.requests >= 3 * 5 for r in closed.values())


def test_summary_has_the_three_ratios_and_the_bench_for_the_same_shape(summary):
    result, out = summary
    stored = json.loads((out / "summary.json").read_text())
    for key in ("client_ratio", "server_ratio", "bench_ratio"):
        assert isinstance(stored[key], float) and stored[key] > 0, key
    (bench,) = stored["bench"]
    assert bench["row"]["seq"] == 64 and bench["row"]["batch"] == 1 and bench["row"]["threads"] == 1
    assert stored["bench_ratio"] == pytest.approx(bench["row"]["speedup"])
    assert stored["service"][1]["compact"] and stored["service"][1]["threads"] == 1
    assert stored["variants"]["pruned"]["open"]["15"]["client"]["p99"] > 0
    for name in ("report.md", "requests.csv", "latency_vs_load.png", "latency_cdf.png"):
        assert (out / name).stat().st_size > 0, name
    rows = (out / "requests.csv").read_text().splitlines()
    assert len(rows) - 1 == sum(r.requests for r in result.levels())
