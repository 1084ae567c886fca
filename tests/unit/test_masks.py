import math

import pytest
import torch
from torch import nn

from pruning.methods.movement.masks import MaskedLinear, expand_blocks, straight_through


def _linear(out_features=8, in_features=6, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(in_features, out_features)


def test_expand_blocks_tiles_each_block_value():
    blocks = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    expanded = expand_blocks(blocks, 2, 3)
    assert expanded.shape == (4, 6)
    assert expanded[:2, :3].eq(1).all() and expanded[2:, 3:].eq(2).all() and expanded[:2, 3:].eq(0).all()


def test_straight_through_forward_is_hard_backward_is_identity():
    scores = torch.tensor([0.3, -0.2], requires_grad=True)
    hard = (scores > 0).float()
    mask = straight_through(hard, scores)
    assert mask.tolist() == [1.0, 0.0]
    (mask * torch.tensor([5.0, 7.0])).sum().backward()
    assert scores.grad.tolist() == [5.0, 7.0]


def test_everything_kept_until_a_threshold_is_set():
    linear = _linear()
    masked = MaskedLinear(linear, 2, 3)
    x = torch.randn(4, 6)
    assert torch.equal(masked(x), linear(x))


def test_forward_uses_masked_weight_and_drops_bias_of_dead_rows():
    linear = _linear()
    masked = MaskedLinear(linear, 2, 3)
    with torch.no_grad():
        masked.scores.copy_(torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, -1.0], [1.0, 1.0]]))
    masked.threshold.fill_(0.0)
    x = torch.randn(4, 6)
    weight = linear.weight.detach().clone()
    weight[2:4, 3:] = 0  # block (1, 1)
    weight[4:6] = 0  # blocks (2, 0) and (2, 1): rows 4-5 are dead
    bias = linear.bias.detach().clone()
    bias[4:6] = 0
    assert torch.allclose(masked(x), x @ weight.T + bias)
    assert masked.live_rows().tolist() == [True, True, True, True, False, False, True, True]
    assert masked.live_columns().all()


def test_score_gradient_is_the_blocks_movement():
    """dL/dscore of a block = Σ over its weights of weight × dL/d(masked weight)."""
    linear = _linear(4, 4)
    masked = MaskedLinear(linear, 2, 2)
    masked.threshold.fill_(-1.0)  # all kept
    x = torch.randn(3, 4)
    masked(x).pow(2).sum().backward()
    # Reference: the same loss through a plain weight, whose gradient we multiply by the weight.
    weight = linear.weight.detach().clone().requires_grad_(True)
    torch.nn.functional.linear(x, weight, linear.bias.detach()).pow(2).sum().backward()
    movement = (weight.grad * weight.detach()).reshape(2, 2, 2, 2).sum(dim=(1, 3))
    assert torch.allclose(masked.scores.grad, movement, atol=1e-5)


def test_tied_layer_masks_columns_matching_owner_rows():
    up, down = nn.Linear(4, 6), nn.Linear(6, 4)
    masked_up = MaskedLinear(up, 1, 4)
    masked_down = MaskedLinear(down, 4, 1, tied_to=masked_up)
    assert masked_down.scores is None
    with torch.no_grad():
        masked_up.scores.copy_(torch.tensor([[1.0], [-1.0], [1.0], [-1.0], [1.0], [1.0]]))
    for layer in (masked_up, masked_down):
        layer.threshold.fill_(0.0)
    assert masked_up.live_rows().tolist() == [True, False, True, False, True, True]
    assert masked_down.live_columns().tolist() == [True, False, True, False, True, True]
    # One parameter, registered once: an optimizer sees the unit score exactly once.
    module = nn.ModuleList([masked_up, masked_down])
    assert sum(p.numel() for n, p in module.named_parameters() if n.endswith("scores")) == 6


def test_baked_linear_computes_the_same_function():
    linear = _linear()
    masked = MaskedLinear(linear, 2, 3)
    with torch.no_grad():
        masked.scores.normal_()
    masked.threshold.fill_(0.2)
    baked = masked.baked()
    assert type(baked) is nn.Linear
    x = torch.randn(5, 6)
    assert torch.allclose(baked(x), masked(x))


def test_rejects_blocks_that_do_not_tile_the_weight():
    with pytest.raises(ValueError, match="does not tile"):
        MaskedLinear(_linear(8, 6), 3, 3)


def test_threshold_starts_open():
    assert MaskedLinear(_linear(), 2, 3).threshold.item() == -math.inf
