"""Reconstruction: after the plan is fixed, refit each pruned layer so it reproduces the dense layer.

Every group of units (a layer's heads of one attention block, or its FFN units) reaches the residual
stream through one projection, whose output the layer adds to the residual and normalises. In
execution order, the pruned model (earlier groups already refit) and the dense model run on
calibration windows, and the group's projection is refit by ridge least squares so the pruned
layer's *pre-normalisation sum* matches the dense one's — which also corrects the drift that pruning
upstream has left in the residual stream (r' ≠ r):

    target  T = (r + y) − r'          r, y: dense residual and projection output; r': pruned residual

Two refits, `mode`:

- `scales` (Kwon et al., 2022): one multiplier per kept unit, m, for `Σ_k m_k c_k + b ≈ T`, with c_k
  unit k's contribution (its input columns times its weight columns); pulled towards m = 1. The normal
  equations need only G = Σ cᵀc (units × units) and q = Σ cᵀ(T − b): with x the projection's input and W
  its weight, G = blocksum((xᵀx) ⊙ (WᵀW)) and q = blocksum(Σ x ⊙ ((T − b) W)).
- `weights` (as K-prune, Park et al., 2024, refits kept weights): every kept input column of the
  projection *and its bias*, Θ = [W | b]ᵀ, for `[x 1] Θ ≈ T`. Normal equations A = Σ [x 1]ᵀ[x 1] and
  B = Σ [x 1]ᵀ T, accumulated batch by batch (nothing stored beyond one layer's statistics), ridge
  λ·tr(A)/n towards the `scales` solution. The `scales` solution is one point of this problem, so the
  weights refit is kept only if its error on the accumulated statistics is not larger — it can never
  make the calibration objective worse than `scales`; and when the removed units contributed nothing,
  T is reproduced exactly by the current weights, which is what the solve returns.

Both write into the compact model's weights, so the checkpoint stays a stock compact model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import BaseModel
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from pruning.core.units import UnitGroup, unit_groups
from pruning.tasks import Task

log = logging.getLogger(__name__)


Reconstruct = Literal["weights", "scales", "none"]


class GroupTuning(BaseModel):
    """What reconstruction did to one group; errors are ‖pre-norm sum − dense pre-norm sum‖² per token."""

    key: str
    units: int
    mode: Reconstruct = "scales"
    error_before: float  # the compact weights as they were
    error_scales: float | None = None  # the `scales` solution
    error_after: float  # what was kept
    kept: Literal["weights", "scales", "unchanged"] = "scales"
    scale_min: float
    scale_max: float


class _StopForward(Exception):
    """Raised by a hook once the activations it needs are captured: later layers need not run."""


@dataclass
class _Statistics:
    """Normal equations of one least-squares refit, summed over batches: the error of a solution θ is
    θᵀAθ − 2θᵀB + Σ‖t‖² (vectors for `scales`, matrices of [W | b]ᵀ for `weights`)."""

    gram: torch.Tensor  # A: G (units × units) for scales; Σ [x 1]ᵀ[x 1] for weights
    cross: torch.Tensor  # B: q (units) for scales; Σ [x 1]ᵀ T (inputs [+ 1] × outputs) for weights
    target_energy: float  # Σ‖t‖²
    tokens: int

    def add(self, other: _Statistics | None) -> _Statistics:
        if other is None:
            return self
        other.gram += self.gram
        other.cross += self.cross
        other.target_energy += self.target_energy
        other.tokens += self.tokens
        return other


def _accumulate(
    stats: _Statistics | None, inputs: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, width: int
) -> _Statistics:
    """Scales: G = blocksum((xᵀx) ⊙ (WᵀW)), q = blocksum(Σ x ⊙ (t W)) for units of `width` columns."""
    x = inputs.reshape(-1, inputs.shape[-1]).double()
    y = target.reshape(-1, target.shape[-1]).double()
    w = weight.double()
    units = x.shape[1] // width
    gram = ((x.T @ x) * (w.T @ w)).view(units, width, units, width).sum(dim=(1, 3))
    correlation = (x * (y @ w)).sum(dim=0).view(units, width).sum(dim=1)
    return _Statistics(gram, correlation, float(y.pow(2).sum()), x.shape[0]).add(stats)


def _scale_statistics(stats: _Statistics, weight: torch.Tensor, bias: torch.Tensor | None, width: int) -> _Statistics:
    """The `scales` problem's statistics derived from the `weights` problem's, without a second pass.

    Both read the same inputs x and targets t; `scales` fits y = t − b. Blocksums are linear, so
    G = blocksum((Σ xᵀx) ⊙ (WᵀW)) and q = blocksum(rowsum((Σ xᵀt − (Σ x) bᵀ) ⊙ Wᵀ)) come from A and B,
    and Σ‖t − b‖² = Σ‖t‖² − 2 b·Σt + n‖b‖² — one Gram product per batch instead of three.
    """
    w = weight.double()
    inputs = w.shape[1]
    units = inputs // width
    xx, xt = stats.gram[:inputs, :inputs], stats.cross[:inputs]
    energy = stats.target_energy
    if bias is not None:
        b = bias.double()
        x_sum, t_sum = stats.gram[:inputs, inputs], stats.cross[inputs]
        xt = xt - torch.outer(x_sum, b)
        energy = energy - 2 * float(b @ t_sum) + stats.tokens * float(b @ b)
    gram = (xx * (w.T @ w)).view(units, width, units, width).sum(dim=(1, 3))
    correlation = (xt * w.T).sum(dim=1).view(units, width).sum(dim=1)
    return _Statistics(gram, correlation, energy, stats.tokens)


def _accumulate_weights(
    stats: _Statistics | None, inputs: torch.Tensor, target: torch.Tensor, bias: bool = True
) -> _Statistics:
    """Weights: A = Σ [x 1]ᵀ[x 1], B = Σ [x 1]ᵀ T (no ones column for a projection without bias)."""
    x = inputs.reshape(-1, inputs.shape[-1]).double()
    if bias:  # the bias is one more input column, always 1
        x = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device)], dim=1)
    t = target.reshape(-1, target.shape[-1]).double()
    return _Statistics(x.T @ x, x.T @ t, float(t.pow(2).sum()), x.shape[0]).add(stats)


def _error(stats: _Statistics, theta: torch.Tensor) -> float:
    """θᵀAθ − 2θᵀB + Σ‖t‖² (traces for matrices): the summed squared error of `theta`."""
    return float((theta * (stats.gram @ theta)).sum() - 2 * (theta * stats.cross).sum() + stats.target_energy)


def _ridge_solve(stats: _Statistics, start: torch.Tensor, ridge: float) -> tuple[torch.Tensor, float, float]:
    """(θ, error of `start`, error of θ), errors per token: ridge least squares pulled towards `start`
    (λ = ridge × mean Gram diagonal, so one setting means the same in every layer); θ = `start` unless
    the solution is at least as good (rounding, or a degenerate system, never makes a layer worse)."""
    before = _error(stats, start)
    if stats.gram.shape[0] == 0:
        return start, before / stats.tokens, before / stats.tokens
    damping = ridge * float(stats.gram.diagonal().mean().clamp(min=1e-12))
    system = stats.gram + damping * torch.eye(stats.gram.shape[0], dtype=torch.float64, device=stats.gram.device)
    theta = torch.linalg.solve(system, stats.cross + damping * start)
    after = _error(stats, theta)
    if not after <= before:
        theta, after = start, before
    return theta, before / stats.tokens, after / stats.tokens


def solve_scales(stats: _Statistics, ridge: float) -> tuple[torch.Tensor, float, float]:
    """(m, error with m = 1, error with m), errors per token; pulled towards m = 1."""
    return _ridge_solve(stats, torch.ones(stats.gram.shape[0], dtype=torch.float64), ridge)


def solve_weights(stats: _Statistics, start: torch.Tensor, ridge: float) -> tuple[torch.Tensor, float, float]:
    """(Θ, error of `start`, error of Θ), errors per token. `start` is [W | b]ᵀ of the projection (the
    `scales` solution folded in; no b row for a projection without bias); the ridge pulls towards it."""
    return _ridge_solve(stats, start, ridge)


def _capture(model: PreTrainedModel, batch: dict, taps: list[tuple[torch.nn.Module, str]]) -> list[torch.Tensor]:
    """What each (module, "input" | "output") tap sees in one forward pass of `batch`, in tap order.

    The pass stops at the last tap, so later layers do not run.
    """
    captured: dict[int, torch.Tensor] = {}
    handles = []
    for index, (module, kind) in enumerate(taps):
        last = index == len(taps) - 1

        def keep(tensor: torch.Tensor, index: int = index, last: bool = last) -> None:
            captured[index] = tensor.detach()
            if last:
                raise _StopForward

        if kind == "input":
            handles.append(module.register_forward_pre_hook(lambda m, args, keep=keep: keep(args[0])))
        else:
            handles.append(module.register_forward_hook(lambda m, args, output, keep=keep: keep(output)))
    try:
        model(**batch)
    except _StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return [captured[index] for index in range(len(taps))]


@torch.no_grad()
def reconstruct(
    compact: PreTrainedModel,
    dense: PreTrainedModel,
    task: Task,
    tokenizer: PreTrainedTokenizerBase,
    features: list[dict],
    mode: Reconstruct = "weights",
    ridge: float = 1e-2,
    weight_ridge: float = 0.1,
    batch_size: int = 1,
    progress: bool = True,
) -> list[GroupTuning]:
    """Refit `compact` (a compaction of `dense`) in place, group by group in execution order.

    Batches of one feature by default: nothing is padded, so every token counted is a real one.
    `ridge` pulls the scales towards 1, `weight_ridge` the refit weights towards the scaled ones.
    """
    if mode == "none":
        return []
    compact.eval()
    dense.eval()
    device = next(compact.parameters()).device
    batches = [
        {k: v.to(device) for k, v in task.collate(tokenizer, features[i : i + batch_size]).items()}
        for i in range(0, len(features), batch_size)
    ]
    dense_groups = {group.key: group for group in unit_groups(dense)}
    reports = []
    groups: list[UnitGroup] = list(unit_groups(compact))
    for group in tqdm(groups, desc=f"reconstruction ({mode})", unit="group", disable=not progress):
        if group.count == 0:
            continue
        linear = group.linear
        bias = linear.bias if linear.bias is not None else torch.zeros(linear.out_features, device=device)
        scale_stats, weight_stats = None, None
        for batch in batches:
            (dense_sum,) = _capture(dense, batch, [(dense_groups[group.key].residual_sum, "input")])
            inputs, output, pruned_sum = _capture(
                compact, batch, [(linear, "input"), (linear, "output"), (group.residual_sum, "input")]
            )
            target = dense_sum - (pruned_sum - output)  # what the projection's output should be
            if mode == "weights":
                weight_stats = _accumulate_weights(weight_stats, inputs, target, bias=linear.bias is not None)
            else:
                scale_stats = _accumulate(scale_stats, inputs, linear.weight, target - bias, group.width)
        if mode == "weights":
            scale_stats = _scale_statistics(weight_stats, linear.weight, linear.bias, group.width)
        scales, before, after = solve_scales(scale_stats, ridge)
        columns = scales.to(linear.weight.dtype).repeat_interleave(group.width).to(device)
        scaled = linear.weight.double() * columns.double()
        if linear.bias is not None:
            scaled = torch.cat([scaled, linear.bias.double()[:, None]], dim=1)
        scaled = scaled.T  # Θ: (inputs [+ 1]) × outputs
        report = GroupTuning(
            key=group.key,
            units=group.count,
            mode=mode,
            error_before=before,
            error_scales=after,
            error_after=after,
            kept="scales" if after < before else "unchanged",
            scale_min=float(scales.min()),
            scale_max=float(scales.max()),
        )
        theta = scaled
        if mode == "weights":
            theta, _, refit = solve_weights(weight_stats, scaled, weight_ridge)
            if refit < after:
                report = report.model_copy(update={"error_after": refit, "kept": "weights"})
        linear.weight.copy_(theta[: linear.in_features].T.to(linear.weight.dtype))
        if linear.bias is not None:
            linear.bias.copy_(theta[linear.in_features].to(linear.bias.dtype))
        reports.append(report)
        log.debug(
            "%s: %d units, error %.4g → %.4g (%s)", group.key, group.count, before, report.error_after, report.kept
        )
    return reports
