"""Mask tuning: rescale the kept units so each pruned layer reproduces the dense layer's output.

For every group of units (a layer's heads of one attention block, or its FFN units), in execution
order, the projection they feed outputs `Σ_k m_k · c_k + b`, where `c_k` is unit k's contribution
(its input columns times its weight columns) and m = 1 after compaction; the layer then normalises
the residual stream plus that output. We choose m by least squares so the pruned layer's
pre-normalisation sum matches the *dense* model's on the calibration data (Kwon et al., 2022):

    min_m  Σ_tokens ‖ (r' + Σ_k m_k c_k + b) − (r + y) ‖²  +  λ ‖m − 1‖²

with r, y the dense model's residual and projection output, r' the pruned model's residual. Inputs
come from the compact model whose earlier groups are already tuned, so each layer also corrects the
drift that pruning upstream has left in the residual stream. With t = r + y − r' − b the target
of Σ m_k c_k, the normal equations only need G = Σ cᵀc (units × units) and q = Σ cᵀt, accumulated
batch by batch: with x the projection's input and W its weight, G = blocksum((xᵀx) ⊙ (WᵀW)) and
q = blocksum(Σ x ⊙ (t W)) — no per-unit tensors.
Because m = 1 is feasible, the optimum's reconstruction error cannot exceed the untuned one's;
the solver checks that on the accumulated statistics and keeps m = 1 if rounding says otherwise.
m is then folded into the weight columns, so the checkpoint stays a stock compact model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from pydantic import BaseModel
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from pruning.core.units import UnitGroup, unit_groups
from pruning.tasks import Task

log = logging.getLogger(__name__)


class GroupTuning(BaseModel):
    key: str
    units: int
    error_before: float  # ‖pre-norm sum − dense pre-norm sum‖² per token, m = 1
    error_after: float  # the same with the tuned m
    scale_min: float
    scale_max: float


class _StopForward(Exception):
    """Raised by a hook once the activations it needs are captured: later layers need not run."""


@dataclass
class _Statistics:
    gram: torch.Tensor  # G
    correlation: torch.Tensor  # q
    target_energy: float  # Σ‖t‖²
    tokens: int


def _accumulate(
    stats: _Statistics | None, inputs: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, width: int
) -> _Statistics:
    x = inputs.reshape(-1, inputs.shape[-1]).double()
    y = target.reshape(-1, target.shape[-1]).double()
    w = weight.double()
    units = x.shape[1] // width
    gram = ((x.T @ x) * (w.T @ w)).view(units, width, units, width).sum(dim=(1, 3))
    correlation = (x * (y @ w)).sum(dim=0).view(units, width).sum(dim=1)
    energy = float(y.pow(2).sum())
    if stats is None:
        return _Statistics(gram, correlation, energy, x.shape[0])
    stats.gram += gram
    stats.correlation += correlation
    stats.target_energy += energy
    stats.tokens += x.shape[0]
    return stats


def _error(stats: _Statistics, scales: torch.Tensor) -> float:
    """Σ‖Σ m_k c_k − t‖² from the statistics: mᵀGm − 2mᵀq + Σ‖t‖²."""
    return float(scales @ stats.gram @ scales - 2 * scales @ stats.correlation + stats.target_energy)


def solve_scales(stats: _Statistics, ridge: float) -> tuple[torch.Tensor, float, float]:
    """(m, error with m = 1, error with m), both errors per token; m = 1 unless it is better."""
    units = stats.gram.shape[0]
    ones = torch.ones(units, dtype=torch.float64)
    before = _error(stats, ones)
    if units == 0:
        return ones, before / stats.tokens, before / stats.tokens
    # λ relative to the Gram diagonal, so the same setting means the same thing in every layer.
    damping = ridge * float(stats.gram.diagonal().mean().clamp(min=1e-12))
    system = stats.gram + damping * torch.eye(units, dtype=torch.float64)
    scales = torch.linalg.solve(system, stats.correlation + damping * ones)
    after = _error(stats, scales)
    if not after <= before:  # rounding, or a degenerate system: never make a layer worse
        scales, after = ones, before
    return scales, before / stats.tokens, after / stats.tokens


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
def tune_masks(
    compact: PreTrainedModel,
    dense: PreTrainedModel,
    task: Task,
    tokenizer: PreTrainedTokenizerBase,
    features: list[dict],
    batch_size: int = 1,
    ridge: float = 1e-2,
    progress: bool = True,
) -> list[GroupTuning]:
    """Tune `compact` (a compaction of `dense`) in place, group by group; a report per group.

    Batches of one feature by default: nothing is padded, so every token counted is a real one.
    """
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
    for group in tqdm(groups, desc="mask tuning", unit="group", disable=not progress):
        if group.count == 0:
            continue
        dense_sum_module = dense_groups[group.key].residual_sum
        bias = group.linear.bias if group.linear.bias is not None else 0.0
        stats = None
        for batch in batches:
            (dense_sum,) = _capture(dense, batch, [(dense_sum_module, "input")])
            inputs, output, pruned_sum = _capture(
                compact, batch, [(group.linear, "input"), (group.linear, "output"), (group.residual_sum, "input")]
            )
            pruned_residual = pruned_sum - output
            target = dense_sum - pruned_residual - bias  # what Σ m_k c_k should be
            stats = _accumulate(stats, inputs, group.linear.weight, target, group.width)
        scales, before, after = solve_scales(stats, ridge)
        columns = scales.to(group.linear.weight.dtype).repeat_interleave(group.width).to(device)
        group.linear.weight.mul_(columns)
        reports.append(
            GroupTuning(
                key=group.key,
                units=group.count,
                error_before=before,
                error_after=after,
                scale_min=float(scales.min()),
                scale_max=float(scales.max()),
            )
        )
        log.debug("%s: %d units, error %.4g → %.4g", group.key, group.count, before, after)
    return reports
