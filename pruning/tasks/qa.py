"""Extractive question answering on SQuAD v1.1-format JSON.

Long contexts are split into overlapping windows (`max_length` tokens, `stride` tokens of overlap);
each window is one feature. Training labels a window with the answer's start/end token, or with the
[CLS] position when the answer is not inside that window. At evaluation every window proposes its
`n_best` start × `n_best` end candidates (inside the context, end ≥ start, at most
`max_answer_tokens` long); the best-scoring span over all windows of a question is its answer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import ModelOutput

from pruning.core.errors import DataError
from pruning.tasks.base import Batch
from pruning.tasks.squad_metrics import squad_scores

# token_type_ids only where the tokenizer makes them (BERT's do; a bare tokenizer may not).
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass(frozen=True)
class QAExample:
    id: str
    question: str
    context: str
    answer_texts: tuple[str, ...]
    answer_starts: tuple[int, ...]  # character offsets into `context`


def read_squad(path: Path, limit: int | None = None) -> list[QAExample]:
    """Questions of a SQuAD v1.1 JSON file, in file order (the first `limit` if given)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist")
    try:
        articles = json.loads(path.read_text())["data"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as error:
        raise DataError(f"{path} is not SQuAD-format JSON ({{'data': [articles...]}}): {error}") from None
    examples = []
    try:
        for article in articles:
            for paragraph in article["paragraphs"]:
                for qa in paragraph["qas"]:
                    answers = qa["answers"]
                    if not answers:
                        raise DataError(f"{path}: question {qa['id']} has no answers (SQuAD v2 is not supported)")
                    examples.append(
                        QAExample(
                            id=str(qa["id"]),
                            question=qa["question"],
                            context=paragraph["context"],
                            answer_texts=tuple(a["text"] for a in answers),
                            answer_starts=tuple(int(a["answer_start"]) for a in answers),
                        )
                    )
                    if limit is not None and len(examples) >= limit:
                        return examples
    except (KeyError, TypeError) as error:
        raise DataError(f"{path}: missing SQuAD field {error}") from None
    except ValueError as error:  # answer_start that is not a number
        raise DataError(f"{path}: bad SQuAD value: {error}") from None
    if not examples:
        raise DataError(f"{path} has no questions")
    return examples


@dataclass(frozen=True)
class Span:
    score: float  # start logit + end logit
    start: int  # character offsets into the context
    end: int


def candidate_spans(
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    offsets: list[tuple[int, int]],
    in_context: np.ndarray,
    n_best: int,
    max_answer_tokens: int,
) -> list[Span]:
    """Answer spans of one window, best first: pairs of the `n_best` starts and ends that lie in the
    context, end ≥ start, at most `max_answer_tokens` long. Logits beyond `len(offsets)` (padding) are ignored.
    """
    length = len(offsets)
    start_logits, end_logits = start_logits[:length], end_logits[:length]
    starts = np.argsort(start_logits)[::-1][:n_best]
    ends = np.argsort(end_logits)[::-1][:n_best]
    spans = [
        Span(float(start_logits[start] + end_logits[end]), offsets[start][0], offsets[end][1])
        for start in starts
        if in_context[start]
        for end in ends
        if in_context[end] and start <= end < start + max_answer_tokens
    ]
    return sorted(spans, key=lambda span: span.score, reverse=True)


class QuestionAnsweringTask:
    name = "question-answering"
    headline_metric = "f1"

    def __init__(
        self,
        max_length: int = 384,
        stride: int = 128,
        n_best: int = 20,
        max_answer_tokens: int = 30,
        eval_batch_size: int = 32,
    ) -> None:
        if stride >= max_length:
            raise DataError(f"stride ({stride}) must be smaller than max_length ({max_length})")
        self.max_length = max_length
        self.stride = stride
        self.n_best = n_best
        self.max_answer_tokens = max_answer_tokens
        self.eval_batch_size = eval_batch_size

    def load(self, path: Path, limit: int | None = None) -> list[QAExample]:
        return read_squad(path, limit)

    def _windows(self, tokenizer: PreTrainedTokenizerBase, examples: list[QAExample]):
        if not tokenizer.is_fast:
            raise DataError("question answering needs a fast tokenizer (offset mapping); this one is not")
        # The question comes first and is never cut; only the context is split into windows.
        return tokenizer(
            [e.question.lstrip() for e in examples],
            [e.context for e in examples],
            truncation="only_second",
            max_length=self.max_length,
            stride=self.stride,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
        )

    def train_features(self, tokenizer: PreTrainedTokenizerBase, examples: list[QAExample]) -> list[dict]:
        encoded = self._windows(tokenizer, examples)
        features = []
        for window, example_index in enumerate(encoded["overflow_to_sample_mapping"]):
            example = examples[example_index]
            offsets = encoded["offset_mapping"][window]
            sequence_ids = encoded.sequence_ids(window)
            answer_start = example.answer_starts[0]
            answer_end = answer_start + len(example.answer_texts[0])
            context_tokens = [i for i, s in enumerate(sequence_ids) if s == 1]
            start = end = 0  # [CLS]: "the answer is not in this window"
            if offsets[context_tokens[0]][0] <= answer_start and offsets[context_tokens[-1]][1] >= answer_end:
                start = next(i for i in context_tokens if offsets[i][1] > answer_start)
                end = next(i for i in reversed(context_tokens) if offsets[i][0] < answer_end)
            feature = {name: encoded[name][window] for name in MODEL_INPUTS if name in encoded}
            feature.update(start_positions=start, end_positions=end)
            features.append(feature)
        return features

    def collate(self, tokenizer: PreTrainedTokenizerBase, features: list[dict]) -> Batch:
        labels = {name: torch.tensor([f[name] for f in features]) for name in ("start_positions", "end_positions")}
        inputs = [{k: v for k, v in f.items() if k not in labels} for f in features]
        batch = dict(tokenizer.pad(inputs, return_tensors="pt"))
        batch.update(labels)
        return batch

    def distillation_logits(self, outputs: ModelOutput, batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        # Start and end are two distributions over the window's positions.
        return torch.stack([outputs.start_logits, outputs.end_logits], dim=1), None

    def example_losses(self, outputs: ModelOutput, batch: Batch) -> torch.Tensor:
        # What BertForQuestionAnswering averages over the batch, kept per example.
        start = F.cross_entropy(outputs.start_logits, batch["start_positions"], reduction="none")
        end = F.cross_entropy(outputs.end_logits, batch["end_positions"], reduction="none")
        return (start + end) / 2

    @torch.no_grad()
    def predict(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        examples: list[QAExample],
        progress: bool = True,
    ) -> dict[str, str]:
        """The best answer span text for each example id."""
        encoded = self._windows(tokenizer, examples)
        model.eval()
        device = next(model.parameters()).device
        windows = len(encoded["input_ids"])
        best: dict[str, tuple[float, str]] = {}
        names = [name for name in MODEL_INPUTS if name in encoded]
        batches = range(0, windows, self.eval_batch_size)
        for first in tqdm(batches, desc="evaluate", unit="batch", disable=not progress, leave=False):
            rows = range(first, min(first + self.eval_batch_size, windows))
            batch = tokenizer.pad([{n: encoded[n][i] for n in names} for i in rows], return_tensors="pt")
            outputs = model(**{k: v.to(device) for k, v in batch.items()})
            starts = outputs.start_logits.float().cpu().numpy()
            ends = outputs.end_logits.float().cpu().numpy()
            for row, window in enumerate(rows):
                example = examples[encoded["overflow_to_sample_mapping"][window]]
                score, text = self._best_span(example.context, starts[row], ends[row], encoded, window)
                if example.id not in best or score > best[example.id][0]:
                    best[example.id] = (score, text)
        return {example.id: best.get(example.id, (0.0, ""))[1] for example in examples}

    def _best_span(self, context: str, start_logits: np.ndarray, end_logits: np.ndarray, encoded, window: int):
        """(score, text) of the window's best span, (-inf, "") when it has none."""
        in_context = np.array([s == 1 for s in encoded.sequence_ids(window)])
        spans = candidate_spans(
            start_logits, end_logits, encoded["offset_mapping"][window], in_context, self.n_best, self.max_answer_tokens
        )
        if not spans:
            return -np.inf, ""
        return spans[0].score, context[spans[0].start : spans[0].end]

    def score(self, predictions: dict[str, str], examples: list[QAExample]) -> dict[str, float]:
        golds = {example.id: list(example.answer_texts) for example in examples}
        return {**squad_scores(predictions, golds), "n": len(examples)}

    def evaluate(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        examples: list[QAExample],
        progress: bool = True,
    ) -> dict[str, float]:
        return self.score(self.predict(model, tokenizer, examples, progress), examples)

    def write_predictions(self, predictions: dict[str, str], path: Path) -> None:
        # The official SQuAD v1.1 evaluation script reads exactly this: {question id: answer text}.
        Path(path).write_text(json.dumps(predictions, indent=1, ensure_ascii=False))
