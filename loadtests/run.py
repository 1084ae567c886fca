"""One load test from start to report: service → payloads → load windows → bench → summary → files."""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import httpx
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from loadtests.analysis import level_results, ratios, slo_results
from loadtests.bench_ratio import BenchResult, BenchSkipped, bench_variant
from loadtests.launch import ServiceError, served
from loadtests.payloads import Payloads, file_payloads
from loadtests.report import write_report
from loadtests.runner import LoadSettings, LoadTest, Window
from loadtests.summary import PayloadInfo, Summary, machine, nest
from pruning.core.errors import BlockserveError
from pruning.core.options import ExistingFile, Flag
from pruning.core.plan import describe_validation_error
from pruning.core.task_registry import route_entry
from pruning.zoo.shared_assets import sample_data
from service.schemas import VariantInfo

log = logging.getLogger("blockserve.loadtest")
VARIANT_LIST = TypeAdapter(list[VariantInfo])


PAYLOADS = "payloads (default: real text from ../shared/data cut to --tokens)"


class PayloadOptions(BaseModel):
    """What the load test sends (every field is a flag of `blockserve loadtest`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    file: Annotated[ExistingFile | None, Flag("--payloads", group=PAYLOADS)] = Field(
        None, description="JSONL of request bodies instead of generated ones"
    )
    data: Annotated[ExistingFile | None, Flag(group=PAYLOADS)] = Field(
        None, description="SQuAD JSON (qa) or CNN/DM JSONL (summarize) to cut from"
    )
    tokens: Annotated[int | None, Flag(group=PAYLOADS)] = Field(
        None, ge=8, le=65536, description="model positions per request (qa: 384, summarize: 512)"
    )
    count: Annotated[int, Flag(group=PAYLOADS)] = Field(64, ge=1, le=10**5, description="distinct requests generated")
    new_tokens: Annotated[int | None, Flag(group=PAYLOADS)] = Field(
        None, ge=1, le=4096, description="summarize: max_new_tokens asked of every request"
    )
    tokenizer: Annotated[str | None, Flag(group=PAYLOADS)] = Field(
        None, description="tokenizer to measure lengths with (default: the baseline's)"
    )


@dataclass(frozen=True)
class Measured:
    service: list[VariantInfo]
    payloads: Payloads
    windows: list[Window]
    seconds: float


def service_variants(url: str, route: str, variants: tuple[str, ...]) -> list[VariantInfo]:
    """The `GET /v1/models` entries of `variants` on `route`, in that order; an error names what is missing."""
    try:
        response = httpx.get(f"{url}/v1/models", timeout=60)
        response.raise_for_status()
    except httpx.HTTPError as error:
        raise ServiceError(f"cannot list the service's models at {url}/v1/models: {error}") from None
    try:
        infos = VARIANT_LIST.validate_python(response.json())
    except ValidationError as error:
        raise ServiceError(
            f"{url}/v1/models is not a blockserve model list: {describe_validation_error(error)}"
        ) from None
    served_here = {info.variant: info for info in infos if info.task == route}
    missing = [name for name in variants if name not in served_here]
    if missing:
        known = ", ".join(sorted(served_here)) or "none"
        raise ServiceError(f"/v1/{route} has no variant {', '.join(missing)} (served: {known})")
    return [served_here[name] for name in variants]


def make_payloads(route: str, options: PayloadOptions, baseline: VariantInfo) -> Payloads:
    if options.file:
        return file_payloads(route, options.file)
    from transformers import AutoTokenizer

    source = options.tokenizer or baseline.checkpoint
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as error:
        raise BlockserveError(
            f"cannot load a tokenizer from {source} to cut payloads to length ({error}); "
            "give --tokenizer, or --payloads with request bodies"
        ) from None
    # Relative when it can be, so reports name ../shared/data/... rather than this machine's absolute path.
    entry = route_entry(route)
    data = Path(os.path.relpath(options.data or sample_data(entry)))
    tokens = options.tokens or entry.default_workload.source_len
    return entry.resolve("payloads")(tokenizer, data, tokens, options.count, options.new_tokens)


def measure(url: str, settings: LoadSettings, options: PayloadOptions) -> Measured:
    service = service_variants(url, settings.route, settings.variants)
    payloads = make_payloads(settings.route, options, service[0])
    log.info("payloads: %s", payloads.describe())
    windows_total = len(settings.loads()) * settings.repeats * len(settings.variants)
    log.info("%d windows (%d loads × %d repeats × %d variants)", windows_total, len(settings.loads()),
             settings.repeats, len(settings.variants))  # fmt: skip
    started = time.perf_counter()
    windows = asyncio.run(LoadTest(url, settings, payloads).run())
    return Measured(service, payloads, windows, time.perf_counter() - started)


def run_loadtest(
    settings: LoadSettings,
    options: PayloadOptions,
    out: Path,
    *,
    url: str | None = None,
    config: Path | None = None,
    port: int | None = None,
    bench_repeats: int | None = 20,
    reproduce: str = "",
) -> Summary:
    """Measure against `url`, or against the service of `config` started here; bench; write the report to `out`."""
    if (url is None) == (config is None):
        raise ValueError("give exactly one of url and config")
    started_at = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    started = time.perf_counter()
    if config is not None:
        with served(config, port) as url:
            measured = measure(url, settings, options)
    else:
        measured = measure(url.rstrip("/"), settings, options)
    # The bench runs with the service idle (or, started here, shut down): it must not share the cores.
    bench: list[BenchResult | BenchSkipped] = []
    if bench_repeats:
        baseline = measured.service[0]
        bench = [bench_variant(baseline, info, measured.payloads, bench_repeats) for info in measured.service[1:]]
    bench_by_variant = {b.variant: b.row.speedup for b in bench if isinstance(b, BenchResult)}
    levels = level_results(measured.windows, settings)
    variant_ratios = ratios(levels, settings, bench_by_variant)
    headline = variant_ratios[0]
    summary = Summary(
        client_ratio=headline.client,
        server_ratio=headline.server,
        bench_ratio=headline.bench,
        baseline=settings.variants[0],
        compared=headline.variant,
        url=url,
        route=settings.route,
        started=started_at.isoformat(),
        seconds=time.perf_counter() - started,
        machine=machine(),
        settings=settings,
        payloads=PayloadInfo(
            description=measured.payloads.describe(),
            source=measured.payloads.source,
            count=len(measured.payloads.bodies),
            tokens=measured.payloads.tokens,
            new_tokens=measured.payloads.new_tokens,
        ),
        service=measured.service,
        ratios=variant_ratios,
        bench=bench,
        slo=slo_results(levels, settings),
        variants=nest(levels),
    )
    records = [record for window in measured.windows for record in window.records]
    paths = write_report(summary, records, out, reproduce)
    log.info("wrote %s", ", ".join(str(p) for p in paths.values()))
    return summary
