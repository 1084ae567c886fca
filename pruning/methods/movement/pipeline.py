"""`blockserve prune --method movement`: the paper's pipeline from a dense teacher to a compact checkpoint.

1. The student starts as a copy of the teacher; `MovementPruner` masks its linear layers.
2. Train with distillation while the mask density (or threshold) follows the cubic schedule.
3. Read the plan from the masks, bake them, compact: heads and FFN units with nothing left go.
   The result is written to `<workdir>/pruned` (format v1), so a resumed run skips the pruning.
4. Hybrid-filled (`fill` settings): fine-tune the compact student's remaining dense weights, the
   zeros inside kept heads included, with distillation again. Same shape, same speed.
5. Evaluate and write format v1 with `method` and `evaluation` filled in, the training history
   (`history.jsonl`) and its plot (`training.png`).
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import ConfigDict, Field
from transformers import PreTrainedModel

from pruning.artifacts.checkpoint import MANIFEST_NAME, Manifest, load_checkpoint, save_compact
from pruning.artifacts.compact import compact_model
from pruning.artifacts.records import Evaluation, MovementMethod
from pruning.core.errors import CheckpointError
from pruning.core.options import ExistingFile, Flag, ModelReference
from pruning.core.plan import PruningPlan
from pruning.core.structure import task_of
from pruning.methods.history_plot import plot_history
from pruning.methods.movement.pruner import MovementPruner, MovementSettings
from pruning.methods.training import DISTILLATION, HISTORY_NAME, Trainer, TrainingRun, TrainSettings
from pruning.tasks import Task, make_task
from pruning.tasks.evaluate import checkpoint_tokenizer, evaluate_model
from pruning.tasks.options import TaskOptions

log = logging.getLogger(__name__)


FILES = "movement (the paper's method)"


class MovementJob(TrainingRun):
    """`blockserve prune --method movement`: teacher and data, masks, the pruning run, an optional fill run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Literal["movement"] = Field("movement", description="movement (the paper) or posttrain (no training)")
    teacher: Annotated[ModelReference, Flag(group=FILES)] = Field(description="dense fine-tuned checkpoint")
    train: Annotated[ExistingFile, Flag(group=FILES)] = Field(description="training data file")
    eval: Annotated[ExistingFile, Flag(group=FILES)] = Field(description="evaluation data file")
    out: Path = Field(description="output directory (compact format v1)")
    workdir: Annotated[Path | None, Flag(group=FILES)] = Field(
        None, description="resumable state, history (default: OUT.work next to OUT)"
    )
    masks: MovementSettings = MovementSettings()
    train_run: TrainSettings = TrainSettings()
    fill_epochs: Annotated[float | None, Flag(group=DISTILLATION)] = Field(
        None, gt=0.0, le=1e4, description="hybrid-filled: fine-tune the compact model for this many epochs"
    )
    fill_steps: Annotated[int | None, Flag(group=DISTILLATION)] = Field(
        None, ge=1, le=10**9, description="hybrid-filled: fine-tune for N steps"
    )
    eval_sample: Annotated[int, Flag(group=DISTILLATION)] = Field(
        200, ge=1, description="examples per periodic evaluation (the final one uses all)"
    )
    evaluate_teacher: Annotated[bool, Flag("--eval-teacher", group=DISTILLATION)] = Field(
        True, description="score the teacher on --eval too"
    )
    task_options: TaskOptions = TaskOptions()

    @property
    def fill(self) -> TrainSettings | None:
        """The hybrid-filled run (the pruning run's settings, for `fill_epochs` or `fill_steps`), if asked for."""
        if self.fill_epochs is None and self.fill_steps is None:
            return None
        return self.train_run.model_copy(update={"epochs": self.fill_epochs or 1.0, "max_steps": self.fill_steps})

    @property
    def work_directory(self) -> Path:
        return self.workdir or self.out.with_name(self.out.name + ".work")


@dataclass
class _Inputs:
    """The teacher and the data, loaded and tokenised once for every stage."""

    teacher: PreTrainedModel
    task: Task
    tokenizer: object
    train_examples: int
    features: list
    evaluation: list  # every eval example (final scores)
    periodic: list  # the sample scored during training


def prune_movement(job: MovementJob) -> Manifest:
    """Steps 1–5 of the module docstring; a resumed run reuses a finished pruning stage."""
    if not job.resume and job.work_directory.exists():
        shutil.rmtree(job.work_directory)  # a fresh run must not mix its history with an old one
    inputs = _load_inputs(job)
    pruned_dir = job.work_directory / "pruned"
    if job.resume and (pruned_dir / MANIFEST_NAME).is_file():
        log.info("resuming: the pruning stage is done (%s)", pruned_dir)
        pruned = load_checkpoint(pruned_dir, device=job.device)
        student, plan, method, scores = (
            pruned.model,
            pruned.manifest.plan,
            pruned.manifest.method,
            pruned.manifest.evaluation,
        )
    else:
        student, plan, method, scores = _pruning_stage(job, inputs)
        save_compact(student, plan, pruned_dir, source=str(job.teacher), tokenizer=inputs.tokenizer, method=method, evaluation=scores)  # fmt: skip
    if job.fill is not None:
        method, scores = _fill_stage(job, inputs, student, method, scores)
    manifest = save_compact(
        student, plan, job.out, source=str(job.teacher), tokenizer=inputs.tokenizer, method=method, evaluation=scores
    )
    _write_history(job, inputs.task)
    log.info("wrote %s: plan %s", job.out, manifest.plan.summary().describe())
    return manifest


