"""`blockserve evaluate`: a task metric for any dense or compact checkpoint on a data file."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Annotated

import torch
from pydantic import BaseModel, ConfigDict, Field
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from pruning.artifacts.checkpoint import Checkpoint, load_checkpoint
from pruning.artifacts.records import Scores
from pruning.core.errors import CheckpointError
from pruning.core.options import Device, ExistingFile, Flag, ModelReference
from pruning.core.structure import task_of
from pruning.runtime.numerics import DType, dtype_name, resolve_dtype
from pruning.tasks import Task, make_task
from pruning.tasks.options import TaskOptions

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
) -> Scores:
    """The task's metrics for a loaded model on loaded examples (`model` in the result is `label`).

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
    result = Scores(task=task.name, model=label, seconds=round(seconds, 2), **metrics)
    log.info("%s on %d examples: %s", label, result.n, {k: round(v, 2) for k, v in result.metrics().items()})
    return result


class EvaluateJob(BaseModel):
    """`blockserve evaluate`: score a dense or compact checkpoint on a data file."""

    model_config = ConfigDict(extra="forbid")

    model: ModelReference = Field(description="checkpoint directory or hub id")
    data: ExistingFile = Field(description="SQuAD JSON (QA) or JSONL (summarization)")
    limit: int | None = Field(None, ge=1, description="score only the first N examples")
    json_out: Annotated[str | None, Flag("--json")] = Field(
        None, description="write the result to PATH ('-' for stdout)"
    )
    predictions: Path | None = Field(
        None, description="write predictions to PATH (QA: SQuAD {id: answer} JSON; summarization: JSONL)"
    )
    device: Device = "cpu"
    # float32 by default: the reference answers; `auto` scores what the service would serve here.
    dtype: DType = Field("float32", description="numerics to score in (auto: the device's fastest)")
    task_options: TaskOptions = TaskOptions()


def evaluate_checkpoint(job: EvaluateJob) -> Scores:
    """Load the model, read the data in its task's format, and score it; the result also names the data file."""
    dtype = resolve_dtype(job.dtype, job.device)
    checkpoint = load_checkpoint(job.model, device=job.device, dtype=dtype)
    task = make_task(task_of(checkpoint.model), **job.task_options.given())
    examples = task.load(job.data, job.limit)
    log.info("evaluating %s on %d examples of %s", job.model, len(examples), job.data)
    result = evaluate_model(
        checkpoint.model,
        checkpoint_tokenizer(checkpoint),
        task,
        examples,
        label=str(job.model),
        predictions_path=job.predictions,
    )
    return result.model_copy(update={"data": str(job.data), "dtype": dtype_name(dtype)})
