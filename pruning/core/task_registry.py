"""Every task blockserve knows, one entry each: its names, what is timed, and where its parts live.

A task has parts in every layer — a trainer/evaluator (`pruning.tasks`), a model server and request
schema (`service`), a payload builder (`loadtests`). The entry names them by import path so this
module, at the bottom of the package, imports none of them; each layer resolves only the paths it
is allowed to import (`TaskEntry.resolve`), and a test resolves all of them. A third task is one
entry here plus its parts.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Literal

from pruning.core.errors import UnsupportedModelError
from pruning.core.structure import Workload

TimedUnit = Literal["forward", "generate"]


@dataclass(frozen=True)
class TaskEntry:
    name: str  # the pipeline task name, as in manifests and `ArchitectureSpec.tasks`
    route: str  # the HTTP route /v1/{route}, and the task's key in the service config
    # What one request costs the model: a forward pass over windows, or `generate()` of new tokens.
    timed_unit: TimedUnit
    # The request shape quoted in manifests and used by bench/latency/load tests when none is given.
    default_workload: Workload
    onnx_export: bool  # whether `blockserve export` (and the onnx runtime) covers the task
    sample_data: str  # real text for demos and load tests, under ../shared/data
    trainer: str  # import path of the `Task` (data, features, loss, metric)
    server: str  # import path of the Ray Serve deployment
    request_schema: str  # import path of the HTTP request body
    payloads: str  # import path of the load test's payload builder

    @property
    def generates(self) -> bool:
        return self.timed_unit == "generate"

    def resolve(self, part: str) -> Any:
        """The object behind one of the import-path fields (`trainer`, `server`, ...), imported now."""
        module, _, name = getattr(self, part).partition(":")
        return getattr(importlib.import_module(module), name)


TASKS: dict[str, TaskEntry] = {
    entry.name: entry
    for entry in (
        TaskEntry(
            name="question-answering",
            route="qa",
            timed_unit="forward",
            default_workload=Workload(384),
            onnx_export=True,
            sample_data="squad/dev.json",
            trainer="pruning.tasks.qa:QuestionAnsweringTask",
            server="service.deployments:QAServer",
            request_schema="service.schemas:QARequest",
            payloads="loadtests.payloads:qa_payloads",
        ),
        TaskEntry(
            name="summarization",
            route="summarize",
            timed_unit="generate",
            default_workload=Workload(source_len=512, new_tokens=64),
            onnx_export=False,
            sample_data="summarization/cnndm_test.jsonl",
            trainer="pruning.tasks.summarization:SummarizationTask",
            server="service.deployments:SummarizeServer",
            request_schema="service.schemas:SummarizeRequest",
            payloads="loadtests.payloads:summarize_payloads",
        ),
    )
}
ROUTES: dict[str, TaskEntry] = {entry.route: entry for entry in TASKS.values()}


def task_entry(name: str) -> TaskEntry:
    """The entry of a pipeline task name (`question-answering`), with a clear error for unknown ones."""
    try:
        return TASKS[name]
    except KeyError:
        raise UnsupportedModelError(f"unknown task {name!r} (known: {', '.join(TASKS)})") from None


def route_entry(route: str) -> TaskEntry:
    """The entry of an HTTP route name (`qa`)."""
    try:
        return ROUTES[route]
    except KeyError:
        raise UnsupportedModelError(f"unknown route {route!r} (known: {', '.join(ROUTES)})") from None


def onnx_tasks() -> list[str]:
    return [entry.name for entry in TASKS.values() if entry.onnx_export]


# The task names as a type, for settings fields that pick one (e.g. `finetune --task`).
TaskName = Literal[tuple(TASKS)]  # type: ignore[valid-type]
Route = Literal[tuple(ROUTES)]  # type: ignore[valid-type]
