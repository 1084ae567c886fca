"""`blockserve` command line: finetune, prune, evaluate, plan, compact, export, bench, demo."""

from __future__ import annotations

import argparse
import json
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


def _positive_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if number <= 0:
        raise argparse.ArgumentTypeError(f"{value} must be > 0")
    return number


def _non_negative_float(value: str) -> float:
    if value.strip() == "0":
        return 0.0
    return _positive_float(value)


def _block(value: str) -> str:
    import re

    if value != "head" and not re.fullmatch(r"[1-9]\d*x[1-9]\d*", value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a block shape: use ROWSxCOLS (e.g. 32x32) or 'head'")
    return value


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value} must be ≥ 1")
    return number


# ---- commands -------------------------------------------------------------------------------------
def _task_settings(args: argparse.Namespace) -> dict:
    """Task options the user gave (the others keep each task's defaults)."""
    names = ("max_length", "stride", "max_source_tokens", "max_target_tokens", "num_beams", "no_repeat_ngram_size")
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def _write_json(result: dict, destination: str | None) -> None:
    text = json.dumps(result, indent=1)
    if destination == "-":
        print(text)
        return
    if destination:
        Path(destination).parent.mkdir(parents=True, exist_ok=True)
        Path(destination).write_text(text + "\n")
    summary = ", ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items())
    print(summary + (f"\nwrote {destination}" if destination else ""))


def _train_settings(args: argparse.Namespace, *, epochs: float | None = None, max_steps: int | None = None):
    from pruning.training import TrainSettings

    return TrainSettings(
        epochs=epochs if epochs is not None else args.epochs,
        max_steps=max_steps if epochs is not None else args.max_steps,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        score_learning_rate=getattr(args, "score_lr", 1e-2),
        distill_alpha=getattr(args, "distill_alpha", 0.0),
        temperature=getattr(args, "temperature", 2.0),
        warmup_fraction=args.warmup,
        log_every=args.log_every,
        eval_every=args.eval_every,
        save_every=args.save_every,
        seed=args.seed,
    )


def cmd_finetune(args: argparse.Namespace) -> None:
    from pruning.finetune import finetune

    summary = finetune(
        args.model,
        args.train,
        args.out,
        task_name=args.task,
        settings=_train_settings(args),
        task_settings=_task_settings(args),
        eval_file=args.eval,
        train_limit=args.train_limit,
        eval_limit=args.eval_limit,
        device=args.device,
        resume=args.resume,
    )
    print(f"wrote {args.out} ({summary['steps']} steps, {summary['train_seconds']:.0f} s)")
    if "evaluation" in summary:
        _write_json(summary["evaluation"], None)


def cmd_init(args: argparse.Namespace) -> None:
    from pruning.local_init import init_checkpoint

    init_checkpoint(args.arch, args.corpus, Path(args.out), vocab_size=args.vocab_size, seed=args.seed)
    print(f"wrote {args.out}: random {args.arch} weights, tokenizer trained on {len(args.corpus)} file(s)")


def cmd_serve(args: argparse.Namespace) -> None:
    from service.app import read_serve_config, run_service

    document, config = read_serve_config(args.config)
    run_service(document, config)


