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
from pruning.artifacts.checkpoint import load_checkpoint
from pruning.core.task_registry import route_entry
from pruning.runtime.bench import BenchRow, BenchSettings, benchmark
from service.schemas import VariantInfo

log = logging.getLogger("blockserve.loadtest")


class BenchResult(BaseModel):
    variant: str
    command: str  # the `blockserve bench` command line that measures the same
    row: BenchRow


class BenchSkipped(BaseModel):
    variant: str
    reason: str


def bench_variant(
    baseline: VariantInfo, variant: VariantInfo, payloads: Payloads, repeats: int
) -> BenchResult | BenchSkipped:
    """Time the baseline's model against its compaction to the variant's plan, both as `/v1/models` says.

    The plan comes from the service itself; only the baseline's (dense) checkpoint has to be readable
    here, since the bench compacts it to that plan in this process.
    """
    name, entry = variant.variant, route_entry(payloads.task)
    if variant.plan is None:
        return BenchSkipped(variant=name, reason="not a compact checkpoint: no plan to bench")
    command = (
        f"blockserve bench --model {variant.checkpoint} --seq {payloads.tokens} --batch 1 "
        f"--runtime {variant.runtime} --dtype {variant.dtype} --threads {variant.threads} --repeats {repeats}"
        + (f" --new-tokens {payloads.new_tokens or 32}" if entry.generates else "")
    )
    if not Path(baseline.checkpoint).is_dir():
        return BenchSkipped(
            variant=name,
            reason=f"the baseline's checkpoint {baseline.checkpoint} is not reachable from the load generator "
            f"(no such directory here); run `{command}` where the checkpoints are",
        )
    if payloads.tokens is None:
        return BenchSkipped(variant=name, reason="payloads from a file have no fixed length")
    if variant.device != "cpu" and variant.device != baseline.device:
        return BenchSkipped(variant=name, reason="variants run on different devices")
    dense = load_checkpoint(baseline.checkpoint, device=variant.device).model
    settings = BenchSettings(
        batches=(1,),
        seqs=(payloads.tokens,),
        runtimes=(variant.runtime,),
        repeats=repeats,
        new_tokens=payloads.new_tokens or 32,
        threads=variant.threads,
        device=variant.device,
        dtype=variant.dtype,  # the numerics the replica serves in
    )
    log.info("bench: %s vs plan %s of %s at %d tokens, %d threads", baseline.checkpoint, variant.plan_digest,
             variant.checkpoint, payloads.tokens, variant.threads)  # fmt: skip
    rows = benchmark(dense, variant.plan, Path(variant.checkpoint).name, settings)
    row = next(r for r in rows if r.unit == entry.timed_unit)  # the bench unit that is one request's model work
    if variant.source and Path(variant.source).resolve() != Path(baseline.checkpoint).resolve():
        command += f"  (its manifest's source is {variant.source}; here the dense model is {baseline.checkpoint})"
    return BenchResult(variant=name, command=command, row=row)
