"""Recovery: a short distillation of the compact model from the dense one, after post-training pruning.

Reconstruction fits each layer on its own; recovery trains the whole compact model end to end for a
few minutes on temperature-softened dense logits plus the task loss (the trainer of movement pruning,
with the dense model as teacher): tqdm, a history, a plot, resumable states. The budget is steps or
minutes; with minutes, the steps are planned from the measured time of a training step, so the
learning-rate schedule ends when the time does; the trainer re-plans them from the real mean rate every
5 % of the steps (one timed batch is padded to its own longest feature), and stops at the deadline itself.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from pruning.artifacts.records import RecoveryRecord
from pruning.core.options import Flag
from pruning.methods.history_plot import plot_history
from pruning.methods.training import Trainer, TrainSettings
from pruning.runtime.numerics import TrainPrecision, dtype_name
from pruning.tasks import Task

log = logging.getLogger(__name__)

RECOVERY = "recovery (distillation after pruning)"


def _recovery(**flag: object) -> Flag:
    return Flag(group=RECOVERY, **flag)


class RecoverySettings(BaseModel):
    """How long and how the compact model is distilled from the dense one; off unless steps or minutes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    recover_steps: Annotated[int | None, _recovery()] = Field(None, ge=1, le=10**7, description="distillation steps")
    recover_minutes: Annotated[float | None, _recovery()] = Field(
        None, gt=0.0, le=10**5, description="distillation time budget (steps planned from a timed step)"
    )
    recover_samples: Annotated[int, _recovery()] = Field(
        100_000, ge=1, le=10**7, description="training examples read from the calibration file"
    )
    recover_batch_size: Annotated[int, _recovery()] = Field(16, ge=1, le=4096)
    recover_lr: Annotated[float, _recovery()] = Field(5e-5, gt=0.0, le=1.0, description="learning rate")
    recover_alpha: Annotated[float, _recovery()] = Field(
        0.9, ge=0.0, le=1.0, description="weight of the distillation loss (task loss: 1 − α)"
    )
    recover_temperature: Annotated[float, _recovery()] = Field(2.0, gt=0.0, le=100.0)
    recover_hidden: Annotated[float, _recovery()] = Field(
        0.0, ge=0.0, le=100.0, description="weight of the hidden-state MSE to the dense model, layer by layer"
    )
    recover_precision: Annotated[TrainPrecision, _recovery()] = Field(
        "auto", description="bf16 autocast for the distillation steps (auto: where the device has bf16 units)"
    )

    @model_validator(mode="after")
    def _one_budget(self) -> RecoverySettings:
        if self.recover_steps is not None and self.recover_minutes is not None:
            raise ValueError("give at most one recovery budget: `recover_steps` or `recover_minutes`")
        return self

    @property
    def enabled(self) -> bool:
        return self.recover_steps is not None or self.recover_minutes is not None

    def train_settings(self, steps: int, seed: int) -> TrainSettings:
        return TrainSettings(
            max_steps=steps,
            batch_size=self.recover_batch_size,
            learning_rate=self.recover_lr,
            distill_alpha=self.recover_alpha,
            temperature=self.recover_temperature,
            distill_hidden=self.recover_hidden,
            warmup_fraction=0.05,
            # Minutes are the budget: unpadded batches and bf16 give 2–2.5× the steps in the same time.
            group_by_length=True,
            mixed_precision=self.recover_precision,
            eval_every=max(1, steps // 2),
            save_every=max(1, min(100, steps)),
            seed=seed,
        )


def median_length_batch(features: list[dict], size: int) -> list[dict]:
    """`size` features around the median length: what a length-grouped batch typically holds."""
    by_length = sorted(features, key=lambda feature: len(feature["input_ids"]))
    middle = max(0, len(by_length) // 2 - size // 2)
    return by_length[middle : middle + size]


def recover(
    compact: PreTrainedModel,
    dense: PreTrainedModel,
    task: Task,
    tokenizer: PreTrainedTokenizerBase,
    features: list[dict],
    settings: RecoverySettings,
    workdir: Path,
    *,
    identity: dict,
    seed: int = 0,
    eval_examples: list | None = None,
    resume: bool = False,
) -> RecoveryRecord:
    """Distil `compact` from `dense` in place; the record of what ran. `identity` ties resumable state
    to this compact model (its plan's digest): another plan never resumes from it."""
    started = time.perf_counter()
    workdir.mkdir(parents=True, exist_ok=True)
    deadline = None
    steps = settings.recover_steps
    if settings.recover_minutes is not None:
        budget = settings.recover_minutes * 60.0
        # Timed by a trainer of the same settings, so the step measured is the step run; + 15 % for the
        # optimizer step and collation, which it leaves out.
        probe = Trainer(compact, tokenizer, task, features, settings.train_settings(1, seed), workdir, teacher=dense)
        per_step = 1.15 * probe.seconds_per_step(median_length_batch(features, settings.recover_batch_size))
        steps = max(1, math.floor((budget - (time.perf_counter() - started)) / per_step))
        deadline = started + budget
        log.info("recovery: %.2f s per step → %d steps in %.1f min", per_step, steps, settings.recover_minutes)
    trainer = Trainer(
        compact,
        tokenizer,
        task,
        features,
        settings.train_settings(steps, seed),
        workdir,
        teacher=dense,
        eval_examples=eval_examples,
        stage="recovery",
        identity=identity,
    )
    result = trainer.train(resume=resume, deadline=deadline)
    losses = [entry["distill_loss"] for entry in result.history if "distill_loss" in entry]
    headline = task.headline_metric
    scores = [entry["eval"][headline] for entry in result.history if "eval" in entry]
    plot_history(result.history, headline, workdir / "recovery.png", title=f"recovery → {workdir.parent.name}")
    return RecoveryRecord(
        steps=result.steps,
        precision=dtype_name(trainer.precision),
        seconds=round(time.perf_counter() - started, 1),
        features=len(features),
        distill_loss_first=losses[0] if losses else None,
        distill_loss_last=losses[-1] if losses else None,
        eval_metric=headline if scores else None,
        eval_history=[round(score, 3) for score in scores],
    )