def cmd_kuberay(args: argparse.Namespace) -> None:
    from service.kuberay import ClusterSpec, write_rayservice

    cluster = ClusterSpec(
        name=args.name,
        image=args.image,
        models_claim=args.models_claim,
        gpu_workers_min=args.min_workers,
        gpu_workers_max=args.max_workers,
        gpus_per_worker=args.gpus_per_worker,
    )
    if cluster.gpu_workers_max < cluster.gpu_workers_min:
        raise BlockserveError(f"--max-workers ({args.max_workers}) is below --min-workers ({args.min_workers})")
    print(f"wrote {write_rayservice(args.config, args.out, cluster)}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from pruning.evaluate import evaluate_checkpoint

    result = evaluate_checkpoint(
        args.model,
        args.data,
        limit=args.limit,
        task_settings=_task_settings(args),
        device=args.device,
        predictions=args.predictions,
    )
    _write_json(result, args.json)


def cmd_prune(args: argparse.Namespace) -> None:
    needed = {"movement": ("teacher", "train", "eval"), "posttrain": ("model", "calib")}[args.method]
    missing = [f"--{name}" for name in needed if getattr(args, name) is None]
    if missing:
        raise BlockserveError(f"--method {args.method} needs {', '.join(missing)}")
    if args.method == "posttrain":
        _prune_posttrain(args)
    else:
        _prune_movement(args)


def _prune_posttrain(args: argparse.Namespace) -> None:
    from pydantic import ValidationError

    from pruning.plan import describe_validation_error
    from pruning.posttrain import PosttrainSettings, prune_posttrain

    try:
        settings = PosttrainSettings(
            speedup=args.speedup,
            latency_ms=args.latency_ms,
            importance=args.importance,
            calib_samples=args.calib_samples,
            tune=args.tune,
            tune_samples=args.tune_samples,
            batch=args.batch,
            seq=args.seq,
            new_tokens=args.new_tokens,
            runtime=args.runtime,
            device=args.device,
            threads=args.threads,
            repeats=args.repeats,
            corrections=args.corrections,
            tolerance=args.tolerance,
            seed=args.seed,
            task_settings=_task_settings(args),
            eval_limit=args.eval_limit,
        )
    except ValidationError as error:
        raise BlockserveError(describe_validation_error(error)) from None
    manifest = prune_posttrain(
        args.model,
        args.calib,
        args.out,
        settings,
        eval_file=args.eval,
        latency_cache=args.latency_cache,
        refresh_latency=args.refresh_latency,
    )
    method = manifest.method
    predicted, measured = method["predicted"], method["measured"]
    print(
        f"wrote {args.out}: {method['importance']} importance, budget {method['budget']['latency_ms']:.1f} ms "
        f"({settings.runtime}, {method['budget']['device']}), pruning took {method['seconds']['total_pruning']:.0f} s"
    )
    print(
        f"  latency: dense {measured['dense_ms']:.1f} ms → compact {measured['compact_ms']:.1f} ms, "
        f"measured speedup {measured['speedup']:.2f}× (predicted {predicted['speedup']:.2f}×)"
    )
    _print_plan_and_scores(manifest, ("dense", "pruned"))


def _print_plan_and_scores(manifest, names: tuple[str, ...]) -> None:
    for stack, counts in manifest.plan.summary().items():
        print(
            f"  {stack}: heads {counts['heads_kept']}/{counts['heads_total']}, "
            f"FFN units {counts['ffn_units_kept']}/{counts['ffn_units_total']}"
        )
    for name in names:
        if name in manifest.evaluation:
            scores = manifest.evaluation[name]
            metrics = {k: round(v, 2) for k, v in scores.items() if isinstance(v, float) and k != "seconds"}
            print(f"  {name}: {metrics}")


def _prune_movement(args: argparse.Namespace) -> None:
    from pruning.movement import MovementSettings
    from pruning.prune import MovementRecipe, prune_movement

    fill = None
    if args.fill_epochs or args.fill_steps:
        fill = _train_settings(args, epochs=args.fill_epochs or 1.0, max_steps=args.fill_steps)
    recipe = MovementRecipe(
        movement=MovementSettings(
            block=args.block,
            hybrid=args.hybrid,
            mode=args.mask,
            target_density=args.target_density,
            final_threshold=args.final_threshold,
            lambda_attention=args.lambda_attention,
            lambda_ffn=args.lambda_ffn,
            lambda_decoder=args.lambda_decoder,
            warmup_fraction=args.mask_warmup,
            hold_fraction=args.mask_hold,
        ),
        train=_train_settings(args),
        fill=fill,
        task_settings=_task_settings(args),
        train_limit=args.train_limit,
        eval_limit=args.eval_limit,
        eval_sample=args.eval_sample,
        evaluate_teacher=args.eval_teacher,
    )
    manifest = prune_movement(
        args.teacher,
        args.train,
        args.eval,
        args.out,
        recipe,
        workdir=args.workdir,
        device=args.device,
        resume=args.resume,
    )
    print(
        f"wrote {args.out}: density {manifest.method['final_density']:.3f}, FLOPs ratio {manifest.stats.flops_ratio:.2f}"
    )
    _print_plan_and_scores(manifest, ("teacher", "pruned", "filled"))


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


def cmd_latency(args: argparse.Namespace) -> None:
    from pruning.checkpoint import load_checkpoint
    from pruning.latency import LatencySettings, check_predictions, latency_table, random_plans
    from pruning.presets import build_preset
    from pruning.runners import request_shape
    from pruning.structure import geometry_of

    if args.arch:
        dense = build_preset(args.arch)
    else:
        checkpoint = load_checkpoint(args.model)
        if checkpoint.is_compact:
            raise BlockserveError(f"{args.model} is compact; the latency model is measured on the dense model")
        dense = checkpoint.model
    shape = request_shape(dense, args.batch, args.seq, args.new_tokens)
    settings = LatencySettings(
        shape=shape, runtime=args.runtime, device=args.device, repeats=args.repeats, threads=args.threads
    )
    table, cached = latency_table(dense, settings, args.latency_cache, refresh=args.refresh)
    print(
        f"latency model ({'cached' if cached else f'measured in {table.seconds:.0f} s'}): dense {table.dense_ms:.1f} ms "
        f"at {shape.describe()}, {table.key.runtime} on {table.key.device}, {table.key.threads} threads"
    )
    for name, curve in table.curves.items():
        half = curve.at(curve.counts[-1] / 2)
        print(f"  {name}: per layer {curve.fitted_ms[0]:+.2f} ms with none kept, {half:+.2f} ms with half")
    result = {"table": json.loads(table.model_dump_json()), "cached": cached, "checks": []}
    if args.check:
        checks = check_predictions(
            dense, table, random_plans(geometry_of(dense.config), args.check, args.seed), settings
        )
        for check in checks:
            print(
                f"  random plan ({check.plan}): predicted {check.predicted_ms:.1f} ms, "
                f"measured {check.measured_ms:.1f} ms, error {check.error:+.1%}"
            )
        errors = [abs(check.error) for check in checks]
        print(f"  mean |error| {sum(errors) / len(errors):.1%}, max {max(errors):.1%} over {len(checks)} random plans")
        result["checks"] = [check.model_dump() for check in checks]
    if args.json == "-":
        print(json.dumps(result, indent=1))
    elif args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.json}")


