"""Compaction: apply a plan so the model's linear layers are physically smaller.

A head is `head_dim` rows of Q, K and V and the same `head_dim` columns of the output projection; an
FFN unit is one row of `up` and one column of `down`. Slicing those is exact: the compact model
computes what the dense model computes with the pruned heads' and units' contributions zeroed
(`zero_pruned` builds that reference). Stock transformers modules reshape with `-1` heads, so no
module is replaced except the `nn.Linear`s themselves, and a layer may keep zero heads or units.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel

from pruning.core.errors import PlanError
from pruning.core.plan import PruningPlan
from pruning.core.structure import geometry_of, iter_layers


@dataclass(frozen=True)
class LinearCut:
    """Keep `keep` of the `size` rows (axis 0) or columns (axis 1) of the linear at `path` in `layer`."""

    layer: nn.Module
    path: str
    axis: int
    keep: torch.Tensor  # int64 indices, sorted
    size: int  # rows/columns in the dense model


def _head_rows(kept_heads: list[int], head_dim: int) -> torch.Tensor:
    heads = torch.tensor(kept_heads, dtype=torch.long)
    return (heads[:, None] * head_dim + torch.arange(head_dim)).reshape(-1)


def plan_cuts(model: PreTrainedModel, plan: PruningPlan) -> Iterator[LinearCut]:
    """Every linear-layer cut that `plan` asks of `model` (one walk shared by compaction and masking)."""
    geometry = geometry_of(model.config)
    plan.check_fits(geometry)
    for stack, index, layer in iter_layers(model):
        stack_geometry = geometry.stack(stack.name)
        width = stack_geometry.num_heads * stack_geometry.head_dim
        for block in stack.attention:
            rows = _head_rows(plan.kept_heads(stack.name, index, block.name), stack_geometry.head_dim)
            for path in (block.query, block.key, block.value):
                yield LinearCut(layer, path, axis=0, keep=rows, size=width)
            yield LinearCut(layer, block.output, axis=1, keep=rows, size=width)
        units = torch.tensor(plan.kept_ffn_units(stack.name, index), dtype=torch.long)
        yield LinearCut(layer, stack.ffn.up, axis=0, keep=units, size=stack_geometry.ffn_units)
        yield LinearCut(layer, stack.ffn.down, axis=1, keep=units, size=stack_geometry.ffn_units)


def _dense_linear(cut: LinearCut) -> nn.Linear:
    linear = cut.layer.get_submodule(cut.path)
    if not isinstance(linear, nn.Linear):
        raise PlanError(f"{cut.path} is a {type(linear).__name__}, expected nn.Linear")
    found = linear.weight.shape[cut.axis]  # nn.Linear weight is (out_features, in_features)
    if found != cut.size:
        raise PlanError(
            f"{cut.path} has {found} {'rows' if cut.axis == 0 else 'columns'} where the dense model has "
            f"{cut.size}: compact a dense model, not one that is already compact"
        )
    return linear


def shrunk_linear(linear: nn.Linear, axis: int, keep: torch.Tensor) -> nn.Linear:
    """A new `nn.Linear` keeping `keep` output rows (axis 0) or input columns (axis 1).

    On the meta device only the shape changes, which is how checkpoints are loaded without
    allocating the dense model first.
    """
    out_features, in_features = linear.out_features, linear.in_features
    if axis == 0:
        out_features = len(keep)
    else:
        in_features = len(keep)
    weight = linear.weight
    new = nn.utils.skip_init(
        nn.Linear,
        in_features,
        out_features,
        bias=linear.bias is not None,
        device=weight.device,
        dtype=weight.dtype,
    )
    new.train(linear.training)
    new.weight.requires_grad_(weight.requires_grad)
    if weight.device.type == "meta":
        return new
    with torch.no_grad():
        new.weight.copy_(weight.index_select(axis, keep.to(weight.device)))
        if linear.bias is not None:
            bias = linear.bias.index_select(0, keep.to(weight.device)) if axis == 0 else linear.bias
            new.bias.copy_(bias)
    return new


def _replace(layer: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = layer.get_submodule(parent_path) if parent_path else layer
    setattr(parent, name, module)


def compact_model(model: PreTrainedModel, plan: PruningPlan) -> PreTrainedModel:
    """Shrink `model` in place to `plan` and return it. The config keeps the dense sizes."""
    for cut in list(plan_cuts(model, plan)):
        _replace(cut.layer, cut.path, shrunk_linear(_dense_linear(cut), cut.axis, cut.keep))
    return model


def zero_pruned(model: PreTrainedModel, plan: PruningPlan) -> PreTrainedModel:
    """The masked reference, in place: zero the output-projection and `down` columns of pruned units.

    A head or FFN unit contributes to the residual stream only through those columns, so this is
    exactly "the dense model with the pruned contributions removed".
    """
    with torch.no_grad():
        for cut in plan_cuts(model, plan):
            if cut.axis != 1:
                continue
            linear = _dense_linear(cut)
            dropped = torch.ones(cut.size, dtype=torch.bool)
            dropped[cut.keep] = False
            linear.weight[:, dropped.to(linear.weight.device)] = 0.0
    return model
