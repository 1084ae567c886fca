"""`blockserve bench` for the shapes a load test sent: the in-process ratio its HTTP ratios are judged by.

The service says (`GET /v1/models`) which checkpoint, runtime, device and thread count each variant
runs with; the payloads say the sequence length. The bench times the baseline's dense model against
its compaction to the variant's plan, batch 1, exactly as `blockserve bench --model VARIANT` does when
the variant's manifest names the baseline as its source.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pydantic import BaseModel

from loadtests.payloads import Payloads
from pruning.bench import BenchRow, BenchSettings, benchmark
from pruning.checkpoint import load_checkpoint, read_manifest

log = logging.getLogger("blockserve.loadtest")
UNITS = {"qa": "forward", "summarize": "generate"}  # the bench unit that is one request's model work


class BenchResult(BaseModel):
    variant: str
    command: str  # the `blockserve bench` command line that measures the same
    row: BenchRow


class BenchSkipped(BaseModel):
    variant: str
    reason: str


def _local(checkpoint: str) -> bool:
    return Path(checkpoint).is_dir()


def bench_variant(baseline: dict, variant: dict, payloads: Payloads, repeats: int) -> BenchResult | BenchSkipped:
    """Time `baseline`'s model against its compaction to `variant`'s plan (`/v1/models` entries)."""
    name = variant["variant"]
    if not variant.get("compact"):
        return BenchSkipped(variant=name, reason="not a compact checkpoint: no plan to bench")
    for info in (baseline, variant):
        if not _local(info["checkpoint"]):
            return BenchSkipped(variant=name, reason=f"{info['checkpoint']} is not a local directory here")
    if payloads.tokens is None:
        return BenchSkipped(variant=name, reason="payloads from a file have no fixed length")
    if variant["device"] != "cpu" and variant["device"] != baseline["device"]:
        return BenchSkipped(variant=name, reason="variants run on different devices")
    manifest = read_manifest(Path(variant["checkpoint"]))
    dense = load_checkpoint(baseline["checkpoint"], device=variant["device"]).model
    settings = BenchSettings(
        batches=(1,),
        seqs=(payloads.tokens,),
        runtimes=(variant["runtime"],),
        repeats=repeats,
        new_tokens=payloads.new_tokens or 32,
        threads=variant["threads"],
        device=variant["device"],
    )
    log.info("bench: %s vs %s at %d tokens, %d threads", baseline["checkpoint"], variant["checkpoint"],
             payloads.tokens, variant["threads"])  # fmt: skip
    rows = benchmark(dense, manifest.plan, Path(variant["checkpoint"]).name, settings)
    row = next(r for r in rows if r.unit == UNITS[payloads.task])
    command = (
        f"blockserve bench --model {variant['checkpoint']} --seq {payloads.tokens} --batch 1 "
        f"--runtime {variant['runtime']} --threads {variant['threads']} --repeats {repeats}"
        + (f" --new-tokens {settings.new_tokens}" if payloads.task == "summarize" else "")
    )
    if Path(manifest.source).resolve() != Path(baseline["checkpoint"]).resolve():
        command += f"  (its manifest's source is {manifest.source}; here the dense model is {baseline['checkpoint']})"
    return BenchResult(variant=name, command=command, row=row)
