"""How much each head and each FFN unit matters, for post-training pruning.

- `fisher`: the diagonal of the empirical Fisher information of mask variables (Kwon et al., 2022):
  every unit gets a mask m = 1 multiplying its input columns of the projection it feeds, and its
  score is the mean over examples of (∂ loss_example / ∂ m)². Under a second-order expansion the
  loss grows by ≈ ½ Σ_pruned F_ii, so keeping the largest total Fisher loses the least.
  The masks are given one value *per example* (shape batch × units), which makes the gradient of
  the summed loss with respect to row b exactly example b's own gradient — per-example gradients
  from one backward pass.
- `magnitude`: Σ|w| over the unit's weights (Q/K/V rows and output columns; FFN up row and down
  column). Summed rather than averaged, so a head (4·hidden·head_dim weights) and an FFN unit
  (2·hidden weights) are compared by mass.
- `random`: U(0, 1) × the unit's parameter count, seeded: a baseline with no preference per parameter.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from pruning.core.errors import PlanError
from pruning.core.plan import LayerPlan, PruningPlan, StackPlan
from pruning.core.structure import Geometry, geometry_of, iter_layers
from pruning.core.units import FFN, group_key, unit_groups
from pruning.tasks import Task

log = logging.getLogger(__name__)

IMPORTANCE_METHODS = ("fisher", "magnitude", "random")


@dataclass
class Importance:
    """One score per unit, per group (`stack.layer.block`, see `pruning.core.units`); higher = keep."""

    method: str
    scores: dict[str, torch.Tensor] = field(default_factory=dict)
    # Fisher only, when asked: each group's full block E[g gᵀ] (its diagonal is `scores`), for
    # `rearrangement`; not written to importance.json (FFN blocks are units² numbers).
    blocks: dict[str, torch.Tensor] = field(default_factory=dict)

    def ranked(self, key: str) -> torch.Tensor:
        """Unit indices of a group, most important first (ties broken by index, so runs repeat)."""
        return torch.argsort(-self.scores[key], stable=True)

    def kept_value(self, key: str) -> torch.Tensor:
        """Total score kept when keeping the k best units, for k = 0..count (a cumulative sum)."""
        sorted_scores = self.scores[key][self.ranked(key)]
        return torch.cat([torch.zeros(1, dtype=torch.float64), sorted_scores.double().cumsum(0)])

    def plan_for_counts(self, geometry: Geometry, counts: dict[str, int]) -> PruningPlan:
        """The plan keeping, in each group, the `counts[key]` most important units."""
        stacks = {}
        for stack in geometry.stacks:
            layers = []
            for index in range(stack.num_layers):
                heads = {
                    block: self._best(group_key(stack.name, index, block), counts) for block in stack.attention_names
                }
                layers.append(LayerPlan(heads=heads, ffn_units=self._best(group_key(stack.name, index, FFN), counts)))
            stacks[stack.name] = StackPlan(num_heads=stack.num_heads, ffn_units=stack.ffn_units, layers=layers)
        return PruningPlan(architecture=geometry.architecture, stacks=stacks)

    def _best(self, key: str, counts: dict[str, int]) -> list[int]:
        count = counts[key]
        if not 0 <= count <= len(self.scores[key]):
            raise PlanError(f"{key}: cannot keep {count} of {len(self.scores[key])} units")
        return sorted(self.ranked(key)[:count].tolist())

    def to_dict(self) -> dict:
        return {"method": self.method, "scores": {key: value.tolist() for key, value in self.scores.items()}}


def _unit_batch_mask(mask: torch.Tensor, width: int, ndim: int) -> torch.Tensor:
    """(batch, units) → (batch, 1, ..., units × width), broadcastable over the linear's input."""
    expanded = mask.repeat_interleave(width, dim=-1)
    return expanded.view(expanded.shape[0], *([1] * (ndim - 2)), expanded.shape[-1])


