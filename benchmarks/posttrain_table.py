"""Summarise `make posttrain-qa`: a Markdown table and a plot from the manifests and bench results.

Usage: python benchmarks/posttrain_table.py benchmarks/posttrain
Reads minilm-NAME-manifest.json and NAME-bench.jsonl for each run and latency-model.json; writes
results.md and results.png into the same directory. Every number comes from those files.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def load_runs(directory: Path) -> list[dict]:
    runs = []
    for manifest_path in sorted(directory.glob("minilm-*-manifest.json")):
        name = manifest_path.name.removesuffix("-manifest.json")
        manifest = json.loads(manifest_path.read_text())
        bench_path = directory / f"{name}-bench.jsonl"
        bench = [json.loads(line) for line in bench_path.read_text().splitlines()] if bench_path.is_file() else []
        method = manifest["method"]
        summary = manifest["plan"]["stacks"]["encoder"]
        heads = sum(len(kept) for layer in summary["layers"] for kept in layer["heads"].values())
        units = sum(len(layer["ffn_units"]) for layer in summary["layers"])
        evaluation = manifest.get("evaluation", {})
        runs.append(
            {
                "name": name,
                "budget": method["budget"]["speedup"],
                "importance": method["importance"] + ("" if method["mask_tuning"]["enabled"] else ", no tuning"),
                "seconds": method["seconds"]["total_pruning"],
                "latency_cached": method["predicted"]["latency_model"]["cached"],
                "predicted": method["predicted"]["speedup"],
                "measured": method["measured"]["speedup"],
                "attempts": method["measured"]["attempts"],
                "bench": bench[0]["speedup"] if bench else None,
                "bench_dense_ms": bench[0]["dense_ms"] if bench else None,
                "bench_compact_ms": bench[0]["compact_ms"] if bench else None,
                "flops_ratio": manifest["stats"]["flops_ratio"],
                "heads": f"{heads}/{len(summary['layers']) * summary['num_heads']}",
                "ffn": f"{units}/{len(summary['layers']) * summary['ffn_units']}",
                "dense": evaluation.get("dense", {}),
                "pruned": evaluation.get("pruned", {}),
                "tuning": method["mask_tuning"],
            }
        )
    order = {"fisher": 0, "fisher, no tuning": 1, "magnitude": 2, "random": 3}
    return sorted(runs, key=lambda run: (run["budget"], order.get(run["importance"], 9)))


def markdown(runs: list[dict], latency: dict | None) -> str:
    lines = []
    if runs and runs[0]["dense"]:
        dense = runs[0]["dense"]
        lines.append(
            f"Dense model on dev: EM {dense['exact_match']:.2f}, F1 {dense['f1']:.2f} ({dense['n']} questions)."
        )
        lines.append("")
    lines += [
        "| budget | importance | pruning s | attempts: predicted → measured | final: predicted | measured (prune) "
        "| measured (bench) | bench vs budget | FLOPs ratio | heads | FFN units | EM | F1 | ΔF1 | tuning error |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        bench = run["bench"]
        off = f"{bench / run['budget'] - 1:+.1%}" if bench else "—"
        bench_text = f"{bench:.2f}×" if bench else "—"
        attempts = ", ".join(f"{a['predicted_speedup']:.2f}→{a['measured_speedup']:.2f}" for a in run["attempts"])
        pruned, dense = run["pruned"], run["dense"]
        tuning = run["tuning"]
        reduction = (
            f"−{1 - tuning['error_after'] / tuning['error_before']:.0%}" if tuning.get("error_before") else "off"
        )
        lines.append(
            f"| {run['budget']:.1f}× | {run['importance']} | {run['seconds']:.0f} | {attempts} | {run['predicted']:.2f}× | "
            f"{run['measured']:.2f}× | {bench_text} | {off} | {run['flops_ratio']:.2f} | {run['heads']} | "
            f"{run['ffn']} | {pruned.get('exact_match', float('nan')):.2f} | {pruned.get('f1', float('nan')):.2f} | "
            f"{pruned.get('f1', float('nan')) - dense.get('f1', float('nan')):+.2f} | {reduction} |"
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


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    markers = {"fisher": "o", "magnitude": "s", "random": "^"}
    for importance, marker in markers.items():
        chosen = [run for run in runs if run["importance"] == importance and run["pruned"] and run["bench"]]
        if chosen:
            left.plot([r["bench"] for r in chosen], [r["pruned"]["f1"] for r in chosen], marker=marker,
                      label=importance)  # fmt: skip
    if runs and runs[0]["dense"]:
        left.axhline(runs[0]["dense"]["f1"], color="grey", linestyle="--", label="dense")
    left.set_xlabel("measured speedup (blockserve bench, b1 s384)")
    left.set_ylabel("SQuAD dev F1")
    left.set_title("accuracy at a latency budget, no retraining", fontsize=10)
    left.legend(fontsize=8)
    budgets = sorted({run["budget"] for run in runs})
    right.plot([1, max(budgets) * 1.1], [1, max(budgets) * 1.1], color="grey", linewidth=0.8, label="on budget")
    for importance, marker in markers.items():
        chosen = [run for run in runs if run["importance"] == importance and run["bench"]]
        right.scatter([r["budget"] for r in chosen], [r["bench"] for r in chosen], marker=marker, label=importance)
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
