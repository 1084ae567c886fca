"""Writes a load test's results: raw CSV, `summary.json`, PNG plots and a Markdown report."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, fields
from pathlib import Path

from loadtests.analysis import LevelResult, Quantiles
from loadtests.bench_ratio import BenchResult
from loadtests.client import RequestRecord
from loadtests.plots import CDF_PLOT, LATENCY_PLOT, plot_cdf, plot_latency_vs_load
from loadtests.summary import Summary

RAW = "requests.csv"
SUMMARY = "summary.json"
REPORT = "report.md"


def write_csv(records: list[RequestRecord], path: Path) -> None:
    names = [f.name for f in fields(RequestRecord)] + ["latency_ms"]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=names)
        writer.writeheader()
        for record in records:
            writer.writerow({**asdict(record), "latency_ms": round(record.latency_ms, 3)})


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def times(value: float | None) -> str:
    """A ratio as `2.38×` (`—` when undefined)."""
    return "—" if value is None else f"{value:.2f}×"


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:+.1%}"


def _quantiles(q: Quantiles | None) -> list[str]:
    return [_ms(q.p50), _ms(q.p95), _ms(q.p99)] if q else ["—"] * 3


def _level_row(r: LevelResult) -> str:
    server = r.server.request if r.server else None
    queue = r.server.queue_wait.p50 if r.server and r.server.queue_wait else None
    batch = r.server.batch_size_mean if r.server else None
    load = f"c={r.level:g}" if r.mode == "closed" else f"{r.level:g}/s"
    cells = [r.variant, r.mode, load, str(r.requests), str(r.errors), f"{r.throughput_rps:.2f}",
             *_quantiles(r.client), *_quantiles(server), _ms(queue), "—" if batch is None else f"{batch:.2f}",
             "yes" if r.meets_slo else "no"]  # fmt: skip
    return "| " + " | ".join(cells) + " |"


def markdown(summary: Summary, reproduce: str) -> str:
    """The report: what ran where, the headline ratios, every level, the SLO, errors, plots."""
    sections = (
        _header(summary, reproduce),
        _variants(summary),
        _speedup(summary),
        _levels(summary),
        _errors(summary),
        _plots(),
    )
    return "\n".join(line for section in sections for line in section) + "\n"


def _header(s: Summary, reproduce: str) -> list[str]:
    return [
        f"# Load test: /v1/{s.route}, {' vs '.join(s.variants)}",
        "",
        f"{s.started}, {s.seconds / 60:.1f} min. Reproduce: `{reproduce}`",
        "",
        f"- Machine: {s.machine['processor']}, {s.machine['cpus']} CPUs, {s.machine['platform']}, "
        f"torch {s.machine['torch']}{', GPU ' + str(s.machine['cuda']) if s.machine['cuda'] else ''}",
        f"- Service: {s.url}",
        f"- Payloads: {s.payloads.description}",
        f"- Load: closed loop at concurrency {', '.join(f'{c:g}' for c in s.settings.concurrency) or 'none'}; "
        f"open loop (Poisson) at {', '.join(f'{r:g}' for r in s.settings.rates) or 'no'} req/s; "
        f"{s.settings.duration_s:g} s windows (closed loop: ≥ {s.settings.min_requests} requests), "
        f"{s.settings.warmup} warm-up requests discarded per window, {s.settings.repeats} repeats with the "
        "variants' order alternated",
    ]


def _variants(s: Summary) -> list[str]:
    lines = [
        "",
        "## Variants",
        "",
        "| variant | checkpoint | compact | plan (kept / total) | plan digest | params | FLOPs ratio | runtime (dtype) | device | threads | batching |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for info in s.service:
        plan = info.plan_summary.describe() if info.plan_summary else "dense"
        batching = ", ".join(f"{k} {v}" for k, v in info.batching.model_dump().items())
        lines.append(
            f"| {info.variant} | `{info.checkpoint}` | {'yes' if info.compact else 'no'} | {plan} | "
            f"{info.plan_digest or '—'} | {info.params / 1e6:.1f} M | "
            f"{'—' if info.flops_ratio is None else f'{info.flops_ratio:.2f}'} | {info.runtime} ({info.dtype}) | "
            f"{info.device} | {info.threads} | {batching} |"
        )
    return lines


def _speedup(s: Summary) -> list[str]:
    lines = [
        "",
        f"## Speedup at concurrency 1 ({s.baseline} p50 / variant p50)",
        "",
        "| variant | client | per repeat | server (Prometheus p50) | server (mean) | `blockserve bench` | client vs bench | server vs client |",
        "|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in s.ratios:
        repeats = ", ".join(f"{x:.2f}" for x in r.client_by_repeat) or "—"
        lines.append(
            f"| {r.variant} | {times(r.client)} | {repeats} | {times(r.server)} | {times(r.server_mean)} | {times(r.bench)} | "
            f"{_pct(r.client_vs_bench)} | {_pct(r.server_vs_client)} |"
        )
    lines += ["", "Bench: " + "; ".join(
        f"`{b.command}` → dense {b.row.dense_ms:.1f} ms, compact {b.row.compact_ms:.1f} ms ({b.row.speedup:.2f}×)"
        if isinstance(b, BenchResult) else f"{b.variant}: not run ({b.reason})"
        for b in s.bench
    ) if s.bench else "Bench: not run (--no-bench)."]  # fmt: skip
    return lines + [
        "",
        "Client latency runs from the send (closed loop) or the scheduled send time (open loop) to the last byte; "
        "the server's runs from the ingress receiving the request to its response (`blockserve_request_duration_seconds`), "
        "so the gap between them is the HTTP proxy's share.",
    ]  # fmt: skip


def _levels(s: Summary) -> list[str]:
    return [
        "",
        "## Per variant and load",
        "",
        "Milliseconds; throughput in answered requests per second; *queue* = server-side wait for a batch (p50); "
        "*batch* = mean requests per model batch; *SLO* = p99 ≤ "
        f"{s.settings.slo_ms:g} ms with ≤ {s.settings.max_error_ratio:.0%} errors.",
        "",
        "| variant | mode | load | requests | errors | req/s | client p50 | p95 | p99 | server p50 | p95 | p99 | queue | batch | SLO |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        *(_level_row(r) for r in s.levels()),
        "",
        f"## Max throughput under the p99 SLO of {s.settings.slo_ms:g} ms",
        "",
        "| variant | req/s | at |",
        "|---|---|---|",
        *(f"| {r.variant} | {'—' if r.max_throughput_rps is None else f'{r.max_throughput_rps:.2f}'} | {r.at or 'no level met the SLO'} |" for r in s.slo),
    ]  # fmt: skip


def _errors(s: Summary) -> list[str]:
    errors = [r for r in s.levels() if r.errors]
    if not errors:
        return []
    return ["", "## Errors", ""] + [
        f"- {r.variant} {r.mode} {r.level:g}: {r.errors} ({r.statuses}); e.g. {r.error_examples}" for r in errors
    ]


def _plots() -> list[str]:
    return ["", "## Plots", "", f"![latency and throughput against load]({LATENCY_PLOT})", "",
            f"![latency CDF]({CDF_PLOT})", "", f"Raw per-request results: [{RAW}]({RAW}); all numbers: [{SUMMARY}]({SUMMARY})."]  # fmt: skip


def write_report(summary: Summary, records: list[RequestRecord], out: Path, reproduce: str) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / name for name in (RAW, SUMMARY, LATENCY_PLOT, CDF_PLOT, REPORT)}
    write_csv(records, paths[RAW])
    paths[SUMMARY].write_text(json.dumps(summary.model_dump(mode="json"), indent=1) + "\n")
    plot_latency_vs_load(summary, paths[LATENCY_PLOT])
    plot_cdf(summary, records, paths[CDF_PLOT])
    paths[REPORT].write_text(markdown(summary, reproduce))
    return paths
