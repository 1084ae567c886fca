"""The bench ratio takes the plan from `/v1/models` and says why when it cannot run."""

import pytest

from loadtests.bench_ratio import BenchResult, BenchSkipped, bench_variant
from loadtests.payloads import Payloads
from pruning.core.plan import PruningPlan
from pruning.core.structure import geometry_of
from service.config import BatchingConfig
from service.schemas import VariantInfo
from tests.factories import tiny_bert

PAYLOADS = Payloads("qa", ({"question": "q", "context": "c"},), "test", tokens=16)


def _info(name: str, checkpoint: str, plan: PruningPlan | None) -> VariantInfo:
    return VariantInfo(
        task="qa", variant=name, checkpoint=checkpoint, is_default=False, compact=plan is not None,
        source=None, plan=plan, plan_summary=plan.summary() if plan else None,
        plan_digest=plan.digest() if plan else None, params=1, flops_ratio=None, device="cpu", dtype="float32",
        runtime="torch", batching=BatchingConfig(), replica_pid=1, threads=1,
    )  # fmt: skip


@pytest.fixture(scope="module")
def plan():
    return PruningPlan.uniform(geometry_of(tiny_bert().config), 0.5, 0.5)


def test_the_plan_comes_from_the_service_not_from_the_variants_files(dense_bert_dir, plan, tmp_path):
    baseline = _info("dense", str(dense_bert_dir), None)
    pruned = _info("pruned", str(tmp_path / "only-on-the-server"), plan)  # not readable here: not needed
    result = bench_variant(baseline, pruned, PAYLOADS, repeats=1)
    assert isinstance(result, BenchResult) and result.row.seq == 16 and result.row.unit == "forward"
    assert result.row.params_compact < result.row.params_dense


def test_unreachable_checkpoints_and_dense_variants_are_skipped_with_a_reason(plan, tmp_path):
    remote = _info("dense", "/models/qa-dense", None)
    skipped = bench_variant(remote, _info("pruned", "/models/qa-pruned", plan), PAYLOADS, repeats=1)
    assert isinstance(skipped, BenchSkipped)
    assert "/models/qa-dense is not reachable from the load generator" in skipped.reason
    assert "blockserve bench --model /models/qa-pruned --seq 16" in skipped.reason  # what to run where they are
    dense = bench_variant(remote, _info("other", "/models/x", None), PAYLOADS, repeats=1)
    assert isinstance(dense, BenchSkipped) and "no plan" in dense.reason
