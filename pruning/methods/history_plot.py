"""A picture of a training run: loss, density and the eval metric against steps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_history(history: list[dict[str, Any]], metric: str, path: str | Path, title: str = "") -> None:
    """Three panels over global steps (stages one after another): loss, density, `metric`."""
    offsets: dict[str, int] = {}
    for entry in history:  # stages restart at step 0: lay them end to end
        offsets.setdefault(entry["stage"], 0)
    start = 0
    for stage in offsets:
        offsets[stage] = start
        start += max(e["step"] for e in history if e["stage"] == stage)

    def series(key, getter):
        points = [(offsets[e["stage"]] + e["step"], getter(e)) for e in history if key in e]
        return [p[0] for p in points], [p[1] for p in points]

    figure, axes = plt.subplots(3, 1, figsize=(7, 8), sharex=True)
    for axis, key, label, getter in (
        (axes[0], "loss", "training loss", lambda e: e["loss"]),
        (axes[1], "density", "weights kept (density)", lambda e: e["density"]),
        (axes[2], "eval", f"eval {metric}", lambda e: e["eval"][metric]),
    ):
        x, y = series(key, getter)
        axis.plot(x, y, marker="o" if key == "eval" else None, markersize=4)
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    for stage, offset in offsets.items():
        if offset:
            for axis in axes:
                axis.axvline(offset, color="grey", linestyle="--", linewidth=0.8)
            axes[0].annotate(stage, (offset, 1), xycoords=("data", "axes fraction"), va="top", fontsize=8)
    axes[-1].set_xlabel("step")
    axes[0].set_title(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