def cmd_demo(args: argparse.Namespace) -> None:
    from service.demo import run_demo

    run_demo(Path(args.zoo), args.qa_model, args.sum_model, once=args.once, port=args.port, repeats=args.repeats)


# ---- parser ---------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from pruning.presets import PRESETS

    parser = argparse.ArgumentParser(
        prog="blockserve", description="Block-pruned transformers: plan, compact, export, bench."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _add_finetune(commands)
    _add_prune(commands)
    _add_latency(commands)

    evaluate = commands.add_parser("evaluate", help="score a dense or compact checkpoint on a data file")
    evaluate.add_argument("--model", type=_existing_dir, required=True, help="checkpoint directory or hub id")
    evaluate.add_argument("--data", type=_existing_file, required=True, help="SQuAD JSON (QA) or JSONL (summarization)")
    evaluate.add_argument("--limit", type=_positive_int, help="score only the first N examples")
    evaluate.add_argument("--json", help="write the result to PATH ('-' for stdout)")
    evaluate.add_argument(
        "--predictions", help="write predictions to PATH (QA: SQuAD {id: answer} JSON; summarization: JSONL)"
    )
    evaluate.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    _add_task_options(evaluate)
    evaluate.set_defaults(run=cmd_evaluate)

    serve = commands.add_parser("serve", help="run the Ray Serve application of a config file (deploy/serve.yaml)")
    serve.add_argument("config", type=_existing_file, help="Ray Serve config file")
    serve.set_defaults(run=cmd_serve)

    kuberay = commands.add_parser(
        "kuberay", help="write the KubeRay RayService manifest for a Serve config (validated first)"
    )
    kuberay.add_argument("config", type=_existing_file, help="Ray Serve config file (e.g. deploy/serve-gpu.yaml)")
    kuberay.add_argument("--out", default="deploy/kuberay/rayservice.yaml")
    kuberay.add_argument("--name", default="blockserve", help="RayService name")
    kuberay.add_argument("--image", default="ghcr.io/blockserve/blockserve:latest", help="container image")
    kuberay.add_argument("--models-claim", default="blockserve-models", help="PVC with the checkpoints (/models)")
    kuberay.add_argument("--min-workers", type=_positive_int, default=1, help="GPU worker pods at least")
    kuberay.add_argument("--max-workers", type=_positive_int, default=4, help="GPU worker pods at most")
    kuberay.add_argument("--gpus-per-worker", type=_positive_int, default=1)
    kuberay.set_defaults(run=cmd_kuberay)

    init = commands.add_parser(
        "init", help="write a random preset model with a tokenizer trained on local data (offline stand-in)"
    )
    init.add_argument("--arch", choices=sorted(PRESETS), required=True, help="architecture preset")
    init.add_argument("--corpus", type=_existing_file, nargs="+", required=True, help="data files in the task format")
    init.add_argument("--vocab-size", type=_positive_int, default=8000)
    init.add_argument("--seed", type=int, default=0)
    init.add_argument("--out", required=True, help="output directory")
    init.set_defaults(run=cmd_init)

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

    _add_loadtest(commands)

    demo = commands.add_parser(
        "demo", help="serve a local zoo of dense and pruned QA and summarization models, query it, compare latency"
    )
    demo.add_argument("--qa-model", help="dense QA checkpoint or hub id (default: BERT-base shapes, random weights)")
    demo.add_argument("--sum-model", help="dense summarization checkpoint or hub id (default: BART-base, random)")
    demo.add_argument("--zoo", default="artifacts/zoo", help="where the zoo is built or reused")
    demo.add_argument("--once", action="store_true", help="exit after the check instead of serving until Ctrl-C")
    demo.add_argument("--port", type=_positive_int, default=8000)
    demo.add_argument("--repeats", type=_positive_int, default=5, help="timed requests per variant")
    demo.set_defaults(run=cmd_demo)
    return parser


def _add_loadtest(commands) -> None:
    from loadtests import cli as loadtest_cli

    loadtest = commands.add_parser(
        "loadtest", help="load-test variants over HTTP (closed/open loop), client- and server-side, vs bench"
    )
    loadtest_cli.add_arguments(loadtest)
    loadtest.set_defaults(run=loadtest_cli.run)


def _add_task_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("task options (defaults: QA 384/128; summarization 512/128 tokens, 4 beams)")
    group.add_argument("--max-length", type=_positive_int, help="QA: tokens per window")
    group.add_argument("--stride", type=_positive_int, help="QA: overlap between windows of a long context")
    group.add_argument("--max-source-tokens", type=_positive_int, help="summarization: article tokens kept")
    group.add_argument(
        "--max-target-tokens", type=_positive_int, help="summarization: summary tokens (train, generate)"
    )
    group.add_argument("--num-beams", type=_positive_int, help="summarization: beam width at evaluation")
    group.add_argument(
        "--no-repeat-ngram-size", type=int, help="summarization: never repeat an n-gram (default 3; 0 = off)"
    )


def _add_training_options(parser: argparse.ArgumentParser, *, lr: float, epochs: float) -> None:
    group = parser.add_argument_group("training")
    group.add_argument(
        "--epochs", type=_positive_float, default=epochs, help=f"passes over the data (default {epochs:g})"
    )
    group.add_argument("--max-steps", type=_positive_int, help="stop after N steps (overrides --epochs)")
    group.add_argument("--batch-size", type=_positive_int, default=16)
    group.add_argument("--lr", type=_positive_float, default=lr, help=f"weight learning rate (default {lr:g})")
    group.add_argument("--warmup", type=_fraction, default=0.1, help="share of steps with rising learning rate")
    group.add_argument("--train-limit", type=_positive_int, help="use only the first N training examples")
    group.add_argument("--eval-limit", type=_positive_int, help="use only the first N eval examples")
    group.add_argument("--eval-every", type=_positive_int, help="steps between evaluations (default: 4 per run)")
    group.add_argument("--log-every", type=_positive_int, default=20, help="steps between log lines")
    group.add_argument("--save-every", type=_positive_int, default=100, help="steps between resumable states")
    group.add_argument("--resume", action="store_true", help="continue an interrupted run from its work directory")
    group.add_argument("--seed", type=int, default=0)
    group.add_argument("--device", choices=("cpu", "cuda"), default="cpu")


def _add_finetune(commands) -> None:
    finetune = commands.add_parser("finetune", help="fine-tune a dense model on a task (e.g. to make a teacher)")
    finetune.add_argument("--model", type=_existing_dir, required=True, help="dense checkpoint directory or hub id")
    finetune.add_argument("--train", type=_existing_file, required=True, help="training data file")
    finetune.add_argument("--eval", type=_existing_file, help="evaluate on this file at the end (and 4 times during)")
    finetune.add_argument("--out", required=True, help="output directory")
    finetune.add_argument(
        "--task", choices=("question-answering", "summarization"), help="task head (default: from config.json)"
    )
    _add_training_options(finetune, lr=5e-5, epochs=2.0)
    _add_task_options(finetune)
    finetune.set_defaults(run=cmd_finetune)


def _add_latency(commands) -> None:
    latency = commands.add_parser(
        "latency", help="measure (or show the cached) latency model of a dense model; check it on random plans"
    )
    source = latency.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", type=_existing_dir, help="dense checkpoint directory or hub id")
    source.add_argument("--arch", help="built-in architecture preset (random weights)")
    latency.add_argument("--seq", type=_positive_int, help="request tokens (default: the task's, 384/512)")
    latency.add_argument("--batch", type=_positive_int, default=1)
    latency.add_argument("--new-tokens", type=_positive_int, default=32, help="summarization: generated tokens")
    latency.add_argument("--runtime", choices=("torch", "onnx"), default="torch")
    latency.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    latency.add_argument("--threads", type=_positive_int)
    latency.add_argument("--repeats", type=_positive_int, default=10)
    latency.add_argument("--check", type=int, default=0, help="measure N random plans against the prediction")
    latency.add_argument("--seed", type=int, default=0, help="seed of the random plans")
    latency.add_argument("--latency-cache", help="cache directory (default ~/.cache/blockserve/latency)")
    latency.add_argument("--refresh", action="store_true", help="re-measure even if cached")
    latency.add_argument("--json", help="write the table and checks to PATH ('-' for stdout)")
    latency.set_defaults(run=cmd_latency)


def _add_prune(commands) -> None:
    prune = commands.add_parser(
        "prune",
        help="prune a fine-tuned model → compact checkpoint (movement pruning, or post-training to a latency budget)",
        description=(
            "movement (the paper): --teacher, --train, --eval, --out; the rest follows the paper's recipe. "
            "posttrain (minutes, no training): --model, --calib, --speedup or --latency-ms, --out."
        ),
    )
    prune.add_argument("--method", choices=("movement", "posttrain"), default="movement")
    prune.add_argument("--teacher", type=_existing_dir, help="movement: dense fine-tuned checkpoint")
    prune.add_argument("--train", type=_existing_file, help="movement: training data file")
    prune.add_argument("--eval", type=_existing_file, help="evaluation data file (optional for posttrain)")
    prune.add_argument("--out", required=True, help="output directory (compact format v1)")
    prune.add_argument("--workdir", help="movement: resumable state, history (default: OUT.work next to OUT)")
    post = prune.add_argument_group("posttrain")
    post.add_argument("--model", type=_existing_dir, help="dense fine-tuned checkpoint")
    post.add_argument("--calib", type=_existing_file, help="calibration data (task format, labelled)")
    post.add_argument("--speedup", type=_positive_float, help="budget: dense latency / this")
    post.add_argument("--latency-ms", type=_positive_float, help="budget: this many milliseconds per request")
    post.add_argument("--importance", choices=("fisher", "magnitude", "random"), default="fisher")
    post.add_argument("--calib-samples", type=_positive_int, default=512, help="calibration examples (default 512)")
    post.add_argument(
        "--tune", action=argparse.BooleanOptionalAction, default=True, help="mask tuning by least squares (default on)"
    )
    post.add_argument("--tune-samples", type=_positive_int, default=64, help="features used by mask tuning")
    post.add_argument("--seq", type=_positive_int, help="request tokens the budget is for (default: task's, 384/512)")
    post.add_argument("--batch", type=_positive_int, default=1, help="requests per batch the budget is for")
    post.add_argument("--new-tokens", type=_positive_int, default=32, help="summarization: generated tokens")
    post.add_argument("--runtime", choices=("torch", "onnx"), default="torch", help="runtime the budget is for")
    post.add_argument("--threads", type=_positive_int, help="CPU threads (default: torch's)")
    post.add_argument("--repeats", type=_positive_int, default=10, help="timed repeats per latency measurement")
    post.add_argument(
        "--corrections", type=int, default=2, help="re-searches when the measured speedup misses the budget (default 2)"
    )
    post.add_argument("--tolerance", type=_fraction, default=0.05, help="allowed miss before correcting (default 0.05)")
    post.add_argument("--latency-cache", help="latency model cache (default ~/.cache/blockserve/latency)")
    post.add_argument("--refresh-latency", action="store_true", help="re-measure even if a cached model exists")
    masks = prune.add_argument_group("movement masks")
    masks.add_argument(
        "--block", type=_block, default="32x32", help="'RxC' blocks (R along the head axis) or 'head' (default 32x32)"
    )
    masks.add_argument(
        "--hybrid",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="FFN pruned by whole units (default: on)",
    )
    masks.add_argument("--mask", choices=("topk", "threshold"), default="topk", help="binariser (default topk)")
    masks.add_argument("--target-density", type=_fraction, default=0.25, help="topk: fraction of blocks kept")
    masks.add_argument("--final-threshold", type=_fraction, default=0.1, help="threshold: final τ on sigmoid(score)")
    masks.add_argument("--lambda-attention", type=_non_negative_float, default=0.0, help="regulariser λ, attention")
    masks.add_argument("--lambda-ffn", type=_non_negative_float, default=0.0, help="regulariser λ, FFN")
    masks.add_argument("--lambda-decoder", type=_non_negative_float, help="regulariser λ for the BART decoder")
    masks.add_argument("--mask-warmup", type=_fraction, default=0.1, help="share of steps before pruning starts")
    masks.add_argument("--mask-hold", type=_fraction, default=0.2, help="share of final steps at the final density")
    masks.add_argument("--score-lr", type=_positive_float, default=1e-2, help="learning rate of the scores")
    distill = prune.add_argument_group("distillation and hybrid-filled")
    distill.add_argument("--distill-alpha", type=_fraction, default=0.9, help="weight of the distillation loss")
    distill.add_argument("--temperature", type=_positive_float, default=2.0)
    distill.add_argument("--fill-epochs", type=_positive_float, help="hybrid-filled: fine-tune the compact model")
    distill.add_argument("--fill-steps", type=_positive_int, help="hybrid-filled: fine-tune for N steps")
    distill.add_argument("--eval-sample", type=_positive_int, default=200, help="examples per periodic evaluation")
    distill.add_argument(
        "--eval-teacher",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="score the teacher on --eval too (default: on)",
    )
    _add_training_options(prune, lr=3e-5, epochs=1.0)
    _add_task_options(prune)
    prune.set_defaults(run=cmd_prune)


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
