"""The pruning plan: for every layer, which attention heads and which FFN units are kept.

This is the one data object that flows from a pruning method to compaction, checkpoints, the
service and the reports. Indices are positions in the *dense* model; kept lists are stored sorted.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, RootModel, ValidationError, field_validator, model_validator

from pruning.core.errors import PlanError
from pruning.core.structure import Geometry, StackGeometry

# Matrix units run widths in their tile multiples best; a plan may keep FFN units per layer in multiples
# of N (`align`). The dense width is always allowed, so a layer can stay whole whatever N is.
Alignment = Annotated[
    int, Field(ge=1, le=4096, description="keep FFN units per layer in multiples of N (the dense width stays allowed)")
]


def allowed_counts(size: int, align: int) -> list[int]:
    """The FFN unit counts a layer of `size` units may keep under `align`."""
    return sorted({*range(0, size + 1, align), size})


def allowed_at_least(count: int, size: int, align: int) -> int:
    """The smallest allowed count that keeps at least `count` units."""
    return min(allowed for allowed in allowed_counts(size, align) if allowed >= count)


def nearest_allowed(count: int, size: int, align: int) -> int:
    """The allowed count closest to `count` (ties go up: never fewer units than asked for at a tie)."""
    return min(allowed_counts(size, align), key=lambda allowed: (abs(allowed - count), -allowed))


# Frozen, with tuples for index lists: a validated plan cannot change afterwards (its digest, its
# checks and the compact model made from it stay true).
class LayerPlan(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    heads: dict[str, tuple[int, ...]] = Field(description="attention block name → kept head indices")
    ffn_units: tuple[int, ...] = Field(description="kept FFN unit indices")

    @field_validator("heads")
    @classmethod
    def _sorted_heads(cls, heads: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
        return {block: tuple(sorted(kept)) for block, kept in heads.items()}

    @field_validator("ffn_units")
    @classmethod
    def _sorted_units(cls, units: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(sorted(units))


class StackPlan(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    num_heads: int = Field(gt=0, description="heads per attention block in the dense model")
    ffn_units: int = Field(gt=0, description="FFN units per layer in the dense model")
    layers: tuple[LayerPlan, ...]

    def check_layers(self, stack_name: str) -> None:
        """Indices in range, no duplicates, same attention blocks in every layer."""
        attention_names = None
        for index, layer in enumerate(self.layers):
            where = f"{stack_name} layer {index}"
            if attention_names is None:
                attention_names = sorted(layer.heads)
            elif sorted(layer.heads) != attention_names:
                raise PlanError(
                    f"{where}: attention blocks {sorted(layer.heads)} differ from layer 0's {attention_names}"
                )
            for block, kept in layer.heads.items():
                _check_indices(kept, self.num_heads, f"{where}: {block} head")
            _check_indices(layer.ffn_units, self.ffn_units, f"{where}: FFN unit")


def _check_indices(kept: tuple[int, ...], size: int, what: str) -> None:
    seen: set[int] = set()
    for value in kept:
        if not 0 <= value < size:
            raise PlanError(f"{what} index {value} is out of range (the dense layer has {size}: 0..{size - 1})")
        if value in seen:
            raise PlanError(f"{what} index {value} is listed twice")
        seen.add(value)


class StackSummary(BaseModel):
    model_config = ConfigDict(frozen=True)

    layers: int
    heads_kept: int
    heads_total: int
    ffn_units_kept: int
    ffn_units_total: int

    def describe(self) -> str:
        return f"heads {self.heads_kept}/{self.heads_total}, FFN units {self.ffn_units_kept}/{self.ffn_units_total}"


class PlanSummary(RootModel[dict[str, StackSummary]]):
    """Per stack: heads and FFN units kept out of the dense totals (logs, manifests' readers, `/v1/models`)."""

    def items(self):
        return self.root.items()

    def __getitem__(self, stack: str) -> StackSummary:
        return self.root[stack]

    def describe(self) -> str:
        return "; ".join(f"{name}: {stack.describe()}" for name, stack in self.items())


class PruningPlan(BaseModel):
    """Kept heads and FFN units per layer, per stack (`encoder`, `decoder`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    architecture: str
    stacks: dict[str, StackPlan]

    @model_validator(mode="after")
    def _check(self) -> PruningPlan:
        for name, stack in self.stacks.items():
            stack.check_layers(name)
        return self

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def full(cls, geometry: Geometry) -> PruningPlan:
        """The dense model as a plan: everything kept."""
        return cls.uniform(geometry, keep_heads=1.0, keep_ffn=1.0)

    @classmethod
    def uniform(cls, geometry: Geometry, keep_heads: float, keep_ffn: float, align: int = 1) -> PruningPlan:
        """Keep the same fraction of heads and FFN units in every layer (the first ones; `align` as above).

        Which units are kept does not change speed, so this is what benchmarks use; it is not a
        pruning method and says nothing about accuracy.
        """
        for label, fraction in (("keep_heads", keep_heads), ("keep_ffn", keep_ffn)):
            if not 0.0 <= fraction <= 1.0:
                raise PlanError(f"{label} must be a fraction in [0, 1], got {fraction}")
        stacks = {}
        for stack in geometry.stacks:
            heads = list(range(round(stack.num_heads * keep_heads)))
            units = list(range(nearest_allowed(round(stack.ffn_units * keep_ffn), stack.ffn_units, align)))
            layer = {"heads": {name: heads for name in stack.attention_names}, "ffn_units": units}
            stacks[stack.name] = StackPlan(
                num_heads=stack.num_heads,
                ffn_units=stack.ffn_units,
                layers=[LayerPlan.model_validate(layer) for _ in range(stack.num_layers)],
            )
        return cls(architecture=geometry.architecture, stacks=stacks)

    @classmethod
    def from_dict(cls, data: object) -> PruningPlan:
        """Validate plain data (parsed JSON) into a plan; errors become one readable `PlanError`."""
        try:
            return cls.model_validate(data)
        except ValidationError as error:
            raise PlanError(describe_validation_error(error)) from None

    @classmethod
    def from_json(cls, text: str) -> PruningPlan:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise PlanError(f"plan is not valid JSON: {error}") from None
        return cls.from_dict(data)

    @classmethod
    def load(cls, path: str | Path) -> PruningPlan:
        path = Path(path)
        if not path.is_file():
            raise PlanError(f"plan file {path} does not exist")
        try:
            return cls.from_json(path.read_text())
        except PlanError as error:
            raise PlanError(f"{path}: {error}") from None

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json())

    def to_json(self) -> str:
        return self.model_dump_json(indent=1)

    def digest(self) -> str:
        """A short content hash: two plans with equal digests keep exactly the same units."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    # ---- checks and summaries -----------------------------------------------------------------
    def check_fits(self, geometry: Geometry) -> None:
        """Raise `PlanError` unless this plan was made for a model of exactly these dense sizes."""
        if self.architecture != geometry.architecture:
            raise PlanError(f"plan is for {self.architecture!r}, the model is {geometry.architecture!r}")
        expected = {stack.name for stack in geometry.stacks}
        if set(self.stacks) != expected:
            raise PlanError(f"plan has stacks {sorted(self.stacks)}, the model has {sorted(expected)}")
        for stack in geometry.stacks:
            _check_stack_fits(self.stacks[stack.name], stack)

    def kept_heads(self, stack: str, layer: int, block: str) -> tuple[int, ...]:
        return self.stacks[stack].layers[layer].heads[block]

    def kept_ffn_units(self, stack: str, layer: int) -> tuple[int, ...]:
        return self.stacks[stack].layers[layer].ffn_units

    def summary(self) -> PlanSummary:
        """Per stack: heads and FFN units kept out of the dense totals."""
        result = {}
        for name, stack in self.stacks.items():
            blocks = len(stack.layers[0].heads) if stack.layers else 0
            result[name] = StackSummary(
                layers=len(stack.layers),
                heads_kept=sum(len(kept) for layer in stack.layers for kept in layer.heads.values()),
                heads_total=stack.num_heads * blocks * len(stack.layers),
                ffn_units_kept=sum(len(layer.ffn_units) for layer in stack.layers),
                ffn_units_total=stack.ffn_units * len(stack.layers),
            )
        return PlanSummary(result)


def _check_stack_fits(plan: StackPlan, stack: StackGeometry) -> None:
    where = f"{stack.name} stack"
    if len(plan.layers) != stack.num_layers:
        raise PlanError(f"{where}: plan has {len(plan.layers)} layers, the model has {stack.num_layers}")
    if plan.num_heads != stack.num_heads:
        raise PlanError(f"{where}: plan is for {plan.num_heads} heads per block, the model has {stack.num_heads}")
    if plan.ffn_units != stack.ffn_units:
        raise PlanError(f"{where}: plan is for {plan.ffn_units} FFN units, the model has {stack.ffn_units}")
    if plan.layers and sorted(plan.layers[0].heads) != sorted(stack.attention_names):
        raise PlanError(
            f"{where}: plan has attention blocks {sorted(plan.layers[0].heads)}, "
            f"the model has {sorted(stack.attention_names)}"
        )


def describe_validation_error(error: ValidationError) -> str:
    """One line per pydantic error: `location: message`."""
    parts = []
    for item in error.errors():
        message = item["msg"].removeprefix("Value error, ")
        location = ".".join(str(part) for part in item["loc"])
        parts.append(f"{location}: {message}" if location else message)
    return "; ".join(parts)
