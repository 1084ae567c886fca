"""Where a forward pass spends its time, dense vs compact, by operator (torch.profiler on the CPU).

    python benchmarks/profile_forward.py --arch bert-base-uncased --batch 1 --seq 384 --dtype auto \
        --out benchmarks/numerics/profile-b1.json

Prints a Markdown table of self CPU time per operator per forward (median of `--repeats` profiled
forwards after warm-up) for the dense model and its uniform compaction (0.5 heads, 0.33 FFN), and
writes the same numbers as JSON. It answers why the compact/dense ratio at batch 1 falls short of the
FLOPs ratio: which operators shrink with the pruned widths and which do not.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pruning.artifacts.compact import compact_model  # noqa: E402
from pruning.core.plan import PruningPlan  # noqa: E402
from pruning.core.structure import geometry_of  # noqa: E402
from pruning.runtime.numerics import dtype_name, in_dtype, resolve_dtype  # noqa: E402
from pruning.runtime.runners import Shape, random_inputs  # noqa: E402
from pruning.zoo.presets import build_preset  # noqa: E402


def operator_ms(model, inputs, repeats: int) -> dict[str, float]:
    """Self CPU milliseconds per operator for one forward (totals over `repeats` forwards / repeats)."""
    with torch.inference_mode():
        for _ in range(3):
            model(**inputs)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(repeats):
                model(**inputs)
    totals: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        totals[event.key] += event.self_cpu_time_total / 1000.0 / repeats
    return dict(totals)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="bert-base-uncased")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq", type=int, default=384)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.manual_seed(0)
    dense = in_dtype(build_preset(args.arch), resolve_dtype(args.dtype, "cpu")).eval()
    compact = compact_model(copy.deepcopy(dense), PruningPlan.uniform(geometry_of(dense.config), 0.5, 0.33)).eval()
    inputs = random_inputs(dense, Shape(args.batch, args.seq), "cpu")
    result = {
        name: operator_ms(model, inputs, args.repeats) for name, model in (("dense", dense), ("compact", compact))
    }
    names = sorted(set(result["dense"]) | set(result["compact"]), key=lambda n: -result["dense"].get(n, 0.0))
    totals = {name: sum(times.values()) for name, times in result.items()}
    print(f"{args.arch} b{args.batch} s{args.seq} {dtype_name(next(dense.parameters()).dtype)}, "
          f"{torch.get_num_threads()} threads: dense {totals['dense']:.1f} ms, compact {totals['compact']:.1f} ms "
          f"of operator self time per forward\n")  # fmt: skip
    print("| operator | dense ms | compact ms | dense / compact | share of compact |")
    print("|---|---|---|---|---|")
    for name in names[:12]:
        d, c = result["dense"].get(name, 0.0), result["compact"].get(name, 0.0)
        ratio = f"{d / c:.2f}×" if c else "—"
        print(f"| `{name}` | {d:.2f} | {c:.2f} | {ratio} | {c / totals['compact']:.0%} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, **result}, indent=1))


if __name__ == "__main__":
    main()
