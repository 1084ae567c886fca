import pytest
import torch
from pydantic import ValidationError

from pruning.artifacts.compact import compact_model
from pruning.core.errors import PlanError
from pruning.core.plan import allowed_counts
from pruning.methods.movement.masks import MaskedLinear
from pruning.methods.movement.pruner import MovementPruner, MovementSettings
from tests.factories import tiny_bart, tiny_bert


def _randomise_scores(pruner: MovementPruner, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in pruner.score_parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator))


def _attach(model, total_steps=10, **settings):
    defaults = {"warmup_fraction": 0.0, "hold_fraction": 0.0}
    return MovementPruner.attach(model, MovementSettings(**{**defaults, **settings}), total_steps)


def _bart_inputs():
    ids = torch.randint(5, 100, (2, 12), generator=torch.Generator().manual_seed(1))
    return {"input_ids": ids, "decoder_input_ids": ids[:, :6]}


def test_attach_masks_every_prunable_linear_and_nothing_else():
    model = tiny_bart()
    _attach(model)
    masked = [name for name, module in model.named_modules() if isinstance(module, MaskedLinear)]
    # Per BART layer: 4 projections per attention block (1 encoder, 2 decoder) + fc1 + fc2.
    assert len(masked) == 2 * (4 + 2) + 2 * (8 + 2)
    assert not any("lm_head" in name or "embed" in name for name in masked)


def test_hybrid_gives_one_score_per_ffn_unit():
    model = tiny_bert()
    pruner = _attach(model, hybrid=True, block="8x8")
    ffn = pruner.groups["encoder.ffn"]
    assert len(ffn.owners) == 3 and len(ffn.members) == 6
    assert all(owner.scores.shape == (64, 1) for owner in ffn.owners)


def test_head_blocks_give_one_score_per_head_per_projection():
    pruner = _attach(tiny_bert(), block="head")
    attention = pruner.groups["encoder.attention"]
    # Q, K, V: (heads, 1); output projection: (1, heads).
    shapes = sorted({tuple(owner.scores.shape) for owner in attention.owners})
    assert shapes == [(1, 4), (4, 1)]


@pytest.mark.parametrize("block", ["8x8", "head", "4x16"])
def test_topk_reaches_the_scheduled_density_per_group(block):
    pruner = _attach(tiny_bert(), target_density=0.3, block=block)
    _randomise_scores(pruner)
    pruner.update(0)
    assert pruner.density() == pytest.approx(1.0)
    pruner.update(10)
    for group in pruner.groups.values():
        assert group.density() == pytest.approx(0.3, abs=0.03)


def test_threshold_mode_keeps_scores_above_logit_tau():
    pruner = _attach(tiny_bert(), mode="threshold", initial_threshold=0.0, final_threshold=0.5, block="8x8")
    _randomise_scores(pruner)
    pruner.update(0)
    assert pruner.density() == 1.0  # τ = 0 keeps everything
    pruner.update(10)  # τ = 0.5 ⇔ score ≥ 0
    scores = torch.cat([p.flatten() for p in pruner.score_parameters()])
    ffn_and_attention_kept = (scores >= 0).float().mean().item()
    assert pruner.density() == pytest.approx(ffn_and_attention_kept, abs=0.1)
    assert 0.3 < pruner.density() < 0.7


def test_regularization_follows_lambda_schedule_and_is_differentiable():
    pruner = _attach(tiny_bart(), lambda_attention=2.0, lambda_ffn=1.0, lambda_decoder=4.0, block="head")
    assert pruner.regularization(0).item() == 0.0  # λ starts at 0
    value = pruner.regularization(10)
    # All scores are 0 → sigmoid 0.5; groups: encoder attention 2, encoder ffn 1, decoder both 4.
    assert value.item() == pytest.approx(0.5 * (2.0 + 1.0 + 4.0 + 4.0))
    value.backward()
    # The regulariser only ever pushes scores down.
    assert all(p.grad.gt(0).all() for p in pruner.score_parameters())


def test_no_regularization_by_default():
    pruner = _attach(tiny_bert())
    assert pruner.regularization(10).item() == 0.0


@pytest.mark.parametrize("align", [1, 8])
@pytest.mark.parametrize(("make", "block"), [(tiny_bert, "8x8"), (tiny_bert, "head"), (tiny_bart, "8x8")])
def test_plan_then_compact_matches_the_masked_model(make, block, align):
    """With `align`, the plan rounds FFN widths up with masked (zero) units: still equal to the masked model."""
    model = make()
    pruner = _attach(model, target_density=0.3, block=block, align=align)
    _randomise_scores(pruner, seed=3)
    pruner.update(10)
    inputs = _bart_inputs() if make is tiny_bart else {"input_ids": torch.randint(5, 100, (2, 12))}
    with torch.no_grad():
        masked = model(**inputs)
    plan = pruner.plan()
    pruner.detach()
    assert not any(isinstance(m, MaskedLinear) for m in model.modules())
    compact_model(model, plan)
    with torch.no_grad():
        compact = model(**inputs)
    for name in ("start_logits", "end_logits", "logits"):
        if name in masked:
            assert torch.allclose(masked[name], compact[name], atol=1e-5)
    summary = plan.summary()
    assert all(s.heads_kept < s.heads_total for _, s in summary.items())
    assert all(s.ffn_units_kept < s.ffn_units_total for _, s in summary.items())
    for stack in plan.stacks.values():
        assert all(len(layer.ffn_units) in allowed_counts(stack.ffn_units, align) for layer in stack.layers)


def test_plan_keeps_a_head_only_if_value_rows_and_output_columns_survive():
    model = tiny_bert(layers=1)
    pruner = _attach(model, block="head", hybrid=True)
    roles = pruner.layers[0].attention["self_attn"]
    with torch.no_grad():
        roles["value"].scores.copy_(torch.tensor([[1.0], [-1.0], [1.0], [1.0]]))  # head 1: value rows gone
        roles["output"].scores.copy_(torch.tensor([[1.0, 1.0, -1.0, 1.0]]))  # head 2: output columns gone
        roles["query"].scores.fill_(-1.0)  # Q and K gone do not remove a head: attention becomes uniform
        roles["key"].scores.fill_(-1.0)
    for member in pruner.groups["encoder.attention"].members:
        member.threshold.fill_(0.0)
    assert pruner.plan().kept_heads("encoder", 0, "self_attn") == (0, 3)


def test_bart_plan_can_remove_heads_of_all_three_attention_kinds():
    model = tiny_bart()
    pruner = _attach(model, block="head", target_density=0.2)
    _randomise_scores(pruner, seed=5)
    pruner.update(10)
    plan = pruner.plan()
    kept = {
        (stack, block): sum(len(layer.heads[block]) for layer in plan.stacks[stack].layers)
        for stack, block in (("encoder", "self_attn"), ("decoder", "self_attn"), ("decoder", "cross_attn"))
    }
    assert all(count < 8 for count in kept.values()), kept


def test_report_names_density_heads_and_units():
    pruner = _attach(tiny_bart(), block="head")
    report = pruner.report()
    assert report["density"] == 1.0
    assert report["heads/encoder"] == 8 and report["heads/decoder"] == 16
    assert report["ffn_units/decoder"] == 128
    assert {"density/encoder.attention", "density/decoder.ffn"} <= set(report)


def test_rejects_bad_block_strings():
    with pytest.raises(ValidationError):
        MovementSettings(block="32 by 32")
    with pytest.raises(PlanError, match=r"encoder layer 0 attention.self.query: block 5x5 does not tile"):
        _attach(tiny_bert(), block="5x5")
