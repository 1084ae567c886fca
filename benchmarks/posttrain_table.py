"""Summarise `make posttrain-qa`: a Markdown table and a plot from the manifests and bench results.

Usage: python benchmarks/posttrain_table.py benchmarks/posttrain
Reads minilm-NAME-manifest.json and NAME-bench.jsonl for each run and latency-model.json; writes
results.md and results.png into the same directory. Every number comes from those files.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from pruning.artifacts.checkpoint import Manifest
from pruning.artifacts.records import PosttrainMethod, Scores
from pruning.runtime.bench import BenchRow


@dataclass(frozen=True)
class Run:
    """One `prune --method posttrain` run: its manifest and, when it was benched, the bench row."""

    name: str
    manifest: Manifest
    bench_row: BenchRow | None

    @property
    def method(self) -> PosttrainMethod:
        return self.manifest.method

    @property
    def budget(self) -> float:
        return self.method.budget.speedup

    @property
    def importance(self) -> str:
        return self.method.importance + ("" if self.method.reconstruction.mode != "none" else ", no tuning")

    @property
    def bench(self) -> float | None:
        return self.bench_row.speedup if self.bench_row else None

    @property
    def dense(self) -> Scores | None:
        return self.manifest.evaluation.dense

    @property
    def pruned(self) -> Scores | None:
        return self.manifest.evaluation.pruned


def load_runs(directory: Path) -> list[Run]:
    runs = []
    for manifest_path in sorted(directory.glob("minilm-*-manifest.json")):
        name = manifest_path.name.removesuffix("-manifest.json")
        bench_path = directory / f"{name}-bench.jsonl"
        rows = (
            [BenchRow.model_validate_json(line) for line in bench_path.read_text().splitlines()]
            if bench_path.is_file()
            else []
        )
        runs.append(Run(name, Manifest.model_validate_json(manifest_path.read_text()), rows[0] if rows else None))
    order = {"fisher": 0, "fisher, no tuning": 1, "magnitude": 2, "random": 3}
    return sorted(runs, key=lambda run: (run.budget, order.get(run.importance, 9)))


def _metric(scores: Scores | None, name: str) -> float:
    value = getattr(scores, name) if scores is not None else None
    return float("nan") if value is None else value


def markdown(runs: list[Run], latency: dict | None) -> str:
    lines = []
    if runs and runs[0].dense:
        dense = runs[0].dense
        lines.append(f"Dense model on dev: EM {dense.exact_match:.2f}, F1 {dense.f1:.2f} ({dense.n} questions).")
        lines.append("")
    lines += [
        "| budget | importance | pruning s | attempts: predicted → measured | final: predicted | measured (prune) "
        "| measured (bench) | bench vs budget | FLOPs ratio | heads | FFN units | EM | F1 | ΔF1 | tuning error |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        method, bench = run.method, run.bench
        off = f"{bench / run.budget - 1:+.1%}" if bench else "—"
        bench_text = f"{bench:.2f}×" if bench else "—"
        attempts = ", ".join(f"{a.predicted_speedup:.2f}→{a.measured_speedup:.2f}" for a in method.measured.attempts)
        tuning = method.reconstruction
        reduction = f"−{1 - tuning.error_after / tuning.error_before:.0%}" if tuning.error_before else "off"
        encoder = run.manifest.plan.summary()["encoder"]
        lines.append(
            f"| {run.budget:.1f}× | {run.importance} | {method.seconds['total_pruning']:.0f} | {attempts} | "
            f"{method.predicted.speedup:.2f}× | {method.measured.speedup:.2f}× | {bench_text} | {off} | "
            f"{run.manifest.stats.flops_ratio:.2f} | {encoder.heads_kept}/{encoder.heads_total} | "
            f"{encoder.ffn_units_kept}/{encoder.ffn_units_total} | {_metric(run.pruned, 'exact_match'):.2f} | "
            f"{_metric(run.pruned, 'f1'):.2f} | {_metric(run.pruned, 'f1') - _metric(run.dense, 'f1'):+.2f} | {reduction} |"
        )
    if latency:
        checks = latency.get("checks", [])
        table = latency["table"]
        lines += [
            "",
            f"Latency model: {len(table['curves'])} curves, measured in {table['seconds']:.0f} s "
            f"(dense {table['dense_ms']:.1f} ms, {table['key']['runtime']}, b{table['key']['batch']} "
            f"s{table['key']['seq']}, {table['key']['device']}, {table['key']['threads']} threads).",
        ]
        if checks:
            errors = [abs(check["error"]) for check in checks]
            lines.append(
                f"Prediction error on {len(checks)} random heterogeneous plans: mean {sum(errors) / len(errors):.1%}, "
                f"max {max(errors):.1%}."
            )
    return "\n".join(lines) + "\n"


def plot(runs: list[Run], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    markers = {"fisher": "o", "magnitude": "s", "random": "^"}
    for importance, marker in markers.items():
        chosen = [run for run in runs if run.importance == importance and run.pruned and run.bench]
        if chosen:
            left.plot([r.bench for r in chosen], [r.pruned.f1 for r in chosen], marker=marker, label=importance)
    if runs and runs[0].dense:
        left.axhline(runs[0].dense.f1, color="grey", linestyle="--", label="dense")
    left.set_xlabel("measured speedup (blockserve bench, b1 s384)")
    left.set_ylabel("SQuAD dev F1")
    left.set_title("accuracy at a latency budget, no retraining", fontsize=10)
    left.legend(fontsize=8)
    budgets = sorted({run.budget for run in runs})
    right.plot([1, max(budgets) * 1.1], [1, max(budgets) * 1.1], color="grey", linewidth=0.8, label="on budget")
    for importance, marker in markers.items():
        chosen = [run for run in runs if run.importance == importance and run.bench]
        right.scatter([r.budget for r in chosen], [r.bench for r in chosen], marker=marker, label=importance)
    right.set_xlabel("speedup budget (--speedup)")
    right.set_ylabel("measured speedup (bench)")
    right.set_title("budget vs measured", fontsize=10)
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(directory: str) -> None:
    directory = Path(directory)
    runs = load_runs(directory)
    latency_path = directory / "latency-model.json"
    latency = json.loads(latency_path.read_text()) if latency_path.is_file() else None
    text = markdown(runs, latency)
    (directory / "results.md").write_text(text)
    plot(runs, directory / "results.png")
    print(text)


if __name__ == "__main__":
    main(sys.argv[1])
