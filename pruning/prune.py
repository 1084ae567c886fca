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
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from transformers import PreTrainedModel

from pruning.checkpoint import MANIFEST_NAME, Manifest, load_checkpoint, save_compact
from pruning.compact import compact_model
from pruning.errors import CheckpointError
from pruning.evaluate import checkpoint_tokenizer, evaluate_model
from pruning.history_plot import plot_history
from pruning.movement import MovementPruner, MovementSettings
from pruning.plan import PruningPlan
from pruning.structure import task_of
from pruning.tasks import Task, make_task
from pruning.training import HISTORY_NAME, Trainer, TrainSettings

log = logging.getLogger(__name__)


class MovementRecipe(BaseModel):
    """Everything `prune --method movement` needs besides files: masks, pruning run, optional fill run."""

    movement: MovementSettings = MovementSettings()
    train: TrainSettings = TrainSettings()
    fill: TrainSettings | None = None  # hybrid-filled when set
    task_settings: dict[str, Any] = {}
    train_limit: int | None = None
    eval_limit: int | None = None
    eval_sample: int = 200  # examples scored at each periodic evaluation (the final one uses all)
    evaluate_teacher: bool = True


def prune_movement(
    teacher: str | Path,
    train_file: str | Path,
    eval_file: str | Path,
    out_dir: str | Path,
    recipe: MovementRecipe,
    *,
    workdir: str | Path | None = None,
    device: str = "cpu",
    resume: bool = False,
) -> Manifest:
    out_dir = Path(out_dir)
    workdir = Path(workdir) if workdir else out_dir.with_name(out_dir.name + ".work")
    if not resume and workdir.exists():
        shutil.rmtree(workdir)  # a fresh run must not mix its history with an old one
    teacher_checkpoint = load_checkpoint(teacher, device=device)
    if teacher_checkpoint.is_compact:
        raise CheckpointError(f"{teacher} is compact; the teacher must be the dense fine-tuned model")
    task = make_task(task_of(teacher_checkpoint.model), **recipe.task_settings)
    tokenizer = checkpoint_tokenizer(teacher_checkpoint)
    examples = task.load(Path(train_file), recipe.train_limit)
    features = task.train_features(tokenizer, examples)
    evaluation = task.load(Path(eval_file), recipe.eval_limit)
    periodic = evaluation[: recipe.eval_sample]
    log.info(
        "%s: %d training examples → %d features; %d eval examples",
        task.name,
        len(examples),
        len(features),
        len(evaluation),
    )

    scores: dict[str, Any] = {"data": str(eval_file)}
    method: dict[str, Any] = {
        "name": "movement",
        "hybrid_filled": recipe.fill is not None,
        "teacher": str(teacher),
        "train_file": str(train_file),
        "train_examples": len(examples),
        **json.loads(recipe.model_dump_json()),
    }

    pruned_dir = workdir / "pruned"
    if resume and (pruned_dir / MANIFEST_NAME).is_file():
        log.info("resuming: the pruning stage is done (%s)", pruned_dir)
        pruned = load_checkpoint(pruned_dir, device=device)
        student, plan = pruned.model, pruned.manifest.plan
        method, scores = pruned.manifest.method, pruned.manifest.evaluation
    else:
        if recipe.evaluate_teacher:  # on resume its score is already in the pruned stage's manifest
            scores["teacher"] = evaluate_model(
                teacher_checkpoint.model, tokenizer, task, evaluation, label=str(teacher)
            )
        student, plan, facts = _prune_stage(
            teacher_checkpoint.model, task, tokenizer, features, periodic, recipe, workdir, resume
        )
        method.update(facts)
        scores["pruned"] = evaluate_model(student, tokenizer, task, evaluation, label="pruned")
        save_compact(
            student, plan, pruned_dir, source=str(teacher), tokenizer=tokenizer, method=method, evaluation=scores
        )
    scores["result"] = "pruned"
    if recipe.fill is not None:
        trainer = Trainer(
            student,
            tokenizer,
            task,
            features,
            recipe.fill,
            workdir,
            teacher=teacher_checkpoint.model,
            eval_examples=periodic,
            stage="fill",
        )
        method["fill_steps"] = trainer.train(resume=resume).steps
        scores["filled"] = evaluate_model(student, tokenizer, task, evaluation, label="filled")
        scores["result"] = "filled"
    manifest = save_compact(
        student, plan, out_dir, source=str(teacher), tokenizer=tokenizer, method=method, evaluation=scores
    )
    history = [json.loads(line) for line in (workdir / HISTORY_NAME).read_text().splitlines()]
    (out_dir / HISTORY_NAME).write_text((workdir / HISTORY_NAME).read_text())
    plot_history(history, task.headline_metric, out_dir / "training.png", title=f"movement pruning → {out_dir.name}")
    log.info("wrote %s: plan %s", out_dir, manifest.plan.summary())
    return manifest


def _prune_stage(
    teacher: PreTrainedModel,
    task: Task,
    tokenizer,
    features: list,
    periodic: list,
    recipe: MovementRecipe,
    workdir: Path,
    resume: bool,
) -> tuple[PreTrainedModel, PruningPlan, dict[str, Any]]:
    """Steps 1–3: movement pruning with distillation, then compaction: (compact student, plan, facts)."""
    student = copy.deepcopy(teacher)
    total_steps = recipe.train.total_steps(len(features))
    pruner = MovementPruner.attach(student, recipe.movement, total_steps)
    trainer = Trainer(
        student,
        tokenizer,
        task,
        features,
        recipe.train,
        workdir,
        teacher=teacher,
        pruner=pruner,
        eval_examples=periodic,
        stage="prune",
    )
    trainer.train(resume=resume)
    pruner.update(total_steps)  # the final masks
    final_density = pruner.density()
    plan = pruner.plan()
    pruner.detach()
    compact_model(student, plan)
    student.eval()
    log.info("pruned: density %.3f, plan %s", final_density, plan.summary())
    return student, plan, {"prune_steps": total_steps, "final_density": round(final_density, 4)}
