import copy

import pytest

from pruning.artifacts.compact import compact_model
from pruning.core.accounting import count_parameters, encoder_flops, flops, flops_ratio, removed_parameters
from pruning.core.plan import PruningPlan
from pruning.core.structure import Workload, geometry_of
from pruning.zoo.presets import preset_config
from tests.factories import tiny_bart, tiny_bert


def test_parameter_accounting_matches_the_compacted_model():
    for model in (tiny_bert(), tiny_bart()):
        geometry = geometry_of(model.config)
        plan = PruningPlan.uniform(geometry, 0.5, 0.25)
        removed = removed_parameters(geometry, plan)
        assert removed > 0
        assert count_parameters(model) - removed == count_parameters(compact_model(copy.deepcopy(model), plan))


def test_full_plan_has_ratio_one_and_fewer_units_cost_less():
    config = tiny_bart().config
    geometry = geometry_of(config)
    workload = Workload(32, target_len=8)
    assert flops_ratio(config, PruningPlan.full(geometry), workload, "summarization") == 1.0
    half = flops(config, PruningPlan.uniform(geometry, 0.5, 0.5), workload, "summarization")
    quarter = flops(config, PruningPlan.uniform(geometry, 0.25, 0.25), workload, "summarization")
    assert quarter < half < flops(config, PruningPlan.full(geometry), workload, "summarization")


def test_bert_base_flops_by_hand():
    """Per layer at L=384, H=768: QKV+O 4·2·L·H², scores+mix 2·2·L²·H, FFN 2·2·L·H·3072; QA head 2·L·H·2."""
    _, config = preset_config("bert-base-uncased")
    length, hidden = 384, 768
    per_layer = 4 * 2 * length * hidden**2 + 2 * 2 * length**2 * hidden + 2 * 2 * length * hidden * 3072
    expected = 12 * per_layer + 2 * length * hidden * 2
    plan = PruningPlan.full(geometry_of(config))
    assert flops(config, plan, Workload(length), "question-answering") == expected


def test_bert_base_uniform_ratio_is_the_quotable_number():
    _, config = preset_config("bert-base-uncased")
    plan = PruningPlan.uniform(geometry_of(config), 0.5, 0.33)
    assert flops_ratio(config, plan, Workload(384), "question-answering") == pytest.approx(2.53, abs=0.01)


def test_generate_flops_grow_with_new_tokens_and_cache_cross_attention():
    config = tiny_bart().config
    plan = PruningPlan.full(geometry_of(config))
    one = flops(config, plan, Workload(16, new_tokens=1), "summarization")
    two = flops(config, plan, Workload(16, new_tokens=2), "summarization")
    three = flops(config, plan, Workload(16, new_tokens=3), "summarization")
    # Step 1 also projects the encoder states for cross-attention; later steps reuse them,
    # and each later step attends to one more cached key than the one before.
    assert two - one < one - encoder_flops(config, plan, 16)
    assert three - two > two - one
