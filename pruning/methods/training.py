"""The training loop shared by fine-tuning, movement pruning and hybrid-filled fine-tuning.

A plain loop rather than a `transformers.Trainer` subclass: each step has to move the mask
schedule before the forward pass, run a frozen teacher beside the student, add the score
regulariser and give the scores their own learning rate. In `Trainer` those are four overrides
and a callback spread over a class hierarchy; here they are twenty lines read top to bottom, and
checkpoints stay in our own format (safetensors for weights, never unpickled from elsewhere).

Checkpoint/resume: every `save_every` steps the student (weights and scores), the optimizer and
the step are written to `workdir/state/`; a run started again with `resume=True` continues from
there with the same data order (dropout noise differs).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import load_model, save_model
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from pruning.core.errors import TrainingError
from pruning.core.options import Device, Flag
from pruning.methods.movement.pruner import MovementPruner
from pruning.runtime.numerics import TrainPrecision, autocast_to, training_precision
from pruning.tasks import Task, distillation_loss

log = logging.getLogger(__name__)

STATE_DIR = "state"
HISTORY_NAME = "history.jsonl"


TRAINING = "training"
DISTILLATION = "distillation and hybrid-filled"


class TrainSettings(BaseModel):
    """One training run (fine-tuning, the pruning run, or the hybrid-filled run)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    epochs: Annotated[float, Flag(group=TRAINING)] = Field(
        1.0, gt=0.0, le=1e4, description="passes over the training features (unless max_steps)"
    )
    max_steps: Annotated[int | None, Flag(group=TRAINING)] = Field(
        None, ge=1, le=10**9, description="stop after N steps (overrides --epochs)"
    )
    batch_size: Annotated[int, Flag(group=TRAINING)] = Field(16, ge=1, le=4096)
    learning_rate: Annotated[float, Flag("--lr", group=TRAINING)] = Field(
        3e-5, gt=0.0, le=10.0, description="weight learning rate"
    )
    score_learning_rate: Annotated[float, Flag("--score-lr", group=TRAINING)] = Field(
        1e-2, gt=0.0, le=100.0, description="learning rate of the mask scores"
    )
    weight_decay: Annotated[float, Flag(group=TRAINING)] = Field(0.0, ge=0.0, le=1.0)
    warmup_fraction: Annotated[float, Flag("--warmup", group=TRAINING)] = Field(
        0.1, ge=0.0, lt=1.0, description="share of steps with a rising learning rate"
    )
    max_grad_norm: Annotated[float, Flag(group=TRAINING)] = Field(1.0, gt=0.0, description="gradient clipping")
    group_by_length: Annotated[bool, Flag(switch=True, group=TRAINING)] = Field(
        False, description="batch features of similar length together (less padding; order still seeded)"
    )
    mixed_precision: Annotated[TrainPrecision, Flag(group=TRAINING)] = Field(
        "off",
        description="bf16 autocast for forward and backward (weights and optimizer stay fp32); "
        "auto: on where the device has bf16 matrix units",
    )
    distill_alpha: Annotated[float, Flag(group=DISTILLATION)] = Field(
        0.9, ge=0.0, le=1.0, description="weight of the distillation loss (task loss: 1 − α)"
    )
    temperature: Annotated[float, Flag(group=DISTILLATION)] = Field(
        2.0, gt=0.0, le=100.0, description="distillation temperature"
    )
    distill_hidden: Annotated[float, Flag(group=DISTILLATION)] = Field(
        0.0, ge=0.0, le=100.0, description="weight of the layer-by-layer hidden-state MSE to the teacher (0: off)"
    )
    log_every: Annotated[int, Flag(group=TRAINING)] = Field(20, ge=1, description="steps between log lines")
    eval_every: Annotated[int | None, Flag(group=TRAINING)] = Field(
        None, ge=1, description="steps between evaluations (default: 4 per run)"
    )
    save_every: Annotated[int, Flag(group=TRAINING)] = Field(100, ge=1, description="steps between resumable states")
    seed: Annotated[int, Flag(group=TRAINING)] = Field(0, ge=0, le=2**32 - 1)

    def total_steps(self, features: int) -> int:
        if self.max_steps is not None:
            return self.max_steps
        return max(1, math.ceil(self.epochs * math.ceil(features / self.batch_size)))


