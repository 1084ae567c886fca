"""Tasks the trainer and evaluator know, keyed by the task names of `structure.ArchitectureSpec`."""

from __future__ import annotations

import inspect
from typing import Any

from pruning.errors import UnsupportedModelError
from pruning.tasks.base import Task, distillation_loss
from pruning.tasks.qa import QuestionAnsweringTask
from pruning.tasks.summarization import SummarizationTask

TASKS: dict[str, type] = {task.name: task for task in (QuestionAnsweringTask, SummarizationTask)}


def make_task(name: str, **settings: Any) -> Task:
    """The task named `name`, with its settings (unset ones keep the task's defaults)."""
    try:
        task_class = TASKS[name]
    except KeyError:
        raise UnsupportedModelError(f"no trainer/evaluator for task {name!r} (known: {', '.join(TASKS)})") from None
    given = {key: value for key, value in settings.items() if value is not None}
    accepted = set(inspect.signature(task_class).parameters)
    foreign = sorted(set(given) - accepted)
    if foreign:
        raise UnsupportedModelError(
            f"{name} has no setting {', '.join(foreign)} (it has: {', '.join(sorted(accepted))})"
        )
    return task_class(**given)


__all__ = ["TASKS", "QuestionAnsweringTask", "SummarizationTask", "Task", "distillation_loss", "make_task"]
