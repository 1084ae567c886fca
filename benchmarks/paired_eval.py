"""A pruned QA checkpoint against its dense model: dev F1 paired per question, and speed, in the served numerics.

    python benchmarks/paired_eval.py --dense ../shared/models/minilm-l6-squad \
        --pruned artifacts/posttrain/minilm-fisher-2.0-recover --dev ../shared/data/squad/dev.json --out result.json

F1 in the served numerics (`--dtype auto`: bf16 where the CPU has bf16 units) and in float32, each with the
paired difference to the dense model on the same questions (95 % CI); speed at batch 8 and 1, seq 384,
dense and pruned interleaved in one run (medians). The scoring and timing are `pareto_qa.py`'s.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pareto_qa import median_ms, paired, per_question_f1  # noqa: E402

from pruning.artifacts.checkpoint import load_checkpoint  # noqa: E402
from pruning.runtime.numerics import dtype_name, reported_cpu_flags, resolve_dtype  # noqa: E402
from pruning.tasks import make_task  # noqa: E402
from pruning.tasks.evaluate import checkpoint_tokenizer  # noqa: E402

log = logging.getLogger("paired-eval")
TASK = "question-answering"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dense", required=True)
    parser.add_argument("--pruned", required=True)
    parser.add_argument("--dev", required=True)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--seq", type=int, default=384)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    served = resolve_dtype(args.dtype, "cpu")
    task = make_task(TASK)
    dense_checkpoint = load_checkpoint(args.dense)
    dense, pruned = dense_checkpoint.model.eval(), load_checkpoint(args.pruned).model.eval()
    tokenizer = checkpoint_tokenizer(dense_checkpoint)
    dev = task.load(Path(args.dev), None)

    scores = {}
    for dtype in dict.fromkeys([served, torch.float32]):
        dense_f1 = per_question_f1(task, dense, tokenizer, dev, dtype)
        pruned_f1 = per_question_f1(task, pruned, tokenizer, dev, dtype)
        scores[dtype_name(dtype)] = {
            "dense_f1": paired(dense_f1, dense_f1)["f1"],
            "pruned": paired(pruned_f1, dense_f1),
        }
        log.info("%s: %s", dtype_name(dtype), scores[dtype_name(dtype)])

    timings = median_ms({"dense": dense, "pruned": pruned}, served, [8, 1], args.seq, args.repeats)
    speed = {}
    for batch in (8, 1):
        dense_ms, pruned_ms = timings["dense"][batch], timings["pruned"][batch]
        speed[f"b{batch}"] = {"dense_ms": round(dense_ms, 2), "pruned_ms": round(pruned_ms, 2),
                              "speedup": round(dense_ms / pruned_ms, 3)}  # fmt: skip
        log.info("b%d s%d %s: %s", batch, args.seq, dtype_name(served), speed[f"b{batch}"])

    result = {"dense": args.dense, "pruned": args.pruned, "dev_questions": len(dev), "served_dtype": dtype_name(served),
              "seq": args.seq, "cpu_flags": reported_cpu_flags(), "dev_f1": scores, "speed": speed}  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
