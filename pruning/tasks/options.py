"""Task options a user may set on any command that reads task data (unset ones keep the task's defaults).

Cross-option rules (a stride smaller than the window) are the task's own, checked when it is built.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from pruning.core.options import Flag

TASK_GROUP = "task options (defaults: QA 384/128; summarization 512/128 tokens, 4 beams)"


class TaskOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    max_length: Annotated[int | None, Flag(group=TASK_GROUP)] = Field(
        None, ge=16, le=8192, description="QA: tokens per window"
    )
    stride: Annotated[int | None, Flag(group=TASK_GROUP)] = Field(
        None, ge=0, description="QA: overlap between windows of a long context"
    )
    max_source_tokens: Annotated[int | None, Flag(group=TASK_GROUP)] = Field(
        None, ge=8, le=16384, description="summarization: article tokens kept"
    )
    max_target_tokens: Annotated[int | None, Flag(group=TASK_GROUP)] = Field(
        None, ge=1, le=4096, description="summarization: summary tokens (train, generate)"
    )
    num_beams: Annotated[int | None, Flag(group=TASK_GROUP)] = Field(
        None, ge=1, le=64, description="summarization: beam width at evaluation"
    )
    no_repeat_ngram_size: Annotated[int | None, Flag(group=TASK_GROUP)] = Field(
        None, ge=0, le=64, description="summarization: never repeat an n-gram (task default 3; 0 = off)"
    )

    def given(self) -> dict[str, Any]:
        """The options that were set, as keyword arguments of the task's constructor."""
        return self.model_dump(exclude_none=True)
