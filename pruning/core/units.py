"""Prunable units seen from the one linear layer each of them feeds.

A head reaches the residual stream only through its `head_dim` input columns of the attention
output projection; an FFN unit only through its one input column of the FFN `down` projection. So
every post-training operation — masking a unit to take a gradient, scaling a unit's output,
reading a unit's contribution — is an operation on those input columns, and works the same on a
dense and on a compact model (where the linear simply has fewer columns).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from torch import nn
from transformers import PreTrainedModel

from pruning.core.structure import geometry_of, iter_layers

FFN = "ffn"  # the block name of FFN units (attention blocks are "self_attn", "cross_attn")


@dataclass(frozen=True)
class UnitGroup:
    """The units of one block of one layer: `count` units of `width` input columns of `linear`."""

    stack: str
    layer: int
    block: str  # attention block name, or FFN
    linear: nn.Linear
    width: int  # head_dim for heads, 1 for FFN units
    residual_sum: nn.Module  # receives residual + `linear`'s output (see `structure.AttentionBlock`)

    @property
    def key(self) -> str:
        return group_key(self.stack, self.layer, self.block)

    @property
    def count(self) -> int:
        return self.linear.in_features // self.width


def group_key(stack: str, layer: int, block: str) -> str:
    return f"{stack}.{layer}.{block}"


def unit_groups(model: PreTrainedModel) -> Iterator[UnitGroup]:
    """Every group of prunable units, in execution order (layer by layer; attention before FFN)."""
    geometry = geometry_of(model.config)
    for stack, index, layer in iter_layers(model):
        head_dim = geometry.stack(stack.name).head_dim
        for block in stack.attention:
            yield UnitGroup(
                stack.name,
                index,
                block.name,
                layer.get_submodule(block.output),
                head_dim,
                layer.get_submodule(block.residual_sum),
            )
        yield UnitGroup(
            stack.name, index, FFN, layer.get_submodule(stack.ffn.down), 1, layer.get_submodule(stack.ffn.residual_sum)
        )
