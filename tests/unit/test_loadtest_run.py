import csv
import itertools
import json
import socket

import pytest

from loadtests.cli import main
from loadtests.run import PayloadOptions, run_loadtest
from loadtests.runner import LoadSettings
from loadtests.stub import Stub, running

PNG = b"\x89PNG\r\n\x1a\n"
SETTINGS = LoadSettings(concurrency=(1, 2), rates=(20,), duration_s=0.5, min_requests=3, warmup=1, repeats=3)


@pytest.fixture(scope="module")
def payload_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("payloads") / "bodies.jsonl"
    bodies = [{"question": f"Question {i}?", "context": f"Context number {i}.", "variant": "x"} for i in range(3)]
    path.write_text("\n".join(json.dumps(body) for body in bodies) + "\n")
    return path


@pytest.fixture(scope="module")
def result(tmp_path_factory, payload_file):
    """One whole load test against the stub: dense twice as slow as pruned."""
    stub = Stub(variants={"dense": 0.04, "pruned": 0.02})
    out = tmp_path_factory.mktemp("loadtest")
    with running(stub) as url:
        summary = run_loadtest(SETTINGS, PayloadOptions(file=payload_file), out, url=url, bench_repeats=None)
    return summary, out, stub


def _rows(out):
    with (out / "requests.csv").open() as handle:
        return list(csv.DictReader(handle))


def test_summary_json_has_the_headline_and_every_level(result):
    _, out, _ = result
    data = json.loads((out / "summary.json").read_text())
    assert {"client_ratio", "server_ratio", "bench_ratio"} <= set(data)
    assert data["bench_ratio"] is None  # no bench was asked for
    assert data["baseline"] == "dense" and data["compared"] == "pruned"
    for variant, (mode, level) in itertools.product(("dense", "pruned"), [("closed", "1"), ("closed", "2"), ("open", "20")]):  # fmt: skip
        level_result = data["variants"][variant][mode][level]
        assert level_result["repeats"] == 3
        assert level_result["errors"] == 0 and level_result["throughput_rps"] > 0
        assert {"p50", "p95", "p99"} <= set(level_result["client"])
        assert {"p50", "p95", "p99"} <= set(level_result["server"]["request"])
        assert level_result["client"]["p50"] <= level_result["client"]["p99"]


def test_client_and_server_ratios_agree_with_the_service_times(result):
    summary, _, _ = result
    assert 1.5 <= summary.client_ratio <= 2.6
    assert summary.server_ratio == pytest.approx(summary.client_ratio, rel=0.15)
    # The server's own time is never longer than what the client saw. Compared on means: a histogram's
    # sum/count is exact, while its p50 is interpolated inside a bucket (up to 12.5 % wide).
    for level in summary.levels():
        assert level.server.request.mean <= level.client.mean


def test_server_counts_every_answered_request_and_no_warmup(result):
    summary, out, stub = result
    for level in summary.levels():
        assert level.server.requests == level.ok == level.requests
        assert level.server.statuses == {"200": level.ok}
    # The stub saw each window's requests plus one warm-up request per window (9 windows a variant);
    # the warm-ups come before the first scrape, so the server view above excludes them.
    rows = _rows(out)
    for variant in ("dense", "pruned"):
        measured = sum(1 for row in rows if row["variant"] == variant)
        assert stub.variants[variant].served == measured + 9


def test_repeats_alternate_the_order_of_the_variants(result):
    _, out, _ = result
    windows = [
        key for key, _ in itertools.groupby((r["mode"], r["level"], r["repeat"], r["variant"]) for r in _rows(out))
    ]
    expected = [
        (mode, level, str(repeat), variant)
        for mode, level in [("closed", "1"), ("closed", "2"), ("open", "20.0")]
        for repeat in range(3)
        for variant in (("dense", "pruned") if repeat % 2 == 0 else ("pruned", "dense"))
    ]
    assert windows == expected