def fisher_importance(
    model: PreTrainedModel,
    task: Task,
    tokenizer: PreTrainedTokenizerBase,
    features: list[dict],
    batch_size: int = 8,
    progress: bool = True,
    blocks: bool = False,
) -> Importance:
    """Diagonal empirical Fisher of unit masks over `features` (labelled task features); with `blocks`,
    also each group's whole Fisher block (the interactions between its units)."""
    if not features:
        raise PlanError("Fisher importance needs at least one calibration feature")
    groups = list(unit_groups(model))
    device = next(model.parameters()).device
    sums = {group.key: torch.zeros(group.count, dtype=torch.float64) for group in groups}
    products = (
        {group.key: torch.zeros(group.count, group.count, dtype=torch.float64) for group in groups} if blocks else {}
    )
    masks: dict[str, torch.Tensor] = {}

    def hook_for(group):
        def mask_input(module, args):
            (hidden, *rest) = args
            return (hidden * _unit_batch_mask(masks[group.key], group.width, hidden.dim()).to(hidden.dtype), *rest)

        return mask_input

    # Only the masks need gradients; dropout off so the scores describe the model as served.
    was_training = model.training
    requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
    model.eval().requires_grad_(False)
    handles = [group.linear.register_forward_pre_hook(hook_for(group)) for group in groups]
    try:
        starts = range(0, len(features), batch_size)
        for start in tqdm(starts, desc="fisher", unit="batch", disable=not progress):
            batch = {k: v.to(device) for k, v in task.collate(tokenizer, features[start : start + batch_size]).items()}
            rows = batch["input_ids"].shape[0]
            masks = {
                g.key: torch.ones(rows, g.count, device=device, dtype=torch.float32, requires_grad=True) for g in groups
            }
            outputs = model(**batch)
            task.example_losses(outputs, batch).sum().backward()
            for key, mask in masks.items():
                gradients = mask.grad.double().cpu()  # one row per example
                sums[key] += gradients.pow(2).sum(dim=0)
                if blocks:
                    products[key] += gradients.T @ gradients
    finally:
        for handle in handles:
            handle.remove()
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(requires_grad[name])
        model.train(was_training)
    return Importance(
        "fisher",
        {key: total / len(features) for key, total in sums.items()},
        blocks={key: total / len(features) for key, total in products.items()},
    )


def magnitude_importance(model: PreTrainedModel) -> Importance:
    """Σ|w| of each unit's weights (see the module docstring)."""
    geometry = geometry_of(model.config)
    scores = {}
    with torch.no_grad():
        for stack, index, layer in iter_layers(model):
            head_dim = geometry.stack(stack.name).head_dim
            for block in stack.attention:
                rows = sum(
                    layer.get_submodule(path).weight.abs().sum(dim=1) for path in (block.query, block.key, block.value)
                )
                columns = layer.get_submodule(block.output).weight.abs().sum(dim=0)
                per_head = (rows + columns).view(-1, head_dim).sum(dim=1)
                scores[group_key(stack.name, index, block.name)] = per_head.double().cpu()
            up = layer.get_submodule(stack.ffn.up).weight.abs().sum(dim=1)
            down = layer.get_submodule(stack.ffn.down).weight.abs().sum(dim=0)
            scores[group_key(stack.name, index, FFN)] = (up + down).double().cpu()
    return Importance("magnitude", scores)


def random_importance(model: PreTrainedModel, seed: int = 0) -> Importance:
    """U(0, 1) × parameters per unit, from a seeded generator."""
    geometry = geometry_of(model.config)
    generator = torch.Generator().manual_seed(seed)
    hidden = geometry.hidden_size
    scores = {}
    for group in unit_groups(model):
        params = 4 * hidden * group.width if group.block != FFN else 2 * hidden
        scores[group.key] = torch.rand(group.count, generator=generator, dtype=torch.float64) * params
    return Importance("random", scores)


def compute_importance(
    method: str,
    model: PreTrainedModel,
    task: Task,
    tokenizer: PreTrainedTokenizerBase,
    features: Iterable[dict],
    *,
    seed: int = 0,
    batch_size: int = 8,
    blocks: bool = False,
) -> Importance:
    if method == "fisher":
        return fisher_importance(model, task, tokenizer, list(features), batch_size=batch_size, blocks=blocks)
    if method == "magnitude":
        return magnitude_importance(model)
    if method == "random":
        return random_importance(model, seed)
    raise PlanError(f"unknown importance {method!r} (choose from {', '.join(IMPORTANCE_METHODS)})")
