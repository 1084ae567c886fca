"""Block movement pruning (Lagunas et al., 2021): masks on a model, their schedule, the plan they leave.

`MovementPruner.attach(model, settings)` replaces every prunable linear layer of `model` (as named by
its `ArchitectureSpec`) with a `MaskedLinear`:
- attention Q, K, V and output projections get `block` masks (e.g. 32×32, or one block per head);
- the FFN gets the same blocks, or in **hybrid** mode one score per FFN unit shared by the row of the
  first layer and the matching column of the second.
Scores are grouped per stack and kind (`encoder.attention`, `decoder.ffn`, ...). Each step the
pruner sets every group's threshold from the schedule:
- `topk`: keep the group's highest-scoring blocks, density moving from 1 to `target_density`;
- `threshold`: keep blocks with sigmoid(score) > τ, τ moving from `initial_threshold` to
  `final_threshold`; the density is whatever the regulariser λ·mean(sigmoid(scores)) drives it to.
At the end `plan()` reads which heads and FFN units have anything left and `detach()` bakes the
masks into plain linear layers, ready for `compact.compact_model`.
"""

from __future__ import annotations

import itertools
import logging
import math
import re
from dataclasses import dataclass, field
from typing import Annotated, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from torch import nn
from transformers import PreTrainedModel

from pruning.core.errors import PlanError
from pruning.core.options import Flag
from pruning.core.plan import Alignment, LayerPlan, PruningPlan, StackPlan, allowed_at_least
from pruning.core.structure import StackSpec, geometry_of, iter_layers
from pruning.methods.movement.masks import MaskedLinear
from pruning.methods.movement.schedules import CubicSchedule

log = logging.getLogger(__name__)


MASKS = "movement masks"


class MovementSettings(BaseModel):
    """Hyper-parameters of movement pruning (the paper's recipe values as defaults where it has them)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    block: Annotated[str, Flag(group=MASKS)] = Field(
        "32x32", description="'RxC' blocks (R along the head axis) or 'head' (one block per head)"
    )
    hybrid: Annotated[bool, Flag(group=MASKS)] = Field(True, description="FFN pruned by whole units")
    mode: Annotated[Literal["topk", "threshold"], Flag("--mask", group=MASKS)] = Field("topk", description="binariser")
    target_density: Annotated[float, Flag(group=MASKS)] = Field(
        0.25, gt=0.0, le=1.0, description="topk: fraction of blocks kept at the end"
    )
    initial_threshold: Annotated[float, Flag(group=MASKS)] = Field(
        0.0, ge=0.0, lt=1.0, description="threshold: τ at the start (0 keeps all)"
    )
    final_threshold: Annotated[float, Flag(group=MASKS)] = Field(
        0.1, gt=0.0, lt=1.0, description="threshold: final τ on sigmoid(score)"
    )
    lambda_attention: Annotated[float, Flag(group=MASKS)] = Field(
        0.0, ge=0.0, le=1e6, description="regulariser λ, attention scores"
    )
    lambda_ffn: Annotated[float, Flag(group=MASKS)] = Field(0.0, ge=0.0, le=1e6, description="regulariser λ, FFN")
    lambda_decoder: Annotated[float | None, Flag(group=MASKS)] = Field(
        None, ge=0.0, le=1e6, description="regulariser λ for the BART decoder (default: the two above)"
    )
    warmup_fraction: Annotated[float, Flag("--mask-warmup", group=MASKS)] = Field(
        0.1, ge=0.0, lt=1.0, description="share of steps before pruning starts"
    )
    hold_fraction: Annotated[float, Flag("--mask-hold", group=MASKS)] = Field(
        0.2, ge=0.0, lt=1.0, description="share of final steps at the final density"
    )
    initial_score: Annotated[float, Flag(cli=False)] = 0.0
    # Rounded up when the plan is read: the extra units are masked ones whose weights are zero, so the
    # compact model still equals the masked one.
    align: Annotated[Alignment, Flag(group=MASKS)] = 1

    @model_validator(mode="after")
    def _schedule_fits(self) -> MovementSettings:
        if self.warmup_fraction + self.hold_fraction >= 1.0:
            raise ValueError(
                f"`warmup_fraction` + `hold_fraction` ({self.warmup_fraction:g} + {self.hold_fraction:g}) "
                "leave no steps for pruning: keep their sum below 1"
            )
        return self

    @field_validator("block")
    @classmethod
    def _block_form(cls, value: str) -> str:
        if value != "head" and not re.fullmatch(r"[1-9]\d*x[1-9]\d*", value):
            raise ValueError(f"block must look like '32x32' or be 'head', got {value!r}")
        return value


@dataclass
class MaskGroup:
    """The masks of one stack and kind, thresholded together and regularised with one λ."""

    name: str
    regularization: float
    owners: list[MaskedLinear] = field(default_factory=list)  # layers that own scores
    members: list[MaskedLinear] = field(default_factory=list)  # owners and layers tied to them

    def scores(self) -> torch.Tensor:
        """The scores the masks compare (tie-breaking offsets included)."""
        return torch.cat([owner.block_scores().reshape(-1) for owner in self.owners])

    def density(self) -> float:
        """Fraction of this group's masked weights that are kept."""
        kept = total = 0
        for member in self.members:
            kept += int(member.block_mask().sum().item()) * member.block_rows * member.block_cols
            total += member.weight.numel()
        return kept / total if total else 1.0


