"""What a task gives the trainer and the evaluator, and the distillation loss they share."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import ModelOutput

Batch = dict[str, torch.Tensor]


class Task(Protocol):
    """One task: its data format, its training features, its loss for distillation, its metric."""

    name: str
    # The metric the trainer logs and `prune` reports first (e.g. "f1", "rougeLsum").
    headline_metric: str

    def load(self, path: Path, limit: int | None = None) -> list[Any]:
        """Read examples from a data file; a `DataError` names the file and what is wrong."""

    def train_features(self, tokenizer: PreTrainedTokenizerBase, examples: list[Any]) -> list[dict[str, list[int]]]:
        """Tokenised training features with their labels (one example may give several)."""

    def collate(self, tokenizer: PreTrainedTokenizerBase, features: list[dict[str, list[int]]]) -> Batch:
        """Pad a list of features into a batch of tensors the model accepts (labels included)."""

    def distillation_logits(self, outputs: ModelOutput, batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(logits whose last dim is a distribution, mask of the positions that count or None)."""

    def example_losses(self, outputs: ModelOutput, batch: Batch) -> torch.Tensor:
        """The task loss of each example of the batch, shape (batch,): gradients per example need it."""

    def predict(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, examples: list[Any], progress: bool = True
    ) -> dict[str, str]:
        """The model's output text (answer span, summary) for each example id."""

    def score(self, predictions: dict[str, str], examples: list[Any]) -> dict[str, float]:
        """Metrics of `predictions` against the examples' references in percent, plus `n`."""

    def evaluate(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, examples: list[Any], progress: bool = True
    ) -> dict[str, float]:
        """`score(predict(...))`: metrics on `examples` in percent, plus `n` (the number of examples scored)."""

    def write_predictions(self, predictions: dict[str, str], path: Path) -> None:
        """Predictions in the task's own file format (QA: SQuAD's {id: answer} JSON; summaries: JSONL)."""


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """KL(teacher ‖ student) on temperature-softened distributions over the last dim, × T².

    The T² keeps gradient magnitudes comparable across temperatures (Hinton et al.). `mask` selects
    the leading positions that count (e.g. target tokens that are not padding); the mean is over them.
    """
    student = F.log_softmax(student_logits / temperature, dim=-1)
    teacher = F.log_softmax(teacher_logits / temperature, dim=-1)
    per_position = F.kl_div(student, teacher, reduction="none", log_target=True).sum(-1)
    if mask is not None:
        mask = mask.to(per_position.dtype)
        return (per_position * mask).sum() / mask.sum().clamp(min=1.0) * temperature**2
    return per_position.mean() * temperature**2
