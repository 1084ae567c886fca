"""`blockserve evaluate`: a task metric for any dense or compact checkpoint on a data file."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from pruning.checkpoint import Checkpoint, load_checkpoint
from pruning.errors import CheckpointError
from pruning.structure import task_of
from pruning.tasks import Task, make_task

log = logging.getLogger(__name__)


def checkpoint_tokenizer(checkpoint: Checkpoint):
    try:
        return checkpoint.tokenizer()
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{checkpoint.directory} has no usable tokenizer files: {error}") from None


def evaluate_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    examples: list,
    *,
    label: str,
    progress: bool = True,
    predictions_path: Path | None = None,
) -> dict[str, Any]:
    """`{"task", "model", <metrics>, "n", "seconds"}` for a loaded model on loaded examples.

    With `predictions_path`, the predictions are also written there in the task's format.
    """
    started = time.perf_counter()
    was_training = model.training
    with torch.inference_mode():
        predictions = task.predict(model, tokenizer, examples, progress=progress)
    model.train(was_training)
    metrics = task.score(predictions, examples)
    if predictions_path is not None:
        predictions_path.parent.mkdir(parents=True, exist_ok=True)
        task.write_predictions(predictions, predictions_path)
    seconds = time.perf_counter() - started
    result = {"task": task.name, "model": label, **metrics, "seconds": round(seconds, 2)}
    log.info("%s on %d examples: %s", label, metrics["n"], {k: round(v, 2) for k, v in metrics.items() if k != "n"})
    return result


def evaluate_checkpoint(
    model: str | Path,
    data: str | Path,
    *,
    limit: int | None = None,
    task_settings: dict[str, Any] | None = None,
    device: str = "cpu",
    predictions: str | Path | None = None,
) -> dict[str, Any]:
    """Load `model`, read `data` in its task's format, and score it; the result also names the data file."""
    checkpoint = load_checkpoint(model, device=device)
    task = make_task(task_of(checkpoint.model), **(task_settings or {}))
    examples = task.load(Path(data), limit)
    log.info("evaluating %s on %d examples of %s", model, len(examples), data)
    result = evaluate_model(
        checkpoint.model,
        checkpoint_tokenizer(checkpoint),
        task,
        examples,
        label=str(model),
        predictions_path=Path(predictions) if predictions else None,
    )
    return {**result, "data": str(data)}
