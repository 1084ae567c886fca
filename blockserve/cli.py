"""`blockserve`: one subcommand per job; each one's flags are derived from its options model.

`COMMANDS` is the whole command line: a name, the model its options validate into (a discriminated
union for `prune --method movement|posttrain`), and the function that runs the validated job.
Every wrong flag, value, file or config ends in one line on stderr naming what is wrong, exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import Field, ValidationError

from blockserve import commands
from blockserve.tune import TuneJob
from loadtests.cli import LoadtestJob
from pruning.core.errors import BlockserveError
from pruning.core.options import add_options, parse_settings
from pruning.core.plan import describe_validation_error
from pruning.methods.finetune import FinetuneJob
from pruning.methods.movement.pipeline import MovementJob
from pruning.methods.posttrain.pipeline import PosttrainJob
from pruning.tasks.evaluate import EvaluateJob

PruneJob = Annotated[MovementJob | PosttrainJob, Field(discriminator="method")]


@dataclass(frozen=True)
class Command:
    name: str
    options: Any  # a pydantic model class, or an Annotated discriminated union of them
    run: Callable[[Any], None]
    help: str
    description: str | None = None


COMMANDS = (
    Command(
        "finetune", FinetuneJob, commands.run_finetune, "fine-tune a dense model on a task (e.g. to make a teacher)"
    ),
    Command(
        "prune",
        PruneJob,
        commands.run_prune,
        "prune a fine-tuned model → compact checkpoint (movement pruning, or post-training to a latency budget)",
        "movement (the paper): --teacher, --train, --eval, --out; the rest follows the paper's recipe. "
        "posttrain (minutes, no training): --method posttrain --model, --calib, --speedup or --latency-ms, --out.",
    ),  # fmt: skip
    Command(
        "latency",
        commands.LatencyJob,
        commands.run_latency,
        "measure (or show the cached) latency model of a dense model; check it on random plans",
    ),  # fmt: skip
    Command("evaluate", EvaluateJob, commands.run_evaluate, "score a dense or compact checkpoint on a data file"),
    Command("serve", commands.ServeJob, commands.run_serve, "run the Ray Serve application of a config file"),
    Command(
        "kuberay",
        commands.KuberayJob,
        commands.run_kuberay,
        "write the KubeRay RayService manifest for a Serve config (validated first)",
    ),  # fmt: skip
    Command(
        "init",
        commands.InitJob,
        commands.run_init,
        "write a random preset model with a tokenizer trained on local data (offline stand-in)",
    ),  # fmt: skip
    Command(
        "plan", commands.PlanJob, commands.run_plan, "write a uniform (synthetic) pruning plan for a model or preset"
    ),
    Command(
        "compact", commands.CompactJob, commands.run_compact, "apply a plan to a dense checkpoint, write format v1"
    ),
    Command(
        "export", commands.ExportJob, commands.run_export, "export a (dense or compact) BERT QA checkpoint to ONNX"
    ),
    Command("bench", commands.BenchJob, commands.run_bench, "time dense vs compact in one process"),
    Command(
        "tune",
        TuneJob,
        commands.run_tune,
        "time every runtime × dtype here, check answers on real data, name the fastest that stays correct",
    ),  # fmt: skip
    Command(
        "loadtest",
        LoadtestJob,
        commands.run_loadtest,
        "load-test variants over HTTP (closed/open loop), client- and server-side, vs bench",
    ),  # fmt: skip
    Command(
        "demo",
        commands.DemoJob,
        commands.run_demo,
        "serve a local zoo of dense and pruned QA and summarization models, query it, compare latency",
    ),  # fmt: skip
)
BY_NAME = {command.name: command for command in COMMANDS}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="blockserve", description="Block-pruned transformers: prune, compact, serve, measure."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        sub = subparsers.add_parser(command.name, help=command.help, description=command.description or command.help)
        add_options(sub, command.options)
    return parser


def main(argv: list[str] | None = None) -> int:
    namespace = build_parser().parse_args(argv)
    # Our loggers say what we do; libraries (onnx_ir, matplotlib, ...) only speak up on warnings.
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    for name in ("pruning", "blockserve"):
        logging.getLogger(name).setLevel(logging.DEBUG if namespace.verbose else logging.INFO)
    command = BY_NAME[namespace.command]
    options = {key: value for key, value in vars(namespace).items() if key not in ("command", "verbose")}
    try:
        job = parse_settings(argparse.Namespace(**options), command.options)
        command.run(job)
    except BlockserveError as error:
        print(f"blockserve {command.name}: error: {error}", file=sys.stderr)
        return 2
    except ValidationError as error:  # a file or config the job read turned out invalid
        print(f"blockserve {command.name}: error: {describe_validation_error(error)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