@dataclass
class _LayerMasks:
    stack: str
    index: int
    attention: dict[str, dict[str, MaskedLinear]]  # block name → role (query/key/value/output) → layer
    up: MaskedLinear
    down: MaskedLinear
    layer: nn.Module
    by_path: dict[str, MaskedLinear]  # path inside `layer` → the masked linear there


def _replace(layer: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    setattr(layer.get_submodule(parent_path) if parent_path else layer, name, module)


class MovementPruner:
    """Masks attached to one model, their per-step schedule, regulariser and the resulting plan."""

    def __init__(self, model: PreTrainedModel, settings: MovementSettings, total_steps: int) -> None:
        self.model = model
        self.settings = settings
        self.geometry = geometry_of(model.config)
        warmup = int(settings.warmup_fraction * total_steps)
        hold = min(int(settings.hold_fraction * total_steps), total_steps - warmup)
        if settings.mode == "topk":
            self.schedule = CubicSchedule(1.0, settings.target_density, total_steps, warmup, hold)
        else:
            self.schedule = CubicSchedule(
                settings.initial_threshold, settings.final_threshold, total_steps, warmup, hold
            )
            if not (settings.lambda_attention or settings.lambda_ffn or settings.lambda_decoder):
                log.warning(
                    "threshold mode with every λ at 0: nothing pushes scores down, so little will be pruned; "
                    "set --lambda-attention/--lambda-ffn (or use --mask topk for a fixed density)"
                )
        self.lambda_schedule = CubicSchedule(0.0, 1.0, total_steps, warmup, hold)  # × each group's λ
        self.groups: dict[str, MaskGroup] = {}
        self.layers: list[_LayerMasks] = []
        self._tie_seeds = itertools.count()  # one seed per masked layer, in attach order: reproducible runs
        self._attach()

    # ---- construction -------------------------------------------------------------------------
    def _block(self, hidden: int, head_dim: int) -> tuple[int, int]:
        if self.settings.block == "head":
            return head_dim, hidden
        rows, cols = (int(n) for n in self.settings.block.split("x"))
        return rows, cols

    def _group(self, stack: str, kind: str) -> MaskGroup:
        name = f"{stack}.{kind}"
        if name not in self.groups:
            by_kind = self.settings.lambda_attention if kind == "attention" else self.settings.lambda_ffn
            decoder = self.settings.lambda_decoder
            weight = decoder if stack == "decoder" and decoder is not None else by_kind
            self.groups[name] = MaskGroup(name, weight)
        return self.groups[name]

    def _attach(self) -> None:
        for stack, index, layer in iter_layers(self.model):
            self.layers.append(self._attach_layer(stack, index, layer))

    def _attach_layer(self, stack: StackSpec, index: int, layer: nn.Module) -> _LayerMasks:
        hidden = self.geometry.hidden_size
        rows, cols = self._block(hidden, self.geometry.stack(stack.name).head_dim)
        paths: dict[str, MaskedLinear] = {}

        def mask(path: str, group: MaskGroup, block: tuple[int, int], tied_to: MaskedLinear | None = None):
            try:
                masked = MaskedLinear(
                    layer.get_submodule(path),
                    *block,
                    tied_to=tied_to,
                    initial_score=self.settings.initial_score,
                    tie_seed=next(self._tie_seeds),
                )
            except ValueError as error:
                raise PlanError(f"{stack.name} layer {index} {path}: {error}") from None
            _replace(layer, path, masked)
            paths[path] = masked
            if tied_to is None:
                group.owners.append(masked)
            group.members.append(masked)
            return masked

        attention_group = self._group(stack.name, "attention")
        attention = {}
        for block in stack.attention:
            attention[block.name] = {
                role: mask(getattr(block, role), attention_group, (rows, cols)) for role in ("query", "key", "value")
            }
            # Output projections hold heads in columns: the block turns so R lies along heads.
            attention[block.name]["output"] = mask(block.output, attention_group, (cols, rows))
        ffn_group = self._group(stack.name, "ffn")
        if self.settings.hybrid:
            up = mask(stack.ffn.up, ffn_group, (1, hidden))
            down = mask(stack.ffn.down, ffn_group, (hidden, 1), tied_to=up)
        else:
            up_block = (rows, cols) if self.settings.block != "head" else (1, hidden)
            up = mask(stack.ffn.up, ffn_group, up_block)
            down = mask(stack.ffn.down, ffn_group, up_block[::-1])
        return _LayerMasks(stack.name, index, attention, up, down, layer, paths)

    @classmethod
    def attach(cls, model: PreTrainedModel, settings: MovementSettings, total_steps: int) -> MovementPruner:
        return cls(model, settings, total_steps)

    # ---- training -----------------------------------------------------------------------------
    def score_parameters(self) -> list[nn.Parameter]:
        return [owner.scores for group in self.groups.values() for owner in group.owners]

    def score_parameter_ids(self) -> set[int]:
        return {id(p) for p in self.score_parameters()}

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Set every group's threshold for `step` (call before each forward pass)."""
        value = self.schedule(step)
        for group in self.groups.values():
            if self.settings.mode == "topk":
                scores = group.scores()
                keep = max(1, round(value * scores.numel()))
                threshold = scores.topk(keep).values[-1]
            else:
                threshold = torch.tensor(-math.inf if value <= 0.0 else math.log(value / (1.0 - value)))
            for member in group.members:
                member.threshold.fill_(threshold.item())

    def regularization(self, step: int) -> torch.Tensor:
        """Σ over groups of λ(step) · mean(sigmoid(scores)): pushes scores, hence density, down."""
        ramp = self.lambda_schedule(step)
        total = self.score_parameters()[0].new_zeros(())
        for group in self.groups.values():
            if group.regularization > 0.0:
                total = total + ramp * group.regularization * torch.sigmoid(group.scores()).mean()
        return total

    def density(self) -> float:
        """Fraction of all masked weights that are kept."""
        kept = total = 0.0
        for group in self.groups.values():
            size = sum(member.weight.numel() for member in group.members)
            kept += group.density() * size
            total += size
        return kept / total

    def report(self) -> dict[str, float | int]:
        """Density overall and per group, heads and FFN units left: what the trainer logs."""
        summary = self.plan().summary()
        report: dict[str, float | int] = {"density": round(self.density(), 4)}
        for name, group in self.groups.items():
            report[f"density/{name}"] = round(group.density(), 4)
        for stack, counts in summary.items():
            report[f"heads/{stack}"] = counts.heads_kept
            report[f"ffn_units/{stack}"] = counts.ffn_units_kept
        return report

    # ---- result -------------------------------------------------------------------------------
    @torch.no_grad()
    def plan(self) -> PruningPlan:
        """Heads and FFN units with anything left under the current masks.

        A head is gone when its value rows or its output-projection columns are all masked (its
        contribution is then exactly zero, bias included); an FFN unit when its first-layer row or
        its second-layer column is.
        """
        stacks: dict[str, StackPlan] = {}
        for stack in self.geometry.stacks:
            layers = []
            for masks in (m for m in self.layers if m.stack == stack.name):
                heads = {}
                for block, roles in masks.attention.items():
                    values = roles["value"].live_rows().view(stack.num_heads, stack.head_dim).any(dim=1)
                    outputs = roles["output"].live_columns().view(stack.num_heads, stack.head_dim).any(dim=1)
                    heads[block] = torch.nonzero(values & outputs).flatten().tolist()
                layers.append(LayerPlan(heads=heads, ffn_units=self._kept_units(masks, stack.ffn_units)))
            stacks[stack.name] = StackPlan(num_heads=stack.num_heads, ffn_units=stack.ffn_units, layers=layers)
        return PruningPlan(architecture=self.geometry.architecture, stacks=stacks)

    def _kept_units(self, masks: _LayerMasks, size: int) -> list[int]:
        """FFN units with anything left, plus the best-scored masked ones up to an allowed width."""
        live = masks.up.live_rows() & masks.down.live_columns()
        kept = torch.nonzero(live).flatten()
        missing = allowed_at_least(len(kept), size, self.settings.align) - len(kept)
        if missing:
            rows = masks.up.block_scores().amax(dim=1).repeat_interleave(masks.up.block_rows)
            columns = masks.down.block_scores().amax(dim=0).repeat_interleave(masks.down.block_cols)
            strength = torch.minimum(rows, columns).masked_fill(live, -math.inf)
            kept = torch.cat([kept, torch.topk(strength, missing).indices])
        return sorted(kept.tolist())

    def detach(self) -> PreTrainedModel:
        """Bake the masks into plain `nn.Linear`s (pruned weights zero) and return the model."""
        for masks in self.layers:
            for path, masked in masks.by_path.items():
                _replace(masks.layer, path, masked.baked())
        self.layers = []
        self.groups = {}
        return self.model
