"""Reconstruction (weights and scales refits) and recovery (distillation after post-training pruning)."""

import copy

import pytest
import torch

from pruning.artifacts.compact import compact_model
from pruning.core.structure import geometry_of
from pruning.core.units import unit_groups
from pruning.methods.posttrain.importance import random_importance
from pruning.methods.posttrain.pipeline import PosttrainSettings
from pruning.methods.posttrain.reconstruction import (
    _accumulate,
    _accumulate_weights,
    _error,
    _scale_statistics,
    reconstruct,
    solve_scales,
    solve_weights,
)
from pruning.methods.posttrain.recovery import RecoverySettings, recover
from pruning.tasks import distillation_loss, make_task
from tests.factories import tiny_bert


@pytest.fixture(scope="module")
def qa_setup(wordpiece_tokenizer, squad_file):
    task = make_task("question-answering", max_length=48, stride=16)
    features = task.train_features(wordpiece_tokenizer, task.load(squad_file))
    return task, wordpiece_tokenizer, features


def _pruned_pair(tokenizer, seed=4, heads=2, units=20, sharpness=1.0, dropout=0.1):
    dense = tiny_bert(vocab_size=len(tokenizer), layers=3, dropout=dropout)
    with torch.no_grad():  # a random model's span logits are nearly flat: sharpen them to distil something
        dense.qa_outputs.weight.mul_(sharpness)
    importance = random_importance(dense, seed=seed)
    counts = {key: heads if key.endswith("attn") else units for key in importance.scores}
    plan = importance.plan_for_counts(geometry_of(dense.config), counts)
    return dense, plan, compact_model(copy.deepcopy(dense), plan).eval()


@pytest.mark.parametrize("with_bias", [True, False])
def test_scale_statistics_derived_from_the_weight_statistics_equal_accumulating_them(with_bias):
    generator = torch.Generator().manual_seed(1)
    weight = torch.randn(4, 6, generator=generator)
    bias = torch.randn(4, generator=generator) if with_bias else None
    direct, weights = None, None
    for _ in range(3):  # batches of different lengths, summed
        inputs = torch.randn(int(torch.randint(5, 30, (1,), generator=generator)), 6, generator=generator)
        target = torch.randn(inputs.shape[0], 4, generator=generator)
        direct = _accumulate(direct, inputs, weight, target - (bias if with_bias else 0.0), width=2)
        weights = _accumulate_weights(weights, inputs, target, bias=with_bias)
    derived = _scale_statistics(weights, weight, bias, width=2)
    assert torch.allclose(derived.gram, direct.gram, rtol=1e-6, atol=1e-6)  # the direct path subtracts b in float32
    assert torch.allclose(derived.cross, direct.cross, rtol=1e-6, atol=1e-6)  # the direct path subtracts b in float32
    assert derived.target_energy == pytest.approx(direct.target_energy, rel=1e-6)
    assert derived.tokens == direct.tokens


def test_weights_solve_is_never_worse_than_the_scales_it_starts_from():
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(80, 6, generator=generator)
    weight, bias = torch.randn(4, 6, generator=generator), torch.randn(4, generator=generator)
    target = inputs @ torch.randn(6, 4, generator=generator) + 0.3 * torch.randn(80, 4, generator=generator)
    scale_stats = _accumulate(None, inputs, weight, target - bias, width=2)
    weight_stats = _accumulate_weights(None, inputs, target)
    scales, _, scales_error = solve_scales(scale_stats, ridge=1e-3)
    start = torch.cat([weight.double() * scales.repeat_interleave(2)[None, :], bias.double()[:, None]], dim=1).T
    # Both statistics describe the same objective: the scales solution scores the same under either.
    assert _error(weight_stats, start) == pytest.approx(_error(scale_stats, scales), rel=1e-6)
    theta, before, after = solve_weights(weight_stats, start, ridge=1e-4)
    assert before == pytest.approx(scales_error, rel=1e-6)
    assert after < 0.5 * before  # a free linear map fits this target far better than rescaled columns
    # And the refit is the ridge least-squares optimum: the residual is orthogonal to the inputs up to λ.
    x = torch.cat([inputs.double(), torch.ones(80, 1, dtype=torch.float64)], dim=1)
    gradient = x.T @ (x @ theta - target.double())
    damping = 1e-4 * float(weight_stats.gram.diagonal().mean())
    assert torch.allclose(gradient, -damping * (theta - start), atol=1e-6)


def test_reconstruction_beats_scales_on_every_group_and_on_the_logits(qa_setup):
    task, tokenizer, features = qa_setup
    dense, plan, compact = _pruned_pair(tokenizer)
    scaled = copy.deepcopy(compact)
    reports = reconstruct(compact, dense, task, tokenizer, features[:8], mode="weights", progress=False)
    reconstruct(scaled, dense, task, tokenizer, features[:8], mode="scales", progress=False)
    assert len(reports) == 6 and all(r.mode == "weights" for r in reports)
    assert all(r.error_after <= r.error_scales <= r.error_before for r in reports)
    assert sum(r.kept == "weights" for r in reports) >= 5
    # Held-out windows: the refit model's logits are closer to the dense ones than the rescaled model's.
    batch = task.collate(tokenizer, features[8:16])
    with torch.no_grad():
        reference = dense(**batch).start_logits
        errors = {
            name: float((model(**batch).start_logits - reference).pow(2).mean())
            for name, model in (("weights", compact), ("scales", scaled))
        }
    assert errors["weights"] < errors["scales"], errors


