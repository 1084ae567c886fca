"""Does mask rearrangement help once the kept weights are refit? Dev F1 of the same plans with and without it.

    python benchmarks/rearrangement_qa.py --model ../shared/models/minilm-l6-squad \
        --train ../shared/data/squad/train.json --dev ../shared/data/squad/dev.json \
        --plans artifacts/pareto/posttrain-1.5 artifacts/pareto/posttrain-2.0 --out benchmarks/pareto/epyc-avx512bf16

For each compact checkpoint written by `blockserve prune --method posttrain` (its manifest holds the plan the
search chose from diagonal Fisher), the plan's kept units are re-chosen on the whole Fisher blocks of 512
calibration features (`--rearrange`; same counts, so the same shapes and speed), the model is compacted and
refit (`weights`) as the pipeline does, and both are scored on the whole dev file in the served numerics,
paired with the dense model. No timing: the rearranged model has the plan's shapes exactly. Writes
`rearrangement.json` and `rearrangement.md` into `--out`.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.pareto_qa import paired, per_question_f1  # noqa: E402
from pruning.artifacts.checkpoint import load_checkpoint  # noqa: E402
from pruning.artifacts.compact import compact_model  # noqa: E402
from pruning.core.structure import task_of  # noqa: E402
from pruning.methods.posttrain.importance import fisher_importance  # noqa: E402
from pruning.methods.posttrain.rearrangement import rearrange_plan  # noqa: E402
from pruning.methods.posttrain.reconstruction import reconstruct  # noqa: E402
from pruning.runtime.numerics import dtype_name, reported_cpu_flags, resolve_dtype  # noqa: E402
from pruning.tasks import make_task  # noqa: E402

log = logging.getLogger("rearrangement")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--train", required=True, help="calibration data (the pipeline's first 512 examples)")
    parser.add_argument("--dev", required=True)
    parser.add_argument("--plans", nargs="+", required=True, help="compact checkpoints from posttrain")
    parser.add_argument("--calib-samples", type=int, default=512)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    checkpoint = load_checkpoint(args.model)
    dense, tokenizer = checkpoint.model.eval(), checkpoint.tokenizer()
    task = make_task(task_of(dense))
    served = resolve_dtype(args.dtype, "cpu")
    dev = task.load(args.dev)
    calibration = task.train_features(tokenizer, task.load(args.train, args.calib_samples))
    started = time.perf_counter()
    importance = fisher_importance(dense, task, tokenizer, calibration, blocks=True)
    fisher_seconds = round(time.perf_counter() - started, 1)
    dense_f1 = per_question_f1(task, dense, tokenizer, dev, served)
    rows = [{"name": "dense", **paired(dense_f1, dense_f1)}]
    for path in map(Path, args.plans):
        pruned = load_checkpoint(path)
        name = path.name
        rows.append({"name": f"{name} weights", **paired(per_question_f1(task, pruned.model.eval(), tokenizer, dev,
                                                                            served), dense_f1)})  # fmt: skip
        started = time.perf_counter()
        plan, record = rearrange_plan(pruned.manifest.plan, importance.blocks)
        rearrange_seconds = round(time.perf_counter() - started, 1)
        compact = compact_model(copy.deepcopy(dense), plan).eval()
        reconstruct(compact, dense, task, tokenizer, calibration, mode="weights")
        f1 = per_question_f1(task, compact, tokenizer, dev, served)
        rows.append({
            "name": f"{name} rearranged + weights", **paired(f1, dense_f1),
            **record.model_dump(exclude={"per_group"}),
            "rearrange_seconds": rearrange_seconds, "fisher_blocks_seconds": fisher_seconds,
        })  # fmt: skip
        log.info("%s", rows[-1])
        (out / "rearrangement.json").write_text(json.dumps({"rows": rows}, indent=1))
    result = {"model": args.model, "dev": args.dev, "questions": len(dev), "dtype": dtype_name(served),
              "cpu_flags": reported_cpu_flags(), "rows": rows}  # fmt: skip
    (out / "rearrangement.json").write_text(json.dumps(result, indent=1))
    lines = [
        "| model | dev F1 | ΔF1 vs dense (95 % CI, paired) | swaps | zᵀFz before → after |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        swaps = row.get("swaps", "")
        loss = f"{row['loss_before']:.4g} → {row['loss_after']:.4g}" if "loss_before" in row else ""
        lines.append(
            f"| {row['name']} | {row['f1']:.2f} | {row['delta']:+.2f} ± {row['ci95']:.2f} | {swaps} | {loss} |"
        )
    (out / "rearrangement.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
