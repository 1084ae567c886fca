"""The report's figures: latency and throughput against load per variant, and latency CDFs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from loadtests.client import RequestRecord
from loadtests.summary import Summary

LATENCY_PLOT = "latency_vs_load.png"
CDF_PLOT = "latency_cdf.png"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plain_log(axis) -> None:
    """Log scale labelled 300, 1000, 3000 rather than 3×10², which collide on a narrow range."""
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(ScalarFormatter())
    axis.set_minor_formatter(NullFormatter())


def plot_latency_vs_load(summary: Summary, path: Path) -> None:
    """Per mode: client p50 and p99 (solid, dashed) and server p50 (dotted) against load; closed-loop throughput."""
    plt = _pyplot()
    modes = [m for m in ("closed", "open") if any(m in modes for modes in summary.variants.values())]
    panels = [(mode, "latency") for mode in modes] + [(mode, "throughput") for mode in modes]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (mode, kind) in zip(axes[0], panels, strict=True):
        for color, (variant, by_mode) in zip(colors, summary.variants.items(), strict=False):
            results = sorted(by_mode.get(mode, {}).values(), key=lambda r: r.level)
            answered = [r for r in results if r.client]
            x = [r.level for r in answered]
            if kind == "latency":
                ax.plot(x, [r.client.p50 for r in answered], "o-", color=color, label=f"{variant} p50")
                ax.plot(x, [r.client.p99 for r in answered], "s--", color=color, label=f"{variant} p99")
                served = [r for r in answered if r.server and r.server.request]
                ax.plot([r.level for r in served], [r.server.request.p50 for r in served], ":", color=color,
                        label=f"{variant} p50 (server)")  # fmt: skip
            else:
                ax.plot([r.level for r in results], [r.throughput_rps for r in results], "o-", color=color,
                        label=variant)  # fmt: skip
        if kind == "latency":
            ax.axhline(summary.settings.slo_ms, color="grey", linewidth=0.8, linestyle="-.", label="p99 SLO")
            ax.set_yscale("log")
            _plain_log(ax.yaxis)
            ax.set_ylabel("latency (ms, client)")
        else:
            ax.set_ylabel("answered requests / s")
        if mode == "closed":
            ax.set_xscale("log", base=2)
            ax.set_xlabel("concurrent clients (closed loop)")
        else:
            ax.set_xlabel("offered requests / s (open loop, Poisson)")
        ax.set_title(f"{kind}, {mode} loop")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"/v1/{summary.route}: {' vs '.join(summary.variants)} ({summary.payloads.description})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_cdf(summary: Summary, records: list[RequestRecord], path: Path) -> None:
    """Client latency CDF per variant at the lowest and highest load of each mode."""
    plt = _pyplot()
    modes = [m for m in ("closed", "open") if any(r.mode == m for r in records)]
    fig, axes = plt.subplots(1, len(modes), figsize=(6 * len(modes), 4), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, mode in zip(axes[0], modes, strict=True):
        levels = sorted({r.level for r in records if r.mode == mode})
        shown = [levels[0], levels[-1]] if len(levels) > 1 else levels
        for color, variant in zip(colors, summary.variants, strict=False):
            for style, level in zip(("-", "--"), shown, strict=False):
                samples = np.sort([r.latency_ms for r in records if (r.variant, r.mode, r.level) == (variant, mode, level) and r.ok])  # fmt: skip
                if samples.size:
                    label = f"{variant}, {'concurrency' if mode == 'closed' else 'rate'} {level:g}"
                    ax.plot(samples, np.arange(1, samples.size + 1) / samples.size, style, color=color, label=label)
        ax.axvline(summary.settings.slo_ms, color="grey", linewidth=0.8, linestyle="-.", label="p99 SLO")
        ax.set_xscale("log")
        _plain_log(ax.xaxis)
        ax.set_xlabel("latency (ms, client)")
        ax.set_ylabel("fraction of requests")
        ax.set_title(f"latency CDF, {mode} loop")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