def test_reconstruction_is_exact_when_the_removed_units_contribute_nothing(qa_setup):
    task, tokenizer, features = qa_setup
    dense, plan, _ = _pruned_pair(tokenizer, seed=7, heads=3, units=24)
    geometry = geometry_of(dense.config)
    head_dim = geometry.stack("encoder").head_dim
    with torch.no_grad():  # silence exactly the units the plan removes
        layers = [layer for layer in plan.stacks["encoder"].layers for _ in (0, 1)]  # attention, then FFN
        for group, layer in zip(unit_groups(dense), layers, strict=True):
            kept = layer.heads["self_attn"] if group.width > 1 else layer.ffn_units
            columns = torch.ones(group.linear.in_features, dtype=torch.bool)
            for unit in kept:
                columns[unit * group.width : (unit + 1) * group.width] = False
            group.linear.weight[:, columns] = 0.0
    assert head_dim == group.width or group.width == 1
    compact = compact_model(copy.deepcopy(dense), plan).eval()
    before = {name: p.clone() for name, p in compact.named_parameters()}
    reports = reconstruct(compact, dense, task, tokenizer, features[:6], mode="weights", progress=False)
    assert all(r.error_before == pytest.approx(0.0, abs=1e-8) for r in reports)
    for name, parameter in compact.named_parameters():
        assert torch.allclose(parameter, before[name], atol=1e-5), name
    batch = task.collate(tokenizer, features[:4])
    with torch.no_grad():
        assert torch.allclose(compact(**batch).start_logits, dense(**batch).start_logits, atol=1e-4)


def test_none_changes_nothing(qa_setup):
    task, tokenizer, features = qa_setup
    dense, _, compact = _pruned_pair(tokenizer)
    state = {k: v.clone() for k, v in compact.state_dict().items()}
    assert reconstruct(compact, dense, task, tokenizer, features[:4], mode="none", progress=False) == []
    assert all(torch.equal(v, compact.state_dict()[k]) for k, v in state.items())


def _distillation_loss(student, teacher, task, tokenizer, features) -> float:
    batch = task.collate(tokenizer, features)
    with torch.no_grad():
        logits, mask = task.distillation_logits(student(**batch), batch)
        reference, _ = task.distillation_logits(teacher(**batch), batch)
        return float(distillation_loss(logits, reference, 2.0, mask))


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_recovery_lowers_the_distillation_loss_and_records_the_run(qa_setup, tmp_path, precision):
    task, tokenizer, features = qa_setup
    dense, plan, compact = _pruned_pair(tokenizer, heads=1, units=4, sharpness=100.0, dropout=0.0)
    before = _distillation_loss(compact, dense, task, tokenizer, features[:16])
    settings = RecoverySettings(
        recover_steps=30, recover_batch_size=8, recover_lr=1e-4, recover_alpha=1.0,
        recover_precision="off" if precision == "float32" else precision,
    )  # fmt: skip
    record = recover(
        compact, dense, task, tokenizer, features[:16], settings, tmp_path / "recovery",
        identity={"plan": plan.digest()},
    )  # fmt: skip
    after = _distillation_loss(compact, dense, task, tokenizer, features[:16])
    assert after < 0.8 * before, (before, after)
    assert record.steps == 30 and record.features == 16 and record.precision == precision
    assert all(p.dtype == torch.float32 for p in compact.parameters())  # autocast keeps fp32 master weights
    assert record.distill_loss_last < record.distill_loss_first
    assert (tmp_path / "recovery" / "recovery.png").stat().st_size > 0


def test_a_time_budget_plans_steps_and_stops_at_the_deadline(qa_setup, tmp_path):
    task, tokenizer, features = qa_setup
    dense, plan, compact = _pruned_pair(tokenizer)
    settings = RecoverySettings(recover_minutes=0.05, recover_batch_size=4)  # 3 seconds
    record = recover(
        compact, dense, task, tokenizer, features[:16], settings, tmp_path / "r", identity={"plan": plan.digest()}
    )
    assert record.steps >= 1 and record.seconds < 3.0 + 2.0  # one step may finish after the deadline


def test_recovery_settings_take_one_budget_and_old_settings_still_read():
    with pytest.raises(ValueError, match="at most one recovery budget"):
        RecoverySettings(recover_steps=3, recover_minutes=1.0)
    assert not RecoverySettings().enabled
    old = PosttrainSettings.model_validate({"speedup": 1.5, "tune": False, "tune_samples": 32})
    assert old.reconstruct == "none" and old.reconstruct_samples == 32
    assert PosttrainSettings.model_validate({"speedup": 1.5, "tune": True}).reconstruct == "scales"
    assert PosttrainSettings(speedup=1.5).reconstruct == "weights"