def _load_inputs(job: MovementJob) -> _Inputs:
    teacher = load_checkpoint(job.teacher, device=job.device)
    if teacher.is_compact:
        raise CheckpointError(f"{job.teacher} is compact; the teacher must be the dense fine-tuned model")
    task = make_task(task_of(teacher.model), **job.task_options.given())
    tokenizer = checkpoint_tokenizer(teacher)
    examples = task.load(job.train, job.train_limit)
    features = task.train_features(tokenizer, examples)
    evaluation = task.load(job.eval, job.eval_limit)
    log.info("%s: %d training examples → %d features; %d eval examples", task.name, len(examples), len(features),
             len(evaluation))  # fmt: skip
    return _Inputs(teacher.model, task, tokenizer, len(examples), features, evaluation, evaluation[: job.eval_sample])


def _pruning_stage(
    job: MovementJob, inputs: _Inputs
) -> tuple[PreTrainedModel, PruningPlan, MovementMethod, Evaluation]:
    """Score the teacher, prune with distillation, compact, score the pruned student, and say so."""
    teacher_scores = None
    if job.evaluate_teacher:  # on resume its score is already in the pruned stage's manifest
        teacher_scores = evaluate_model(inputs.teacher, inputs.tokenizer, inputs.task, inputs.evaluation, label=str(job.teacher))  # fmt: skip
    student, plan, prune_steps, final_density = _prune_stage(
        inputs.teacher, inputs.task, inputs.tokenizer, inputs.features, inputs.periodic, job, job.work_directory
    )
    method = MovementMethod(
        hybrid_filled=job.fill is not None,
        teacher=str(job.teacher),
        train_file=str(job.train),
        train_examples=inputs.train_examples,
        prune_steps=prune_steps,
        final_density=final_density,
        settings=job.model_dump(mode="json"),
    )
    scores = Evaluation(
        data=str(job.eval),
        teacher=teacher_scores,
        pruned=evaluate_model(student, inputs.tokenizer, inputs.task, inputs.evaluation, label="pruned"),
        result="pruned",
    )
    return student, plan, method, scores


def _fill_stage(
    job: MovementJob, inputs: _Inputs, student: PreTrainedModel, method: MovementMethod, scores: Evaluation
) -> tuple[MovementMethod, Evaluation]:
    """Hybrid-filled: fine-tune the compact student with distillation again; the records say how long and how well."""
    trainer = Trainer(
        student, inputs.tokenizer, inputs.task, inputs.features, job.fill, job.work_directory,
        teacher=inputs.teacher, eval_examples=inputs.periodic, stage="fill",
    )  # fmt: skip
    steps = trainer.train(resume=job.resume).steps
    filled = evaluate_model(student, inputs.tokenizer, inputs.task, inputs.evaluation, label="filled")
    return method.model_copy(update={"fill_steps": steps}), scores.model_copy(
        update={"filled": filled, "result": "filled"}
    )


def _write_history(job: MovementJob, task: Task) -> None:
    """The training history of both stages next to the checkpoint, and its plot."""
    text = (job.work_directory / HISTORY_NAME).read_text()
    (job.out / HISTORY_NAME).write_text(text)
    history = [json.loads(line) for line in text.splitlines()]
    plot_history(history, task.headline_metric, job.out / "training.png", title=f"movement pruning → {job.out.name}")


def _prune_stage(
    teacher: PreTrainedModel,
    task: Task,
    tokenizer,
    features: list,
    periodic: list,
    job: MovementJob,
    workdir: Path,
) -> tuple[PreTrainedModel, PruningPlan, int, float]:
    """Steps 1–3: movement pruning with distillation, then compaction: (compact student, plan, steps, density)."""
    student = copy.deepcopy(teacher)
    total_steps = job.train_run.total_steps(len(features))
    pruner = MovementPruner.attach(student, job.masks, total_steps)
    trainer = Trainer(
        student,
        tokenizer,
        task,
        features,
        job.train_run,
        workdir,
        teacher=teacher,
        pruner=pruner,
        eval_examples=periodic,
        stage="prune",
    )
    trainer.train(resume=job.resume)
    pruner.update(total_steps)  # the final masks
    final_density = pruner.density()
    plan = pruner.plan()
    pruner.detach()
    compact_model(student, plan)
    student.eval()
    log.info("pruned: density %.3f, plan %s", final_density, plan.summary().describe())
    return student, plan, total_steps, round(final_density, 4)