class TrainingRun(BaseModel):
    """Options every training command has besides its settings: how much data, where, and resuming."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    train_limit: Annotated[int | None, Flag(group=TRAINING)] = Field(
        None, ge=1, description="use only the first N training examples"
    )
    eval_limit: Annotated[int | None, Flag(group=TRAINING)] = Field(
        None, ge=1, description="use only the first N eval examples"
    )
    resume: Annotated[bool, Flag(switch=True, group=TRAINING)] = Field(
        False, description="continue an interrupted run from its work directory"
    )
    device: Annotated[Device, Flag(group=TRAINING)] = "cpu"


@dataclass
class TrainResult:
    steps: int
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)


def _epoch_generator(epoch: int, seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


# Length grouping sorts features by length within windows of this many batches: SQuAD windows are
# 193 tokens on average but a random batch of 16 pads to 1.8× that; sorted windows pad to 1.02×.
GROUP_WINDOW_BATCHES = 50


# Cached: the trainer asks once per step, and the epoch's order (a permutation, sorted windows) is the same.
@functools.lru_cache(maxsize=2)
def _epoch_batches(
    features: int, batch_size: int, seed: int, epoch: int, lengths: tuple[int, ...] | None
) -> list[list[int]]:
    generator = _epoch_generator(epoch, seed)
    order = torch.randperm(features, generator=generator).tolist()
    if lengths is None:
        return [order[start : start + batch_size] for start in range(0, features, batch_size)]
    window = GROUP_WINDOW_BATCHES * batch_size
    grouped = []
    for start in range(0, features, window):
        grouped += sorted(order[start : start + window], key=lambda index: lengths[index])
    batches = [grouped[start : start + batch_size] for start in range(0, features, batch_size)]
    # Shuffle the batches again, or a window's short features would always train before its long ones.
    shuffle = torch.randperm(len(batches), generator=generator)
    return [batches[i] for i in shuffle.tolist()]


def _batch_indices(
    step: int, features: int, batch_size: int, seed: int, lengths: Sequence[int] | None = None
) -> list[int]:
    """Feature indices of global step `step`: epoch by epoch, a fresh seeded shuffle each epoch; with
    `lengths`, features of similar length share a batch (less padding), still in a seeded order."""
    epoch, position = divmod(step, math.ceil(features / batch_size))
    lengths = None if lengths is None else tuple(lengths)
    return list(_epoch_batches(features, batch_size, seed, epoch, lengths)[position])


def _optimizer(model: nn.Module, settings: TrainSettings, pruner: MovementPruner | None) -> torch.optim.Optimizer:
    score_ids = pruner.score_parameter_ids() if pruner else set()
    weights = [p for p in model.parameters() if p.requires_grad and id(p) not in score_ids]
    groups = [{"params": weights, "lr": settings.learning_rate, "weight_decay": settings.weight_decay}]
    if pruner:
        groups.append({"params": pruner.score_parameters(), "lr": settings.score_learning_rate, "weight_decay": 0.0})
    return torch.optim.AdamW(groups)


def _linear_warmup_decay(total: Callable[[], int], warmup: int) -> Callable[[int], float]:
    """Linear warm-up, then linear decay to 0 at `total()` steps (read at each step: a time budget re-plans it)."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total() - step) / max(1, total() - warmup))

    return factor


# With a time budget, the step count planned from one timed step is re-planned from the real mean rate
# every this share of it (and at least REPLAN_MIN_STEPS): batches are padded to their longest feature,
# so one batch's time may be far from the mean one (3.3 s timed, 5.2 s run, MiniLM s384), and the
# first steps' rate from the later ones (3.1 → 3.5 s: one re-plan still overran by 10 %).
REPLAN_FRACTION = 0.05
REPLAN_MIN_STEPS = 8


