"""`blockserve finetune`: train a dense checkpoint on a task, to serve as a pruning teacher."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from pruning.checkpoint import load_checkpoint
from pruning.evaluate import checkpoint_tokenizer, evaluate_model
from pruning.history_plot import plot_history
from pruning.structure import task_of
from pruning.tasks import make_task
from pruning.training import Trainer, TrainSettings

log = logging.getLogger(__name__)

RESULTS_NAME = "training.json"


def finetune(
    model: str | Path,
    train_file: str | Path,
    out_dir: str | Path,
    *,
    task_name: str | None = None,
    settings: TrainSettings | None = None,
    task_settings: dict[str, Any] | None = None,
    eval_file: str | Path | None = None,
    train_limit: int | None = None,
    eval_limit: int | None = None,
    device: str = "cpu",
    resume: bool = False,
) -> dict[str, Any]:
    """Fine-tune `model` (dense) on `train_file`, write it to `out_dir` with its tokenizer and a results file."""
    settings = settings or TrainSettings()
    out_dir = Path(out_dir)
    checkpoint = load_checkpoint(model, device=device, task=task_name, allow_new_head=True)
    task = make_task(task_name or task_of(checkpoint.model), **(task_settings or {}))
    tokenizer = checkpoint_tokenizer(checkpoint)
    examples = task.load(Path(train_file), train_limit)
    features = task.train_features(tokenizer, examples)
    evaluation = task.load(Path(eval_file), eval_limit) if eval_file else []
    log.info("fine-tuning %s for %s on %d examples (%d features)", model, task.name, len(examples), len(features))
    workdir = out_dir.with_name(out_dir.name + ".work")
    trainer = Trainer(
        checkpoint.model, tokenizer, task, features, settings, workdir, eval_examples=evaluation, stage="finetune"
    )
    result = trainer.train(resume=resume)
    checkpoint.model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    summary: dict[str, Any] = {
        "source": str(model),
        "task": task.name,
        "train_file": str(train_file),
        "train_examples": len(examples),
        "steps": result.steps,
        "train_seconds": round(result.seconds, 1),
        "settings": settings.model_dump(),
        "task_settings": task_settings or {},
    }
    if evaluation:
        metrics = evaluate_model(checkpoint.model, tokenizer, task, evaluation, label=str(out_dir))
        summary["evaluation"] = {**metrics, "data": str(eval_file)}
    (out_dir / RESULTS_NAME).write_text(json.dumps(summary, indent=1))
    plot_history(result.history, task.headline_metric, out_dir / "training.png", title=f"finetune {out_dir.name}")
    return summary
