"""What a compact checkpoint's manifest says about how it was made and how well it scores.

`MethodRecord` is a discriminated union on `name`: one model per way a plan can come about (the
paper's movement pruning, post-training pruning, a plan file, a uniform plan). The format types every
fact a reader uses (steps, densities, budgets, latencies); each method's hyper-parameters are kept
as that method's own settings model dumped under `settings` (the method validates them again when
it reads them back, e.g. on `--resume`), so this module, part of the file format, imports no method.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---- evaluation -------------------------------------------------------------------------------------
class Scores(Record):
    """One model's metrics on one data file, in percent (what `blockserve evaluate` prints)."""

    task: str
    model: str = Field(description="what was scored: a path, or a stage such as 'pruned'")
    n: int = Field(description="examples scored")
    seconds: float
    data: str | None = None
    dtype: str | None = None  # the numerics scored in (None: the model's own, float32 for our checkpoints)
    exact_match: float | None = None  # question answering
    f1: float | None = None
    rouge1: float | None = None  # summarization
    rouge2: float | None = None
    rougeL: float | None = None  # noqa: N815 (rouge-score's names)
    rougeLsum: float | None = None  # noqa: N815

    def metrics(self) -> dict[str, float]:
        """The metrics this task reports (name → percent)."""
        names = ("exact_match", "f1", "rouge1", "rouge2", "rougeL", "rougeLsum")
        return {name: value for name in names if (value := getattr(self, name)) is not None}


class Evaluation(Record):
    """Scores of the models a method produced and started from, on the same `data`."""

    data: str | None = None
    teacher: Scores | None = None  # movement: the dense teacher
    dense: Scores | None = None  # posttrain: the dense model
    pruned: Scores | None = None
    filled: Scores | None = None  # movement, hybrid-filled
    result: Literal["pruned", "filled"] | None = None  # which of them the checkpoint holds

    def stages(self) -> list[tuple[str, Scores]]:
        """(name, scores) of every model that was scored, in pipeline order."""
        names = ("teacher", "dense", "pruned", "filled")
        return [(name, scores) for name in names if (scores := getattr(self, name)) is not None]


# ---- methods ----------------------------------------------------------------------------------------
class PlanFileMethod(Record):
    """A plan written by hand or by `blockserve plan`, applied with `blockserve compact`."""

    name: Literal["plan-file"] = "plan-file"
    plan_file: str


class UniformMethod(Record):
    """The same fraction of heads and FFN units kept in every layer (speed studies; no accuracy claim)."""

    name: Literal["uniform"] = "uniform"
    keep_heads: float
    keep_ffn: float


class MovementMethod(Record):
    """The paper's block movement pruning with distillation (optionally hybrid-filled)."""

    name: Literal["movement"] = "movement"
    hybrid_filled: bool
    teacher: str
    train_file: str
    train_examples: int
    prune_steps: int | None = None
    final_density: float | None = None
    fill_steps: int | None = None
    settings: dict[str, Any] = Field(description="the movement recipe (masks, training, fill) as run")

    @model_validator(mode="before")
    @classmethod
    def _recipe_under_settings(cls, data: Any) -> Any:
        # Manifests written before the typed record kept the recipe's fields beside the facts.
        if isinstance(data, dict) and "settings" not in data and "movement" in data:
            facts = set(cls.model_fields) - {"settings"}
            data = {
                **{key: value for key, value in data.items() if key in facts},
                "settings": {key: value for key, value in data.items() if key not in facts},
            }
        return data


class Budget(Record):
    speedup: float | None = Field(None, description="asked speedup (None when the budget was in milliseconds)")
    latency_ms: float
    batch: int
    seq: int
    new_tokens: int
    runtime: str
    device: str
    threads: int
    dtype: str = Field("float32", description="the numerics the budget was timed in (older manifests: float32)")


class LatencyModelUse(Record):
    cached: bool
    probes_seconds: float
    key: str = Field(description="digest of the latency table's key (device, versions, shapes)")


class Predicted(Record):
    dense_ms: float
    compact_ms: float
    speedup: float
    search_budget_ms: float = Field(description="differs from the budget after a correction")
    floor_ms: float
    change_by_stack_ms: dict[str, float] = Field(description="BART: what the encoder and the decoder each gave")
    kept_importance: float
    latency_model: LatencyModelUse


class Attempt(Record):
    """One search → compact → measure round of the verification loop."""

    search_budget_ms: float
    predicted_speedup: float
    measured_dense_ms: float
    measured_compact_ms: float
    measured_speedup: float


class Measured(Record):
    dense_ms: float
    compact_ms: float
    speedup: float
    attempts: list[Attempt]


class ReconstructionRecord(Record):
    """How the pruned layers were refit to the dense ones (`pruning.methods.posttrain.reconstruction`)."""

    mode: Literal["weights", "scales", "none"]
    features: int
    ridge: float
    weight_ridge: float | None = None  # `weights` only
    groups: int
    groups_improved: int
    error_before: float
    error_after: float
    per_group: list[dict[str, Any]]


class RearrangementRecord(Record):
    """Each group's kept units re-chosen on its whole Fisher block (`--rearrange`): same counts."""

    swaps: int
    groups_changed: int
    loss_before: float  # Σ zᵀ F z over groups, the search's choice
    loss_after: float
    per_group: list[dict[str, Any]]


class RecoveryRecord(Record):
    """Distillation of the compact model from the dense one after pruning (`--recover-steps/-minutes`)."""

    steps: int
    seconds: float
    features: int
    precision: str = "float32"  # what the steps' matrix products ran in (bfloat16: autocast)
    distill_loss_first: float | None = None  # mean over the first logged interval
    distill_loss_last: float | None = None  # mean over the last one
    eval_metric: str | None = None  # the task's headline metric, scored during recovery
    eval_history: list[float] = Field(default_factory=list)


class PosttrainMethod(Record):
    """Post-training pruning to a latency budget measured on the device."""

    name: Literal["posttrain"] = "posttrain"
    model: str
    importance: str
    calib_file: str
    calib_examples: int
    calib_features: int
    budget: Budget
    predicted: Predicted
    measured: Measured
    reconstruction: ReconstructionRecord
    rearrangement: RearrangementRecord | None = None
    recovery: RecoveryRecord | None = None
    seconds: dict[str, float] = Field(description="wall time of each phase")
    settings: dict[str, Any] = Field(description="the post-training settings as run")

    @model_validator(mode="before")
    @classmethod
    def _format_v1_mask_tuning(cls, data: Any) -> Any:
        """Manifests before reconstruction had `mask_tuning` (`enabled`: scales, or nothing)."""
        if isinstance(data, dict) and "mask_tuning" in data:
            data = dict(data)
            old = dict(data.pop("mask_tuning"))
            old["mode"] = "scales" if old.pop("enabled") else "none"
            data["reconstruction"] = old
        return data


MethodRecord = Annotated[MovementMethod | PosttrainMethod | PlanFileMethod | UniformMethod, Field(discriminator="name")]
