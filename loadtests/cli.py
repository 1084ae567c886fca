"""`blockserve loadtest` / `python -m loadtests`: the options (one model), and the run they describe."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from loadtests.run import PayloadOptions
from loadtests.runner import LoadSettings
from pruning.core.errors import BlockserveError
from pruning.core.options import ExistingFile, Flag, add_options, parse_settings


class LoadtestJob(BaseModel):
    """Where the service is, what load to apply, what to send, and where the report goes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str | None = Field(None, pattern=r"^https?://", description="a running service, e.g. http://127.0.0.1:8000")
    config: ExistingFile | None = Field(None, description="a Serve config (deploy/*.yaml) to start here for the test")
    port: int | None = Field(
        None, ge=1, le=65535, description="with --config: serve on this port instead of the file's"
    )
    load: LoadSettings = LoadSettings()
    payloads: PayloadOptions = PayloadOptions()
    bench_repeats: int = Field(20, ge=1, le=10**4, description="`blockserve bench` repeats for bench_ratio")
    no_bench: Annotated[bool, Flag(switch=True)] = Field(
        False, description="skip the in-process bench (bench_ratio: null)"
    )
    out: Path = Field(Path("loadtests/results/latest"), description="report directory")

    @model_validator(mode="after")
    def _one_service(self) -> LoadtestJob:
        if (self.url is None) == (self.config is None):
            raise ValueError("give exactly one of `url` (a running service) and `config` (start one here)")
        if self.port is not None and self.config is None:
            raise ValueError("`port` applies to a service started here from `config`")
        return self


def run(job: LoadtestJob) -> None:
    from loadtests.report import times
    from loadtests.run import run_loadtest

    summary = run_loadtest(
        job.load, job.payloads, job.out, url=job.url, config=job.config, port=job.port,
        bench_repeats=None if job.no_bench else job.bench_repeats, reproduce=_command_line(),
    )  # fmt: skip
    for ratio in summary.ratios:
        print(
            f"{summary.baseline} / {ratio.variant} p50 at concurrency 1: client {times(ratio.client)}, "
            f"server {times(ratio.server)}, bench {times(ratio.bench)}"
        )
    for slo in summary.slo:
        best = "none" if slo.max_throughput_rps is None else f"{slo.max_throughput_rps:.2f} req/s at {slo.at}"
        print(f"{slo.variant}: max throughput with p99 ≤ {summary.settings.slo_ms:g} ms: {best}")
    print(f"report: {job.out / 'report.md'}")


def _command_line() -> str:
    argv = sys.argv[1:] if Path(sys.argv[0]).name == "blockserve" else ["-m", "loadtests", *sys.argv[1:]]
    prefix = "blockserve" if Path(sys.argv[0]).name == "blockserve" else "python"
    return " ".join([prefix, *(shlex.quote(a) for a in argv)])


def main(argv: list[str] | None = None) -> int:
    """`python -m loadtests`: the same options and errors as `blockserve loadtest`."""
    import logging

    parser = argparse.ArgumentParser(prog="python -m loadtests", description="Load-test pruned against dense variants.")
    add_options(parser, LoadtestJob)
    namespace = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("blockserve").setLevel(logging.INFO)
    try:
        run(parse_settings(namespace, LoadtestJob))
    except BlockserveError as error:
        print(f"loadtest: error: {error}", file=sys.stderr)
        return 2
    return 0
