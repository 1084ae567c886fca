"""Compaction computes exactly what the masked dense model computes, for BERT and BART."""

import copy

import pytest
import torch
from transformers import BertConfig, BertModel

from pruning.artifacts.compact import compact_model, zero_pruned
from pruning.core.errors import PlanError
from pruning.core.plan import PruningPlan
from pruning.core.structure import geometry_of
from tests.factories import edited_plan, tiny_bart, tiny_bert

TOLERANCE = 1e-5


def _edited_plan(model, keep_heads, keep_ffn, edit) -> PruningPlan:
    return edited_plan(PruningPlan.uniform(geometry_of(model.config), keep_heads, keep_ffn), edit)


def _pair(model, plan):
    """(masked dense reference, compact model) from the same weights."""
    return zero_pruned(copy.deepcopy(model), plan), compact_model(copy.deepcopy(model), plan)


def _bert_inputs(vocab_size: int):
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(5, vocab_size, (3, 12), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0  # padding must behave identically too
    types = torch.zeros_like(ids)
    types[:, 6:] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def _scattered_bert_plan(data: dict) -> None:
    layers = data["stacks"]["encoder"]["layers"]
    layers[0]["heads"]["self_attn"] = [1, 3]  # non-contiguous heads
    layers[0]["ffn_units"] = [0, 7, 13, 63]
    layers[1]["heads"]["self_attn"] = []  # a layer with zero heads
    layers[2]["ffn_units"] = []  # a layer with zero FFN units


def test_linear_layers_are_physically_smaller():
    model = tiny_bert()
    plan = _edited_plan(model, 0.5, 0.25, _scattered_bert_plan)
    compact = compact_model(copy.deepcopy(model), plan)
    layers = compact.bert.encoder.layer
    assert layers[0].attention.self.query.weight.shape == (16, 32)  # 2 heads × head_dim 8
    assert layers[0].attention.output.dense.weight.shape == (32, 16)
    assert layers[0].intermediate.dense.weight.shape == (4, 32)
    assert layers[0].output.dense.weight.shape == (32, 4)
    assert layers[1].attention.self.key.weight.shape == (0, 32)
    assert layers[2].intermediate.dense.weight.shape == (0, 32)
    assert layers[2].attention.self.value.weight.shape == (16, 32)
    # The config keeps describing the dense architecture (format v1 relies on it).
    assert compact.config.num_attention_heads == 4 and compact.config.intermediate_size == 64


def test_bert_qa_logits_match_masked_model_including_empty_layers():
    model = tiny_bert()
    plan = _edited_plan(model, 0.5, 0.25, _scattered_bert_plan)
    masked, compact = _pair(model, plan)
    inputs = _bert_inputs(model.config.vocab_size)
    with torch.no_grad():
        expected, got = masked(**inputs), compact(**inputs)
    assert torch.allclose(expected.start_logits, got.start_logits, atol=TOLERANCE, rtol=0)
    assert torch.allclose(expected.end_logits, got.end_logits, atol=TOLERANCE, rtol=0)
    # The check has teeth: pruning changed the output relative to the dense model.
    with torch.no_grad():
        dense = model(**inputs)
    assert (dense.start_logits - got.start_logits).abs().max() > 1e-3


def test_every_layer_empty_still_runs():
    """Zero heads and zero FFN units everywhere: only residuals and layer norms remain."""
    model = tiny_bert()
    masked, compact = _pair(model, PruningPlan.uniform(geometry_of(model.config), 0.0, 0.0))
    inputs = _bert_inputs(model.config.vocab_size)
    with torch.no_grad():
        assert torch.allclose(masked(**inputs).start_logits, compact(**inputs).start_logits, atol=TOLERANCE, rtol=0)


def test_bare_bert_encoder_is_supported():
    torch.manual_seed(0)
    model = BertModel(
        BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    ).eval()
    masked, compact = _pair(model, PruningPlan.uniform(geometry_of(model.config), 0.5, 0.5))
    inputs = _bert_inputs(100)
    with torch.no_grad():
        expected, got = masked(**inputs).last_hidden_state, compact(**inputs).last_hidden_state
    assert torch.allclose(expected, got, atol=TOLERANCE, rtol=0)


def _scattered_bart_plan(data: dict) -> None:
    encoder, decoder = data["stacks"]["encoder"]["layers"], data["stacks"]["decoder"]["layers"]
    encoder[0]["heads"]["self_attn"] = []
    encoder[1]["heads"]["self_attn"] = [0, 2, 3]
    encoder[1]["ffn_units"] = []
    decoder[0]["heads"]["cross_attn"] = []
    decoder[0]["heads"]["self_attn"] = [3]
    decoder[1]["heads"]["self_attn"] = []
    decoder[1]["heads"]["cross_attn"] = [1, 2]
    decoder[1]["ffn_units"] = []


@pytest.fixture(scope="module")
def bart_pair():
    model = tiny_bart()
    plan = _edited_plan(model, 0.5, 0.5, _scattered_bart_plan)
    return _pair(model, plan)


def _bart_inputs(vocab_size: int):
    generator = torch.Generator().manual_seed(2)
    ids = torch.randint(4, vocab_size, (2, 11), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    return ids, mask


def test_bart_logits_match_masked_model(bart_pair):
    masked, compact = bart_pair
    ids, mask = _bart_inputs(masked.config.vocab_size)
    decoder_ids = torch.randint(4, masked.config.vocab_size, (2, 6), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = masked(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids).logits
        got = compact(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids).logits
    assert torch.allclose(expected, got, atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_bart_generate_gives_identical_tokens(bart_pair, num_beams):
    masked, compact = bart_pair
    ids, mask = _bart_inputs(masked.config.vocab_size)
    settings = {"max_new_tokens": 12, "min_new_tokens": 12, "num_beams": num_beams, "do_sample": False}
    with torch.no_grad():
        expected = masked.generate(input_ids=ids, attention_mask=mask, **settings)
        got = compact.generate(input_ids=ids, attention_mask=mask, **settings)
    assert expected.shape[1] >= 12
    assert torch.equal(expected, got)


def test_compacting_twice_is_refused():
    model = tiny_bert()
    plan = PruningPlan.uniform(geometry_of(model.config), 0.5, 0.5)
    compact = compact_model(copy.deepcopy(model), plan)
    with pytest.raises(PlanError, match="already compact"):
        compact_model(compact, plan)


def test_plan_for_another_model_is_refused():
    plan = PruningPlan.uniform(geometry_of(tiny_bert(layers=2).config), 0.5, 0.5)
    with pytest.raises(PlanError, match="plan has 2 layers, the model has 3"):
        compact_model(tiny_bert(), plan)