def hidden_state_loss(student, teacher, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Mean squared distance of the student's hidden states to the teacher's, layer by layer, over real
    tokens. Pruning heads and FFN units keeps the layer count and the hidden width, so layer i of the
    compact model is matched to layer i of the dense one (encoder–decoders: encoder states, whose mask
    is the input's)."""
    name = "hidden_states" if getattr(teacher, "hidden_states", None) is not None else "encoder_hidden_states"
    losses = []
    for student_state, teacher_state in zip(getattr(student, name), getattr(teacher, name), strict=True):
        per_token = (student_state.float() - teacher_state.float()).pow(2).mean(-1)
        if attention_mask is not None:
            mask = attention_mask.to(per_token.dtype)
            losses.append((per_token * mask).sum() / mask.sum().clamp(min=1.0))
        else:
            losses.append(per_token.mean())
    return torch.stack(losses).mean()


class Trainer:
    """Trains `model` on `features` for `task`, optionally distilling `teacher` and pruning with `pruner`."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        task: Task,
        features: list[dict],
        settings: TrainSettings,
        workdir: Path,
        *,
        teacher: PreTrainedModel | None = None,
        pruner: MovementPruner | None = None,
        eval_examples: list | None = None,
        stage: str = "train",
        identity: dict[str, Any] | None = None,
    ) -> None:
        if not features:
            raise TrainingError("no training features")
        self.model, self.tokenizer, self.task = model, tokenizer, task
        self.features, self.settings = features, settings
        self.workdir = Path(workdir)
        self.teacher, self.pruner = teacher, pruner
        self.eval_examples = eval_examples or []
        self.stage = stage
        self.identity = identity or {}  # what else a resumable state must match (e.g. the plan's digest)
        self.total_steps = settings.total_steps(len(features))
        self.planned_steps = self.total_steps  # what resumable state is keyed to, before any re-plan
        self.eval_every = settings.eval_every or max(1, self.total_steps // 4)
        self.optimizer = _optimizer(model, settings, pruner)
        warmup = int(settings.warmup_fraction * self.total_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, _linear_warmup_decay(lambda: self.total_steps, warmup)
        )
        self.history: list[dict[str, Any]] = []
        self.step = 0
        self.clock: Callable[[], float] = time.perf_counter  # what `deadline` is read against
        self.lengths = tuple(len(f["input_ids"]) for f in features) if settings.group_by_length else None
        self.device = str(next(model.parameters()).device)
        self.precision = training_precision(settings.mixed_precision, self.device)

    # ---- state --------------------------------------------------------------------------------
    @property
    def state_dir(self) -> Path:
        return self.workdir / STATE_DIR

    def _state_fingerprint(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "total_steps": self.planned_steps,
            "features": len(self.features),
            "settings": self.settings.model_dump(),
            **({"identity": self.identity} if self.identity else {}),
        }

    def save_state(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        save_model(self.model, str(self.state_dir / "model.safetensors"))
        torch.save(
            {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()},
            self.state_dir / "optimizer.pt",
        )
        state = {"step": self.step, "fingerprint": self._state_fingerprint(), "history": self.history}
        (self.state_dir / "trainer_state.json").write_text(json.dumps(state, indent=1))

    def load_state(self) -> bool:
        """Continue from `workdir/state` if it holds this stage's run; False when there is nothing to resume."""
        path = self.state_dir / "trainer_state.json"
        if not path.is_file():
            return False
        state = json.loads(path.read_text())
        if state["fingerprint"] != self._state_fingerprint():
            if state["fingerprint"].get("stage") != self.stage:
                return False  # an earlier stage's state: this stage starts fresh
            raise TrainingError(f"{self.state_dir} holds a run with other settings; delete it or run without --resume")
        load_model(self.model, str(self.state_dir / "model.safetensors"))
        # Our own file from an earlier run; weights_only refuses anything but tensors and plain data.
        optimizer_state = torch.load(self.state_dir / "optimizer.pt", weights_only=True)
        self.optimizer.load_state_dict(optimizer_state["optimizer"])
        self.scheduler.load_state_dict(optimizer_state["scheduler"])
        self.step, self.history = state["step"], state["history"]
        log.info("%s: resuming at step %d of %d from %s", self.stage, self.step, self.total_steps, self.state_dir)
        return True

    # ---- loop ---------------------------------------------------------------------------------
    def _loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        hidden = self.teacher is not None and self.settings.distill_hidden > 0
        extra = {"output_hidden_states": True} if hidden else {}
        outputs = self.model(**batch, **extra)
        parts = {"task_loss": outputs.loss}
        loss = outputs.loss
        if self.teacher is not None:
            with torch.no_grad():
                teacher_outputs = self.teacher(**batch, **extra)
            student_logits, mask = self.task.distillation_logits(outputs, batch)
            teacher_logits, _ = self.task.distillation_logits(teacher_outputs, batch)
            # Softmax of bf16 logits (mixed precision) loses the small differences distillation learns from.
            distill = distillation_loss(student_logits.float(), teacher_logits.float(), self.settings.temperature, mask)
            parts["distill_loss"] = distill
            alpha = self.settings.distill_alpha
            loss = (1.0 - alpha) * outputs.loss + alpha * distill
            if hidden:
                parts["hidden_loss"] = hidden_state_loss(outputs, teacher_outputs, batch.get("attention_mask"))
                loss = loss + self.settings.distill_hidden * parts["hidden_loss"]
        if self.pruner is not None:
            regularization = self.pruner.regularization(self.step)
            parts["regularization"] = regularization
            loss = loss + regularization
        parts["loss"] = loss
        return loss, {name: float(value.detach()) for name, value in parts.items()}

    def seconds_per_step(self, features: list[dict], tries: int = 3) -> float:
        """Wall time of one step on a batch of `features` — the loss as `train` computes it (teacher,
        hidden states, precision included) and its backward — the slowest of `tries` after a warm-up one.
        The weights are not changed (no optimizer step; gradients cleared)."""
        device = next(self.model.parameters()).device
        batch = {name: tensor.to(device) for name, tensor in self.task.collate(self.tokenizer, features).items()}
        if self.teacher is not None:
            self.teacher.eval()
        self.model.train()
        times = []
        for _ in range(tries):
            started = time.perf_counter()
            with autocast_to(self.precision, self.device):
                loss, _ = self._loss(batch)
            loss.backward()
            times.append(time.perf_counter() - started)
        self.model.zero_grad(set_to_none=True)
        self.model.eval()
        return max(times[1:] or times)

    def evaluate(self) -> dict[str, float]:
        self.model.eval()
        metrics = self.task.evaluate(self.model, self.tokenizer, self.eval_examples, progress=False)
        self.model.train()
        return metrics

    def _record(self, entry: dict[str, Any]) -> None:
        self.history.append(entry)
        self.workdir.mkdir(parents=True, exist_ok=True)
        with (self.workdir / HISTORY_NAME).open("a") as out:
            out.write(json.dumps(entry) + "\n")

    def train(self, resume: bool = False, deadline: float | None = None) -> TrainResult:
        """Run to `total_steps`, or until `self.clock()` passes `deadline` (a time budget)."""
        if resume:
            self.load_state()
        device = next(self.model.parameters()).device
        if self.teacher is not None:
            self.teacher.eval()
        self.model.train()
        started = self.clock()
        first_step = self.step
        replan_every = max(REPLAN_MIN_STEPS, math.ceil(REPLAN_FRACTION * self.total_steps))
        running: dict[str, float] = {}
        progress = tqdm(total=self.total_steps, initial=self.step, desc=self.stage, unit="step")
        while self.step < self.total_steps:
            if deadline is not None and self.step > first_step and (self.step - first_step) % replan_every == 0:
                self._replan(deadline, (self.clock() - started) / (self.step - first_step), progress)
            if deadline is not None and self.clock() > deadline:
                log.info("%s: time budget spent at step %d of %d", self.stage, self.step, self.total_steps)
                if self.eval_examples and not any("eval" in e and e["step"] == self.step for e in self.history):
                    self._evaluate_and_log()
                break
            if self.pruner is not None:
                self.pruner.update(self.step)
            indices = _batch_indices(
                self.step, len(self.features), self.settings.batch_size, self.settings.seed, self.lengths
            )
            batch = self.task.collate(self.tokenizer, [self.features[i] for i in indices])
            batch = {name: tensor.to(device) for name, tensor in batch.items()}
            with autocast_to(self.precision, self.device):
                loss, parts = self._loss(batch)
            if not math.isfinite(parts["loss"]):
                raise TrainingError(
                    f"{self.stage}: loss is {parts['loss']} at step {self.step}; lower the learning rate"
                )
            loss.backward()
            nn.utils.clip_grad_norm_(self.model.parameters(), self.settings.max_grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            progress.update(1)
            for name, value in parts.items():
                running[name] = running.get(name, 0.0) + value
            running["_count"] = running.get("_count", 0.0) + 1
            if self.step % self.settings.log_every == 0 or self.step == self.total_steps:
                if self.pruner is not None:
                    # The optimizer step just moved the scores: with top-k, blocks drift across the threshold
                    # set before it, and the log would show a density no step ran with (0.273 for a 0.25 target,
                    # seen in a full `make test`). Set the masks for the coming step first — the same call the
                    # next step makes, and at the end the final masks.
                    self.pruner.update(self.step)
                progress.set_postfix(self._log(running))
                running = {}
            if self.eval_examples and (self.step % self.eval_every == 0 or self.step == self.total_steps):
                self._evaluate_and_log()
            if self.step % self.settings.save_every == 0 and self.step < self.total_steps:
                self.save_state()
        progress.close()
        self.model.eval()
        return TrainResult(steps=self.step, seconds=self.clock() - started, history=self.history)

    def _replan(self, deadline: float, seconds_per_step: float, progress: tqdm) -> None:
        """Fit the step count (and so the learning-rate decay) to the time left at the measured rate."""
        left = max(0.0, deadline - self.clock())
        total = max(self.step + 1, self.step + math.floor(left / seconds_per_step))
        if total != self.total_steps:
            log.info("%s: %.2f s per step measured; %d steps fit the time budget (planned %d)",
                     self.stage, seconds_per_step, total, self.total_steps)  # fmt: skip
            self.total_steps = total
            self.eval_every = self.settings.eval_every or max(1, total // 4)
            progress.total = total
            progress.refresh()

    def _log(self, running: dict[str, float]) -> dict[str, float]:
        """Record the mean of each loss part since the last log line; returns what the progress bar shows."""
        count = running.pop("_count", 1.0)
        entry: dict[str, Any] = {"stage": self.stage, "step": self.step, "lr": self.scheduler.get_last_lr()[0]}
        entry.update({name: round(total / count, 5) for name, total in running.items()})
        if self.pruner is not None:
            entry.update(self.pruner.report())
        self._record(entry)
        details = " ".join(f"{k}={v:.4g}" for k, v in entry.items() if k not in ("stage", "step"))
        log.info("%s step %d/%d %s", self.stage, self.step, self.total_steps, details)
        return {k: entry[k] for k in ("loss", "density") if k in entry}

    def _evaluate_and_log(self) -> None:
        metrics = self.evaluate()
        entry: dict[str, Any] = {"stage": self.stage, "step": self.step, "eval": metrics}
        if self.pruner is not None:
            entry.update(self.pruner.report())
        self._record(entry)
        headline = self.task.headline_metric
        log.info(
            "%s step %d: eval %s=%.2f on %d examples", self.stage, self.step, headline, metrics[headline], metrics["n"]
        )
