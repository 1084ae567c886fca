"""Block masks driven by trainable scores: the mechanism of movement pruning.

A `MaskedLinear` splits its weight (out × in) into blocks of `block_rows × block_cols` and gives each
block one score. The forward pass multiplies the weight by a binary mask: a block is kept when its
score is at least the layer's current `threshold` (set by the pruner each step, in score units).
The backward pass is straight-through: the gradient of the binary mask goes to the score unchanged,
so a score accumulates −Σ weight × gradient over its block, the block's "movement".

A layer whose mask empties a whole output row also drops that row's bias: a pruned row is a removed
neuron. That is what makes the masked model and the compacted model compute the same function.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def straight_through(hard: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """`hard` in the forward pass; in the backward pass the gradient flows to `scores` as if mask = scores."""
    return hard + (scores - scores.detach())


def expand_blocks(block_values: torch.Tensor, block_rows: int, block_cols: int) -> torch.Tensor:
    """(R, C) per-block values → (R·block_rows, C·block_cols) per-weight values."""
    return block_values.repeat_interleave(block_rows, dim=0).repeat_interleave(block_cols, dim=1)


class MaskedLinear(nn.Module):
    """An `nn.Linear` whose weight is multiplied by a block mask of trainable scores.

    `scores` has one entry per block: shape (out / block_rows, in / block_cols). A layer may borrow
    another layer's scores transposed (`tied_to`): the FFN's second layer prunes the columns that
    match the rows its first layer prunes, so one score decides one FFN unit.
    """

    def __init__(
        self,
        linear: nn.Linear,
        block_rows: int,
        block_cols: int,
        *,
        tied_to: MaskedLinear | None = None,
        initial_score: float = 0.0,
        tie_seed: int = 0,
    ) -> None:
        super().__init__()
        out_features, in_features = linear.weight.shape
        if out_features % block_rows or in_features % block_cols:
            raise ValueError(f"block {block_rows}x{block_cols} does not tile a {out_features}x{in_features} weight")
        self.in_features, self.out_features = in_features, out_features
        self.weight = linear.weight
        self.bias = linear.bias
        self.block_rows, self.block_cols = block_rows, block_cols
        if tied_to is None:
            shape = (out_features // block_rows, in_features // block_cols)
            self.scores = nn.Parameter(torch.full(shape, initial_score, device=linear.weight.device))
            # Equal scores (all start equal; blocks without gradient stay so) would make a top-k threshold
            # keep every tied block. A fixed offset far below any learning step makes all scores distinct.
            generator = torch.Generator().manual_seed(tie_seed)
            self.register_buffer("tie_break", torch.rand(shape, generator=generator).to(linear.weight.device) * 1e-6)
            self._owner: tuple[MaskedLinear, ...] = ()
        else:
            self.scores = None
            # A tuple, so the owner is not registered twice as a submodule (its scores stay one parameter).
            self._owner = (tied_to,)
        # Score units; -inf keeps everything until the pruner sets a value.
        self.register_buffer("threshold", torch.tensor(-math.inf), persistent=False)

    def block_scores(self) -> torch.Tensor:
        """Scores shaped like this layer's blocks (the owner's, transposed, when tied)."""
        if self._owner:
            return self._owner[0].block_scores().t()
        return self.scores + self.tie_break

    def block_mask(self) -> torch.Tensor:
        """The binary block mask (no gradient)."""
        return (self.block_scores() >= self.threshold).to(self.weight.dtype)

    def weight_mask(self) -> torch.Tensor:
        """The binary mask at weight resolution, with the straight-through gradient to the scores."""
        scores = self.block_scores()
        hard = (scores >= self.threshold).to(self.weight.dtype)
        return expand_blocks(straight_through(hard, scores), self.block_rows, self.block_cols)

    def live_rows(self) -> torch.Tensor:
        """bool per output row: does any weight of the row survive?"""
        return self.block_mask().amax(dim=1).bool().repeat_interleave(self.block_rows)

    def live_columns(self) -> torch.Tensor:
        """bool per input column: does any weight of the column survive?"""
        return self.block_mask().amax(dim=0).bool().repeat_interleave(self.block_cols)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        bias = self.bias
        if bias is not None:
            bias = bias * self.live_rows().to(bias.dtype)
        return F.linear(hidden, self.weight * self.weight_mask(), bias)

    def baked(self) -> nn.Linear:
        """A plain `nn.Linear` with the mask applied: same outputs, no scores."""
        linear = nn.utils.skip_init(
            nn.Linear,
            self.in_features,
            self.out_features,
            bias=self.bias is not None,
            device=self.weight.device,
            dtype=self.weight.dtype,
        )
        with torch.no_grad():
            mask = expand_blocks(self.block_mask(), self.block_rows, self.block_cols)
            linear.weight.copy_(self.weight * mask)
            if self.bias is not None:
                linear.bias.copy_(self.bias * self.live_rows().to(self.bias.dtype))
        return linear

    def extra_repr(self) -> str:
        tied = ", tied" if self._owner else ""
        return f"{self.in_features}, {self.out_features}, block={self.block_rows}x{self.block_cols}{tied}"
