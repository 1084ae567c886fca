"""Trainers/evaluators of the tasks in `pruning.core.task_registry`, built by name."""

from __future__ import annotations

import inspect
from typing import Any

from pruning.core.errors import UnsupportedModelError
from pruning.core.task_registry import task_entry
from pruning.tasks.base import Task, distillation_loss
from pruning.tasks.qa import QuestionAnsweringTask
from pruning.tasks.summarization import SummarizationTask


def make_task(name: str, **settings: Any) -> Task:
    """The task named `name`, with its settings (unset ones keep the task's defaults)."""
    task_class = task_entry(name).resolve("trainer")
    given = {key: value for key, value in settings.items() if value is not None}
    accepted = set(inspect.signature(task_class).parameters)
    foreign = sorted(set(given) - accepted)
    if foreign:
        raise UnsupportedModelError(
            f"{name} has no setting {', '.join(foreign)} (it has: {', '.join(sorted(accepted))})"
        )
    return task_class(**given)


__all__ = ["QuestionAnsweringTask", "SummarizationTask", "Task", "distillation_loss", "make_task"]
