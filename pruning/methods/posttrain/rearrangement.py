"""Mask rearrangement: which units a layer keeps, chosen with the interactions between them.

The search keeps, in each group (one layer's heads, or its FFN units), the `k` units of largest diagonal
Fisher. Under the second-order expansion the loss of pruning grows by ≈ ½ zᵀ F z, where z marks the
pruned units and F = E[g gᵀ] is the group's Fisher block (g: one example's gradient of its loss with
respect to the group's unit masks), so the diagonal alone ignores that two units can carry the same
signal (pruning both costs more than the sum) or cancel (less). Kwon et al. (2022) rearrange each
group's mask with its block; here, from the search's choice, the best single swap of a kept and a
pruned unit is applied while it lowers zᵀ F z — every swap keeps the count, so the plan's latency is
unchanged. Local search from the diagonal's answer, so the objective never gets worse.
"""

from __future__ import annotations

import logging

import torch
from pydantic import BaseModel, ConfigDict

from pruning.artifacts.records import RearrangementRecord
from pruning.core.plan import LayerPlan, PruningPlan, StackPlan
from pruning.core.units import FFN, group_key

log = logging.getLogger(__name__)


class GroupRearrangement(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str
    kept: int
    swaps: int
    loss_before: float  # zᵀ F z of the search's choice
    loss_after: float


def pruned_loss(block: torch.Tensor, kept: list[int]) -> float:
    """zᵀ F z for the mask keeping `kept`: the second-order loss increase (× 2) of pruning the rest."""
    pruned = torch.ones(block.shape[0], dtype=torch.float64)
    pruned[list(kept)] = 0.0
    return float(pruned @ block.double() @ pruned)


def rearrange_group(block: torch.Tensor, kept: list[int], max_swaps: int | None = None) -> tuple[list[int], int]:
    """The kept set after best-improvement swaps on zᵀ F z (same size); returns (kept, swaps made)."""
    fisher = block.double()
    size = fisher.shape[0]
    pruned = torch.ones(size, dtype=torch.float64)
    pruned[list(kept)] = 0.0
    if not 0 < len(kept) < size:
        return sorted(kept), 0
    diagonal = fisher.diagonal()
    pulled = fisher @ pruned  # (F z)_u: how much unit u interacts with what is pruned
    scale = max(float(diagonal.abs().max()), 1e-30)
    swaps = 0
    for _ in range(max_swaps if max_swaps is not None else 4 * size):
        keep_idx = torch.nonzero(pruned == 0).squeeze(1)
        prune_idx = torch.nonzero(pruned == 1).squeeze(1)
        # Pruning kept unit i and keeping pruned unit j changes zᵀFz by
        #   2(Fz)_i + F_ii − 2(Fz)_j + F_jj − 2F_ij   (z before the swap).
        change = (
            (2 * pulled[keep_idx] + diagonal[keep_idx])[:, None]
            + (diagonal[prune_idx] - 2 * pulled[prune_idx])[None, :]
            - 2 * fisher[keep_idx][:, prune_idx]
        )
        best = int(torch.argmin(change))
        row, column = divmod(best, change.shape[1])
        if float(change[row, column]) >= -1e-12 * scale:  # no swap lowers the loss (beyond rounding)
            break
        out, back = int(keep_idx[row]), int(prune_idx[column])
        pruned[out], pruned[back] = 1.0, 0.0
        pulled += fisher[:, out] - fisher[:, back]
        swaps += 1
    return sorted(torch.nonzero(pruned == 0).squeeze(1).tolist()), swaps


def rearrange_plan(
    plan: PruningPlan, blocks: dict[str, torch.Tensor], max_swaps: int | None = None
) -> tuple[PruningPlan, RearrangementRecord]:
    """`plan` with each group's kept units rearranged on its Fisher block (same counts everywhere), and
    the manifest's record of it (totals and one `GroupRearrangement` per group)."""
    reports: list[GroupRearrangement] = []

    def rearranged(key: str, kept: list[int]) -> list[int]:
        block = blocks[key]
        before = pruned_loss(block, kept)
        new, swaps = rearrange_group(block, kept, max_swaps)
        reports.append(GroupRearrangement(key=key, kept=len(kept), swaps=swaps, loss_before=before,
                                          loss_after=pruned_loss(block, new)))  # fmt: skip
        return new

    stacks = {}
    for stack_name, stack in plan.stacks.items():
        layers = []
        for index, layer in enumerate(stack.layers):
            heads = {
                block: rearranged(group_key(stack_name, index, block), kept) for block, kept in layer.heads.items()
            }
            ffn = rearranged(group_key(stack_name, index, FFN), layer.ffn_units)
            layers.append(LayerPlan(heads=heads, ffn_units=ffn))
        stacks[stack_name] = StackPlan(num_heads=stack.num_heads, ffn_units=stack.ffn_units, layers=layers)
    record = RearrangementRecord(
        swaps=sum(r.swaps for r in reports),
        groups_changed=sum(r.swaps > 0 for r in reports),
        loss_before=round(sum(r.loss_before for r in reports), 9),
        loss_after=round(sum(r.loss_after for r in reports), 9),
        per_group=[r.model_dump() for r in reports],
    )
    log.info("rearrangement: %d swaps in %d groups; zᵀFz %.4g → %.4g",
             record.swaps, len(reports), record.loss_before, record.loss_after)  # fmt: skip
    return PruningPlan(architecture=plan.architecture, stacks=stacks), record
