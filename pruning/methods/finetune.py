"""`blockserve finetune`: train a dense checkpoint on a task, to serve as a pruning teacher."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from pruning.artifacts.checkpoint import load_checkpoint
from pruning.artifacts.records import Scores
from pruning.core.options import ExistingFile, ModelReference, Nested
from pruning.core.structure import task_of
from pruning.core.task_registry import TaskName
from pruning.methods.history_plot import plot_history
from pruning.methods.training import Trainer, TrainingRun, TrainSettings
from pruning.tasks import make_task
from pruning.tasks.evaluate import checkpoint_tokenizer, evaluate_model
from pruning.tasks.options import TaskOptions

log = logging.getLogger(__name__)

RESULTS_NAME = "training.json"


class FinetuneJob(TrainingRun):
    """`blockserve finetune`: what to train, on which data, and how."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: ModelReference = Field(description="dense checkpoint directory or hub id")
    train: ExistingFile = Field(description="training data file")
    eval: ExistingFile | None = Field(None, description="evaluate on this file at the end (and 4 times during)")
    out: Path = Field(description="output directory")
    task: TaskName | None = Field(None, description="task head (default: from config.json)")
    # No teacher here: the distillation and score options are the pruning runs' own.
    training: Annotated[TrainSettings, Nested("score_learning_rate", "distill_alpha", "temperature")] = TrainSettings(
        learning_rate=5e-5, epochs=2.0, distill_alpha=0.0
    )
    task_options: TaskOptions = TaskOptions()


class FinetuneResult(BaseModel):
    """`training.json` next to the fine-tuned checkpoint."""

    source: str
    task: str
    train_file: str
    train_examples: int
    steps: int
    train_seconds: float
    settings: dict[str, Any] = Field(description="the job as run")
    evaluation: Scores | None = None


def finetune(job: FinetuneJob) -> FinetuneResult:
    """Fine-tune the job's (dense) model, write it to `job.out` with its tokenizer and a results file."""
    checkpoint = load_checkpoint(job.model, device=job.device, task=job.task, allow_new_head=True)
    task = make_task(job.task or task_of(checkpoint.model), **job.task_options.given())
    tokenizer = checkpoint_tokenizer(checkpoint)
    examples = task.load(job.train, job.train_limit)
    features = task.train_features(tokenizer, examples)
    evaluation = task.load(job.eval, job.eval_limit) if job.eval else []
    log.info("fine-tuning %s for %s on %d examples (%d features)", job.model, task.name, len(examples), len(features))
    workdir = job.out.with_name(job.out.name + ".work")
    trainer = Trainer(
        checkpoint.model, tokenizer, task, features, job.training, workdir, eval_examples=evaluation, stage="finetune"
    )
    run = trainer.train(resume=job.resume)
    checkpoint.model.save_pretrained(job.out, safe_serialization=True)
    tokenizer.save_pretrained(job.out)
    scores = None
    if evaluation:
        scores = evaluate_model(checkpoint.model, tokenizer, task, evaluation, label=str(job.out))
        scores = scores.model_copy(update={"data": str(job.eval)})
    result = FinetuneResult(
        source=str(job.model),
        task=task.name,
        train_file=str(job.train),
        train_examples=len(examples),
        steps=run.steps,
        train_seconds=round(run.seconds, 1),
        settings=job.model_dump(mode="json"),
        evaluation=scores,
    )
    (job.out / RESULTS_NAME).write_text(result.model_dump_json(indent=1, exclude_none=True))
    plot_history(run.history, task.headline_metric, job.out / "training.png", title=f"finetune {job.out.name}")
    return result
