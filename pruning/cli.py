"""`blockserve` command line: plan, compact, export, bench, demo."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pruning.errors import BlockserveError

log = logging.getLogger("blockserve")


def _existing_dir(value: str) -> str:
    # Hub ids are allowed wherever a model directory is; only reject paths that look local.
    path = Path(value)
    if (value.startswith((".", "/", "~")) or path.suffix) and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{value} is not a directory")
    return value


def _existing_file(value: str) -> Path:
    path = Path(value)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{value} does not exist")
    return path


def _fraction(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not 0.0 <= number <= 1.0:
        raise argparse.ArgumentTypeError(f"{value} is not a fraction in [0, 1]")
    return number


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value} must be ≥ 1")
    return number


# ---- commands -------------------------------------------------------------------------------------
def cmd_plan(args: argparse.Namespace) -> None:
    from pruning.plan import PruningPlan
    from pruning.structure import geometry_of

    config = _dense_config(args)
    plan = PruningPlan.uniform(geometry_of(config), args.keep_heads, args.keep_ffn)
    plan.save(args.out)
    print(f"wrote uniform plan (keep {args.keep_heads:g} of heads, {args.keep_ffn:g} of FFN units) to {args.out}")


def _dense_config(args: argparse.Namespace):
    from pruning.checkpoint import read_config, resolve_directory
    from pruning.presets import preset_config

    return preset_config(args.arch)[1] if args.arch else read_config(resolve_directory(args.model))


def cmd_compact(args: argparse.Namespace) -> None:
    from pruning.checkpoint import compact_checkpoint
    from pruning.plan import PruningPlan

    plan = PruningPlan.load(args.plan)
    log.info("compacting %s with %s", args.model, args.plan)
    manifest = compact_checkpoint(args.model, plan, args.out, method={"name": "plan-file", "plan_file": str(args.plan)})
    stats = manifest.stats
    print(
        f"wrote {args.out}: {stats.params:,} parameters (dense {stats.params_dense:,}, "
        f"{stats.params / stats.params_dense:.1%}); FLOPs ratio {stats.flops_ratio:.2f} at {stats.workload}"
    )


def cmd_export(args: argparse.Namespace) -> None:
    from pruning.export import export_checkpoint

    path = export_checkpoint(args.model, args.out)
    print(f"wrote {path}")


def cmd_bench(args: argparse.Namespace) -> None:
    from pruning.bench import BenchSettings, benchmark, format_table, plot_rows

    dense, plan, arch = _bench_subject(args)
    settings = BenchSettings(
        batches=tuple(args.batch),
        seqs=tuple(args.seq),
        runtimes=tuple(args.runtime),
        repeats=args.repeats,
        warmup=args.warmup,
        new_tokens=args.new_tokens,
        threads=args.threads,
        device=args.device,
    )
    rows = benchmark(dense, plan, arch, settings)
    to_stdout = args.json == "-"
    print(format_table(rows), file=sys.stderr if to_stdout else sys.stdout)
    if args.json:
        lines = "\n".join(row.model_dump_json() for row in rows)
        if to_stdout:
            print(lines)
        else:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(lines + "\n")
            print(f"wrote {args.json}")
    if args.plot:
        plot_rows(rows, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr if to_stdout else sys.stdout)


def _bench_subject(args: argparse.Namespace):
    """The dense model, the plan and a name: from a preset, a dense directory or a compact one."""
    from pruning.checkpoint import load_checkpoint
    from pruning.plan import PruningPlan
    from pruning.presets import build_preset
    from pruning.structure import geometry_of

    if args.arch:
        dense, arch, plan = build_preset(args.arch), args.arch, None
    else:
        checkpoint = load_checkpoint(args.model)
        arch, plan = Path(args.model).name, None
        if checkpoint.is_compact:
            # A compact checkpoint is benchmarked against the dense model it came from.
            plan = checkpoint.manifest.plan
            log.info("compact checkpoint: loading its dense source %s", checkpoint.manifest.source)
            dense = load_checkpoint(checkpoint.manifest.source).model
        else:
            dense = checkpoint.model
    if args.plan:
        plan = PruningPlan.load(args.plan)
    if plan is None:
        plan = PruningPlan.uniform(geometry_of(dense.config), args.keep_heads, args.keep_ffn)
    return dense, plan, arch


def cmd_demo(args: argparse.Namespace) -> None:
    from pruning.demo import run_demo

    run_demo(Path(args.workdir), qa_model=args.qa_model)


# ---- parser ---------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from pruning.presets import PRESETS

    parser = argparse.ArgumentParser(
        prog="blockserve", description="Block-pruned transformers: plan, compact, export, bench."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    plan = commands.add_parser("plan", help="write a uniform (synthetic) pruning plan for a model or preset")
    source = plan.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", type=_existing_dir, help="dense checkpoint directory or hub id")
    source.add_argument("--arch", choices=sorted(PRESETS), help="built-in architecture preset")
    plan.add_argument("--keep-heads", type=_fraction, required=True, help="fraction of heads kept per layer")
    plan.add_argument("--keep-ffn", type=_fraction, required=True, help="fraction of FFN units kept per layer")
    plan.add_argument("--out", required=True, help="plan JSON to write")
    plan.set_defaults(run=cmd_plan)

    compact = commands.add_parser("compact", help="apply a plan to a dense checkpoint, write compact format v1")
    compact.add_argument("--model", type=_existing_dir, required=True, help="dense checkpoint directory or hub id")
    compact.add_argument("--plan", type=_existing_file, required=True, help="pruning plan JSON")
    compact.add_argument("--out", required=True, help="output directory")
    compact.set_defaults(run=cmd_compact)

    export = commands.add_parser("export", help="export a (dense or compact) BERT QA checkpoint to ONNX")
    export.add_argument("--model", type=_existing_dir, required=True, help="checkpoint directory or hub id")
    export.add_argument("--out", required=True, help="output directory (model.onnx + tokenizer + manifest)")
    export.set_defaults(run=cmd_export)

    bench = commands.add_parser("bench", help="time dense vs compact in one process")
    subject = bench.add_mutually_exclusive_group(required=True)
    subject.add_argument("--arch", choices=sorted(PRESETS), help="preset with random weights")
    subject.add_argument("--model", type=_existing_dir, help="dense or compact checkpoint directory")
    bench.add_argument("--plan", type=_existing_file, help="plan JSON (default: uniform from --keep-*)")
    bench.add_argument("--keep-heads", type=_fraction, default=0.5, help="uniform plan: fraction of heads kept")
    bench.add_argument("--keep-ffn", type=_fraction, default=0.33, help="uniform plan: fraction of FFN units kept")
    bench.add_argument("--seq", type=_positive_int, nargs="+", default=[128], help="sequence lengths")
    bench.add_argument("--batch", type=_positive_int, nargs="+", default=[1], help="batch sizes")
    bench.add_argument("--runtime", choices=("torch", "onnx"), nargs="+", default=["torch"])
    bench.add_argument("--repeats", type=_positive_int, default=10, help="timed repeats per model (median reported)")
    bench.add_argument("--warmup", type=int, default=3, help="untimed runs per model first")
    bench.add_argument("--new-tokens", type=_positive_int, default=32, help="BART: tokens generated per call")
    bench.add_argument("--threads", type=_positive_int, help="intra-op threads (default: torch's)")
    bench.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    bench.add_argument("--json", help="write one JSON object per configuration to PATH ('-' for stdout)")
    bench.add_argument("--plot", help="write a PNG of speedup vs FLOPs ratio")
    bench.set_defaults(run=cmd_bench)

    demo = commands.add_parser("demo", help="compact, reload, check, export and time a QA model end to end")
    demo.add_argument("--qa-model", help="dense QA checkpoint (default: ../shared/models/minilm-l6-squad if present)")
    demo.add_argument("--workdir", default="artifacts/demo", help="where the demo writes its checkpoints")
    demo.set_defaults(run=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Our loggers say what we do; libraries (onnx_ir, matplotlib, ...) only speak up on warnings.
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    for name in ("pruning", "blockserve"):
        logging.getLogger(name).setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        args.run(args)
    except BlockserveError as error:
        print(f"blockserve {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
