"""Parameters and FLOPs of a model under a plan, so `flops_ratio` is a number we can quote.

FLOPs count the matrix multiplications (2 per multiply-add) of the transformer layers and the task
head, per sequence; embeddings, layer norms, softmax and activations are left out (they are a few
per cent at the shapes we serve). `flops_ratio` is dense FLOPs / compact FLOPs: the speedup that
pure compute would give, to be compared with a measured speedup.
"""

from __future__ import annotations

import torch
from transformers import PretrainedConfig

from pruning.core.plan import PruningPlan
from pruning.core.structure import Geometry, StackGeometry, Workload, geometry_of, spec_for_config


def _attention_flops(hidden: int, width: int, queries: int, projected: int, keys: int) -> int:
    """One attention block: Q on `queries` tokens, K/V on `projected` tokens, scores over `keys`."""
    q_proj = 2 * queries * hidden * width
    kv_proj = 2 * 2 * projected * hidden * width
    scores_and_mix = 2 * 2 * queries * keys * width
    out_proj = 2 * queries * width * hidden
    return q_proj + kv_proj + scores_and_mix + out_proj


def _stack_flops(
    plan: PruningPlan, stack: StackGeometry, hidden: int, queries: int, self_keys: int, source_keys: int, cross_kv: int
) -> int:
    """A stack's layers for one pass of `queries` tokens.

    `self_keys`: keys self-attention sees; `cross_kv`: encoder tokens projected to K/V this pass
    (0 when cached); `source_keys`: encoder tokens cross-attention reads.
    """
    total = 0
    for index in range(stack.num_layers):
        for block in stack.attention_names:
            width = len(plan.kept_heads(stack.name, index, block)) * stack.head_dim
            if block in stack.cross_attention_names:
                total += _attention_flops(hidden, width, queries, cross_kv, source_keys)
            else:
                total += _attention_flops(hidden, width, queries, queries, self_keys)
        units = len(plan.kept_ffn_units(stack.name, index))
        total += 2 * 2 * queries * hidden * units
    return total


def flops(config: PretrainedConfig, plan: PruningPlan, workload: Workload, task: str) -> int:
    """Matmul FLOPs of one sequence through the model under `plan` (see module docstring)."""
    spec = spec_for_config(config)
    geometry = geometry_of(config)
    plan.check_fits(geometry)
    hidden = geometry.hidden_size
    head = spec.tasks[task]
    head_outputs = head.head_outputs if isinstance(head.head_outputs, int) else getattr(config, head.head_outputs)
    src = workload.source_len
    total = 0
    if "encoder" in plan.stacks:
        total += _stack_flops(plan, geometry.stack("encoder"), hidden, src, src, 0, 0)
    if "decoder" in plan.stacks and workload.target_len:
        tgt = workload.target_len
        total += _stack_flops(plan, geometry.stack("decoder"), hidden, tgt, tgt, src, src)
    if "decoder" in plan.stacks and workload.new_tokens:
        decoder = geometry.stack("decoder")
        for step in range(1, workload.new_tokens + 1):
            # The first step projects the encoder states to cross-attention K/V; later steps reuse them.
            cross_kv = src if step == 1 else 0
            total += _stack_flops(plan, decoder, hidden, 1, step, src, cross_kv)
    head_tokens = src if head.head_stack == "encoder" else workload.target_len + workload.new_tokens
    total += 2 * head_tokens * hidden * head_outputs
    return total


def encoder_flops(config: PretrainedConfig, plan: PruningPlan, source_len: int) -> int:
    """The encoder stack alone (what BART's encoder forward costs)."""
    geometry = geometry_of(config)
    plan.check_fits(geometry)
    return _stack_flops(plan, geometry.stack("encoder"), geometry.hidden_size, source_len, source_len, 0, 0)


def flops_ratio(config: PretrainedConfig, plan: PruningPlan, workload: Workload, task: str) -> float:
    """Dense FLOPs / FLOPs under `plan` for the same workload (≥ 1 for any pruning)."""
    dense = PruningPlan.full(geometry_of(config))
    return flops(config, dense, workload, task) / flops(config, plan, workload, task)


def removed_parameters(geometry: Geometry, plan: PruningPlan) -> int:
    """Weights and biases that compaction removes (Q/K/V rows + biases, O columns, FFN rows + columns)."""
    hidden = geometry.hidden_size
    removed = 0
    for stack in geometry.stacks:
        stack_plan = plan.stacks[stack.name]
        for layer in stack_plan.layers:
            for kept in layer.heads.values():
                gone = stack.num_heads - len(kept)
                removed += gone * stack.head_dim * (3 * (hidden + 1) + hidden)
            gone_units = stack.ffn_units - len(layer.ffn_units)
            removed += gone_units * (hidden + 1 + hidden)
    return removed


def count_parameters(model: torch.nn.Module) -> int:
    """Distinct parameters (tied embeddings counted once), on any device including meta."""
    return sum(parameter.numel() for parameter in model.parameters())
