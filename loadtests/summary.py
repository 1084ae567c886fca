"""The load test's result as one data object: what `summary.json` holds and the report is written from."""

from __future__ import annotations

import os
import platform

from pydantic import BaseModel

from loadtests.analysis import LevelResult, SloResult, VariantRatio
from loadtests.bench_ratio import BenchResult, BenchSkipped
from loadtests.runner import LoadSettings
from service.schemas import VariantInfo


class PayloadInfo(BaseModel):
    description: str
    source: str
    count: int
    tokens: int | None
    new_tokens: int | None


class Summary(BaseModel):
    # The headline, for the first non-baseline variant: speedups at concurrency 1.
    client_ratio: float | None  # baseline p50 / variant p50, measured by the client
    server_ratio: float | None  # the same from the server's Prometheus histograms
    bench_ratio: float | None  # `blockserve bench` dense_ms / compact_ms for the same shapes
    baseline: str
    compared: str  # the variant the three ratios above are for
    url: str
    route: str
    started: str
    seconds: float
    machine: dict[str, str | int | None]
    settings: LoadSettings
    payloads: PayloadInfo
    service: list[VariantInfo]  # `GET /v1/models` entries of the variants under test
    ratios: list[VariantRatio]
    bench: list[BenchResult | BenchSkipped]
    slo: list[SloResult]
    # variant → mode ("closed" | "open") → level ("1", "2", "1.5" ...) → result
    variants: dict[str, dict[str, dict[str, LevelResult]]]

    def levels(self) -> list[LevelResult]:
        return [result for modes in self.variants.values() for levels in modes.values() for result in levels.values()]


def machine() -> dict[str, str | int | None]:
    import torch

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def nest(levels: list[LevelResult]) -> dict[str, dict[str, dict[str, LevelResult]]]:
    nested: dict[str, dict[str, dict[str, LevelResult]]] = {}
    for result in levels:
        nested.setdefault(result.variant, {}).setdefault(result.mode, {})[f"{result.level:g}"] = result
    return nested
