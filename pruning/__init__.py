"""blockserve's offline package: pruning plans, compaction, compact checkpoints, export, benchmarks."""

from pruning.artifacts.checkpoint import (
    Checkpoint,
    Manifest,
    compact_checkpoint,
    load_checkpoint,
    load_pretrained,
    save_compact,
)
from pruning.artifacts.compact import compact_model, zero_pruned
from pruning.core.errors import BlockserveError, CheckpointError, PlanError, UnsupportedModelError
from pruning.core.plan import LayerPlan, PruningPlan, StackPlan

__all__ = [
    "BlockserveError",
    "Checkpoint",
    "CheckpointError",
    "LayerPlan",
    "Manifest",
    "PlanError",
    "PruningPlan",
    "StackPlan",
    "UnsupportedModelError",
    "compact_checkpoint",
    "compact_model",
    "load_checkpoint",
    "load_pretrained",
    "save_compact",
    "zero_pruned",
]