def test_report_csv_and_plots_are_written(result):
    summary, out, _ = result
    rows = _rows(out)
    assert "latency_ms" in rows[0]
    assert len(rows) == sum(level.requests for level in summary.levels())
    report = (out / "report.md").read_text()
    assert "# Load test: /v1/qa, dense vs pruned" in report and "Bench: not run" in report
    for name in ("latency_vs_load.png", "latency_cdf.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 1000


def test_max_throughput_under_slo_only_for_the_variant_that_meets_it(tmp_path, payload_file):
    # dense needs 200 ms a request, pruned 20 ms: a 100 ms p99 objective only pruned can meet.
    settings = LoadSettings(concurrency=(1, 2), duration_s=0.3, min_requests=3, warmup=0, repeats=1, slo_ms=100)
    with running(Stub(variants={"dense": 0.2, "pruned": 0.02})) as url:
        summary = run_loadtest(settings, PayloadOptions(file=payload_file), tmp_path, url=url, bench_repeats=None)
    slo = {result.variant: result for result in summary.slo}
    assert slo["dense"].max_throughput_rps is None and slo["dense"].at is None
    assert slo["pruned"].at in ("concurrency 1", "concurrency 2")
    assert 10 < slo["pruned"].max_throughput_rps <= 1 / 0.02 * 1.05
    assert "no level met the SLO" in (tmp_path / "report.md").read_text()


@pytest.fixture(scope="module")
def stub_url():
    with running(Stub(variants={"dense": 0.01, "pruned": 0.005})) as url:
        yield url


def _cli(url, payload_file, out, *extra):
    args = ["--url", url, "--payloads", str(payload_file), "--concurrency", "1", "--duration", "0.1",
            "--min-requests", "2", "--warmup", "0", "--repeats", "1", "--no-bench", "--out", str(out), *extra]  # fmt: skip
    return main(args)


def test_cli_runs_and_writes_the_report(stub_url, payload_file, tmp_path, capsys):
    assert _cli(stub_url, payload_file, tmp_path) == 0
    assert (tmp_path / "report.md").is_file() and (tmp_path / "summary.json").is_file()
    printed = capsys.readouterr().out
    assert "dense / pruned p50 at concurrency 1: client" in printed
    assert f"report: {tmp_path / 'report.md'}" in printed


def test_cli_unknown_variant_names_the_served_ones(stub_url, payload_file, tmp_path, capsys):
    assert _cli(stub_url, payload_file, tmp_path, "--variants", "dense", "nope") == 2
    error = capsys.readouterr().err
    assert "no variant nope" in error and "served: dense, pruned" in error
    assert not (tmp_path / "report.md").exists()


@pytest.mark.parametrize(("option", "value", "message"), [("--concurrency", "0", "concurrency"), ("--repeats", "0", "repeats")])  # fmt: skip
def test_cli_invalid_settings_are_refused(stub_url, payload_file, tmp_path, capsys, option, value, message):
    assert _cli(stub_url, payload_file, tmp_path, option, value) == 2
    error = capsys.readouterr().err
    assert error.startswith("loadtest: error:") and message in error


def test_cli_with_nothing_listening_says_so(payload_file, tmp_path, capsys):
    with socket.socket() as sock:  # a port that was free a moment ago, with nothing on it now
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert _cli(f"http://127.0.0.1:{port}", payload_file, tmp_path) == 2
    error = capsys.readouterr().err
    assert f"cannot list the service's models at http://127.0.0.1:{port}/v1/models" in error


def test_summarize_route_runs_end_to_end(tmp_path):
    payloads = tmp_path / "articles.jsonl"
    payloads.write_text(json.dumps({"text": "A long article about pruning.", "max_new_tokens": 4}) + "\n")
    settings = LoadSettings(route="summarize", concurrency=(1,), duration_s=0.3, min_requests=3, warmup=1, repeats=1)
    with running(Stub(route="summarize", variants={"dense": 0.03, "pruned": 0.01})) as url:
        summary = run_loadtest(settings, PayloadOptions(file=payloads), tmp_path / "out", url=url, bench_repeats=None)
    assert summary.route == "summarize"
    for level in summary.levels():
        assert level.errors == 0 and level.server.requests == level.ok >= 3
    assert summary.client_ratio > 1.5
