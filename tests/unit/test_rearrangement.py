"""Mask rearrangement on Fisher blocks: never worse than the diagonal's choice, same counts, exact on small cases."""

from __future__ import annotations

import itertools

import pytest
import torch

from pruning.core.plan import PruningPlan
from pruning.core.structure import geometry_of
from pruning.core.units import unit_groups
from pruning.methods.posttrain.importance import fisher_importance
from pruning.methods.posttrain.rearrangement import pruned_loss, rearrange_group, rearrange_plan
from pruning.tasks import make_task
from tests.factories import tiny_bert


def _best_kept(block: torch.Tensor, count: int) -> float:
    return min(pruned_loss(block, list(kept)) for kept in itertools.combinations(range(block.shape[0]), count))


def test_two_units_that_carry_the_same_signal_are_not_both_pruned():
    # Units 0 and 1 have correlated gradients: pruning both costs 1 + 1 + 2·0.9. The diagonal keeps
    # unit 2 (largest alone) and prunes 0 and 1; keeping one of the pair instead costs less.
    block = torch.tensor([[1.0, 0.9, 0.0], [0.9, 1.0, 0.0], [0.0, 0.0, 1.1]], dtype=torch.float64)
    kept, swaps = rearrange_group(block, [2])
    assert swaps == 1 and len(kept) == 1 and kept != [2]
    assert pruned_loss(block, kept) == pytest.approx(2.1) == pytest.approx(_best_kept(block, 1))
    assert pruned_loss(block, [2]) == pytest.approx(3.8)


@pytest.mark.parametrize("seed", range(5))
def test_rearrangement_never_raises_the_loss_keeps_the_count_and_is_near_the_optimum(seed):
    generator = torch.Generator().manual_seed(seed)
    gradients = torch.randn(40, 9, generator=generator, dtype=torch.float64)
    gradients[:, 1] = gradients[:, 0] + 0.1 * gradients[:, 1]  # a correlated pair, as FFN units have
    block = gradients.T @ gradients / 40
    diagonal_choice = sorted(torch.argsort(-block.diagonal())[:4].tolist())
    kept, _ = rearrange_group(block, diagonal_choice)
    assert len(kept) == 4 and len(set(kept)) == 4
    after, before = pruned_loss(block, kept), pruned_loss(block, diagonal_choice)
    assert after <= before + 1e-12
    # No single swap improves it any more (a local optimum of the swap neighbourhood) ...
    pruned = [u for u in range(9) if u not in kept]
    for out, back in itertools.product(kept, pruned):
        swapped = sorted([*(set(kept) - {out}), back])
        assert pruned_loss(block, swapped) >= after - 1e-9
    # ... and on these small blocks that is within 5 % of the exhaustive best.
    assert after <= 1.05 * _best_kept(block, 4) + 1e-12


def test_a_diagonal_block_changes_nothing():
    block = torch.diag(torch.tensor([3.0, 1.0, 2.0, 0.5], dtype=torch.float64))
    assert rearrange_group(block, [0, 2]) == ([0, 2], 0)
    assert rearrange_group(block, []) == ([], 0) and rearrange_group(block, [0, 1, 2, 3]) == ([0, 1, 2, 3], 0)


def test_fisher_blocks_hold_the_diagonal_and_rearranging_a_plan_keeps_its_counts(wordpiece_tokenizer, squad_file):
    task = make_task("question-answering", max_length=48, stride=16)
    features = task.train_features(wordpiece_tokenizer, task.load(squad_file))[:6]
    model = tiny_bert(vocab_size=len(wordpiece_tokenizer), layers=2)
    importance = fisher_importance(
        model, task, wordpiece_tokenizer, features, batch_size=4, progress=False, blocks=True
    )
    assert set(importance.blocks) == {group.key for group in unit_groups(model)}
    for key, block in importance.blocks.items():
        assert torch.allclose(block.diagonal(), importance.scores[key], rtol=1e-9, atol=1e-15)
        assert torch.allclose(block, block.T) and torch.linalg.eigvalsh(block).min() > -1e-9  # E[g gᵀ] is PSD
    counts = {key: len(scores) // 2 for key, scores in importance.scores.items()}
    plan = importance.plan_for_counts(geometry_of(model.config), counts)
    rearranged, record = rearrange_plan(plan, importance.blocks)
    reports = record.per_group
    assert isinstance(rearranged, PruningPlan) and len(reports) == len(counts)
    for (_, old), (_, new) in zip(plan.stacks.items(), rearranged.stacks.items(), strict=True):
        for old_layer, new_layer in zip(old.layers, new.layers, strict=True):
            assert len(old_layer.ffn_units) == len(new_layer.ffn_units)
            assert {b: len(k) for b, k in old_layer.heads.items()} == {b: len(k) for b, k in new_layer.heads.items()}
    assert all(r["loss_after"] <= r["loss_before"] + 1e-12 for r in reports)
    assert record.swaps == sum(r["swaps"] for r in reports) and record.loss_after <= record.loss_before + 1e-12
    assert not fisher_importance(
        model, task, wordpiece_tokenizer, features[:2], progress=False
    ).blocks  # off by default
