"""`blockserve loadtest` / `python -m loadtests`: the options, and the run they describe."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from pydantic import ValidationError

from pruning.errors import BlockserveError
from pruning.plan import describe_validation_error


def add_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="a running service, e.g. http://127.0.0.1:8000")
    where.add_argument("--config", type=Path, help="a Serve config (deploy/*.yaml) to start here for the test")
    parser.add_argument("--port", type=int, help="with --config: serve on this port instead of the file's")
    parser.add_argument("--task", choices=("qa", "summarize"), default="qa", help="route under test (/v1/TASK)")
    parser.add_argument("--variants", nargs="+", default=["dense", "pruned"], help="the first is the baseline")
    parser.add_argument("--concurrency", type=int, nargs="*", default=[1, 2, 4, 8], help="closed-loop levels")
    parser.add_argument("--rates", type=float, nargs="*", default=[], help="open-loop Poisson rates (req/s)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measured window")
    parser.add_argument("--min-requests", type=int, default=10, help="closed loop: at least this many per window")
    parser.add_argument("--warmup", type=int, default=3, help="requests before each window, discarded")
    parser.add_argument("--repeats", type=int, default=3, help="windows per variant and level (order alternated)")
    parser.add_argument("--timeout", type=float, default=60.0, help="client timeout per request (s)")
    parser.add_argument("--slo-ms", type=float, default=1000.0, help="p99 objective for max throughput under SLO")
    parser.add_argument("--seed", type=int, default=0)
    payloads = parser.add_argument_group("payloads (default: real text from ../shared/data cut to --tokens)")
    payloads.add_argument("--payloads", type=Path, help="JSONL of request bodies instead of generated ones")
    payloads.add_argument("--data", type=Path, help="SQuAD JSON (qa) or CNN/DM JSONL (summarize) to cut from")
    payloads.add_argument("--tokens", type=int, help="model positions per request (qa: 384, summarize: 512)")
    payloads.add_argument("--count", type=int, default=64, help="distinct requests generated")
    payloads.add_argument("--new-tokens", type=int, help="summarize: max_new_tokens asked of every request")
    payloads.add_argument("--tokenizer", help="tokenizer to measure lengths with (default: the baseline's)")
    parser.add_argument("--bench-repeats", type=int, default=20, help="`blockserve bench` repeats for bench_ratio")
    parser.add_argument("--no-bench", action="store_true", help="skip the in-process bench (bench_ratio: null)")
    parser.add_argument("--out", type=Path, default=Path("loadtests/results/latest"), help="report directory")


def run(args: argparse.Namespace) -> None:
    from loadtests.run import PayloadOptions, run_loadtest
    from loadtests.runner import LoadSettings

    try:
        settings = LoadSettings(
            route=args.task,
            variants=tuple(args.variants),
            concurrency=tuple(args.concurrency),
            rates=tuple(args.rates),
            duration_s=args.duration,
            min_requests=args.min_requests,
            warmup=args.warmup,
            repeats=args.repeats,
            timeout_s=args.timeout,
            slo_ms=args.slo_ms,
            seed=args.seed,
        )
    except ValidationError as error:
        raise BlockserveError(describe_validation_error(error)) from None
    options = PayloadOptions(args.payloads, args.data, args.tokens, args.count, args.new_tokens, args.tokenizer)
    summary = run_loadtest(
        settings, options, args.out, url=args.url, config=args.config, port=args.port,
        bench_repeats=None if args.no_bench else args.bench_repeats, reproduce=_command_line(),
    )  # fmt: skip
    for ratio in summary.ratios:
        print(
            f"{summary.baseline} / {ratio.variant} p50 at concurrency 1: client {_x(ratio.client)}, "
            f"server {_x(ratio.server)}, bench {_x(ratio.bench)}"
        )
    for slo in summary.slo:
        best = "none" if slo.max_throughput_rps is None else f"{slo.max_throughput_rps:.2f} req/s at {slo.at}"
        print(f"{slo.variant}: max throughput with p99 ≤ {summary.settings.slo_ms:g} ms: {best}")
    print(f"report: {args.out / 'report.md'}")


def _x(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}×"


def _command_line() -> str:
    argv = sys.argv[1:] if Path(sys.argv[0]).name == "blockserve" else ["-m", "loadtests", *sys.argv[1:]]
    prefix = "blockserve" if Path(sys.argv[0]).name == "blockserve" else "python"
    return " ".join([prefix, *(shlex.quote(a) for a in argv)])


def main(argv: list[str] | None = None) -> int:
    import logging

    parser = argparse.ArgumentParser(prog="python -m loadtests", description="Load-test pruned against dense variants.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("blockserve").setLevel(logging.INFO)
    try:
        run(args)
    except BlockserveError as error:
        print(f"loadtest: error: {error}", file=sys.stderr)
        return 2
    return 0
