"""FFN widths in multiples of `--align`: every plan producer keeps them, whatever it is asked."""

import random

import pytest

from pruning.core.plan import PruningPlan, allowed_counts, nearest_allowed
from pruning.core.structure import geometry_of
from pruning.methods.posttrain.importance import random_importance
from pruning.methods.posttrain.search import search_plan
from tests.factories import tiny_bart, tiny_bert
from tests.unit.test_posttrain import _synthetic_table

ALIGNS = (1, 3, 8, 16, 32)


def _ffn_counts(plan: PruningPlan) -> list[tuple[int, int]]:
    return [(len(layer.ffn_units), stack.ffn_units) for stack in plan.stacks.values() for layer in stack.layers]


def test_allowed_counts_are_multiples_and_the_dense_width():
    assert allowed_counts(10, 4) == [0, 4, 8, 10]
    assert allowed_counts(3072, 64)[-2:] == [3008, 3072] and allowed_counts(7, 1) == list(range(8))
    assert nearest_allowed(1014, 3072, 16) == 1008 and nearest_allowed(1014, 3072, 64) == 1024
    assert nearest_allowed(6, 10, 4) == 8  # a tie goes up
    assert nearest_allowed(10, 10, 4) == 10  # the dense width stays reachable


@pytest.mark.parametrize("model", [tiny_bert, tiny_bart], ids=["bert", "bart"])
def test_uniform_plans_keep_the_alignment(model):
    geometry = geometry_of(model().config)
    rng = random.Random(0)
    for _ in range(200):
        align, keep = rng.choice(ALIGNS), rng.random()
        plan = PruningPlan.uniform(geometry, rng.random(), keep, align)
        for count, size in _ffn_counts(plan):
            assert count in allowed_counts(size, align), (align, keep, count)
            assert abs(count - keep * size) <= align / 2 + 0.5 or count == size  # the nearest allowed width


@pytest.mark.parametrize("seed", range(12))
def test_the_post_training_search_keeps_the_alignment_and_the_budget(seed):
    model = tiny_bert(layers=3)
    geometry = geometry_of(model.config)
    table = _synthetic_table(model)  # dense 100 ms, everything removed 86.08 ms
    rng = random.Random(seed)
    align, budget = rng.choice(ALIGNS), rng.uniform(87.0, 100.0)
    result = search_plan(geometry, random_importance(model, seed=seed), table, budget, align=align)
    assert result.predicted_ms <= budget + 1e-9
    for count, size in _ffn_counts(result.plan):
        assert count in allowed_counts(size, align), (seed, align, count)
    unaligned = search_plan(geometry, random_importance(model, seed=seed), table, budget)
    assert result.kept_importance <= unaligned.kept_importance + 1e-9  # a constraint can only cost importance
