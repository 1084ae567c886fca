"""Abstractive summarization on JSONL files, scored with ROUGE (the `rouge-score` package).

Each line is one object with the article and its reference summary, under CNN/DailyMail's names
(`article`, `highlights`) or XSum's (`document`, `summary`). ROUGE-Lsum compares summaries sentence
by sentence, so references and predictions are put one sentence per line first.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from rouge_score import rouge_scorer
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import ModelOutput

from pruning.core.errors import DataError
from pruning.tasks.base import Batch

# (article field, summary field), tried in order.
FIELD_NAMES = (("article", "highlights"), ("document", "summary"))
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclass(frozen=True)
class SummaryExample:
    id: str
    article: str
    summary: str


def read_jsonl(path: Path, limit: int | None = None) -> list[SummaryExample]:
    """Article/summary pairs of a JSONL file, in file order (the first `limit` if given)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist")
    try:
        return _read_rows(path, limit)
    except UnicodeDecodeError as error:
        raise DataError(f"{path} is not UTF-8 text: {error}") from None


def _read_rows(path: Path, limit: int | None) -> list[SummaryExample]:
    examples = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{path}:{number} is not valid JSON: {error}") from None
            fields = next(((a, s) for a, s in FIELD_NAMES if isinstance(row, dict) and a in row and s in row), None)
            if fields is None:
                wanted = " or ".join(f"{a!r}+{s!r}" for a, s in FIELD_NAMES)
                raise DataError(f"{path}:{number} has no article/summary fields (expected {wanted})")
            article, summary = (row[name] for name in fields)
            if not isinstance(article, str) or not isinstance(summary, str):
                raise DataError(f"{path}:{number}: {fields[0]!r} and {fields[1]!r} must be strings")
            examples.append(SummaryExample(id=str(row.get("id", number)), article=article, summary=summary))
            if limit is not None and len(examples) >= limit:
                break
    if not examples:
        raise DataError(f"{path} has no rows")
    return examples


def one_sentence_per_line(text: str) -> str:
    """Keep existing line breaks (CNN/DM highlights); otherwise split after . ! ? followed by space."""
    text = text.strip()
    if "\n" in text:
        return "\n".join(line.strip() for line in text.splitlines() if line.strip())
    return "\n".join(_SENTENCE_END.split(text))


def rouge_scores(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L/Lsum F-measures in percent (Porter stemming, as in the usual CNN/DM setup)."""
    if len(predictions) != len(references) or not references:
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for prediction, reference in zip(predictions, references, strict=True):
        scores = scorer.score(one_sentence_per_line(reference), one_sentence_per_line(prediction))
        for name in ROUGE_TYPES:
            totals[name] += scores[name].fmeasure
    return {name: 100.0 * total / len(references) for name, total in totals.items()}


class SummarizationTask:
    name = "summarization"
    headline_metric = "rougeLsum"

    def __init__(
        self,
        max_source_tokens: int = 512,
        max_target_tokens: int = 128,
        num_beams: int = 4,
        no_repeat_ngram_size: int = 3,
        eval_batch_size: int = 8,
    ) -> None:
        self.max_source_tokens = max_source_tokens
        self.max_target_tokens = max_target_tokens
        self.num_beams = num_beams
        # 3 is the usual CNN/DM decoding setting: no trigram twice in one summary.
        self.no_repeat_ngram_size = no_repeat_ngram_size
        self.eval_batch_size = eval_batch_size

    def load(self, path: Path, limit: int | None = None) -> list[SummaryExample]:
        return read_jsonl(path, limit)

    def train_features(self, tokenizer: PreTrainedTokenizerBase, examples: list[SummaryExample]) -> list[dict]:
        sources = tokenizer([e.article for e in examples], truncation=True, max_length=self.max_source_tokens)
        targets = tokenizer(
            text_target=[e.summary for e in examples], truncation=True, max_length=self.max_target_tokens
        )
        return [
            {"input_ids": ids, "attention_mask": mask, "labels": labels}
            for ids, mask, labels in zip(
                sources["input_ids"], sources["attention_mask"], targets["input_ids"], strict=True
            )
        ]

    def collate(self, tokenizer: PreTrainedTokenizerBase, features: list[dict]) -> Batch:
        batch = dict(
            tokenizer.pad([{k: f[k] for k in ("input_ids", "attention_mask")} for f in features], return_tensors="pt")
        )
        longest = max(len(f["labels"]) for f in features)
        # -100 marks padding in the labels: the model's loss and the distillation mask skip it.
        batch["labels"] = torch.tensor([f["labels"] + [-100] * (longest - len(f["labels"])) for f in features])
        return batch

    def distillation_logits(self, outputs: ModelOutput, batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        return outputs.logits, batch["labels"] != -100

    def example_losses(self, outputs: ModelOutput, batch: Batch) -> torch.Tensor:
        # Mean token cross-entropy of each summary (padding excluded), as the model's loss is per batch.
        labels = batch["labels"]
        tokens = F.cross_entropy(outputs.logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")
        counted = (labels != -100).sum(dim=1).clamp(min=1)
        return tokens.sum(dim=1) / counted

    @torch.no_grad()
    def generate(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        articles: list[str],
        progress: bool = True,
    ) -> list[str]:
        """Beam-search summaries of `articles` (at most `max_target_tokens` new tokens each)."""
        model.eval()
        device = next(model.parameters()).device
        summaries: list[str] = []
        batches = range(0, len(articles), self.eval_batch_size)
        for first in tqdm(batches, desc="generate", unit="batch", disable=not progress, leave=False):
            chunk = articles[first : first + self.eval_batch_size]
            inputs = tokenizer(
                chunk, truncation=True, max_length=self.max_source_tokens, padding=True, return_tensors="pt"
            )
            output = model.generate(
                **{k: v.to(device) for k, v in inputs.items() if k in ("input_ids", "attention_mask")},
                num_beams=self.num_beams,
                max_new_tokens=self.max_target_tokens,
                no_repeat_ngram_size=self.no_repeat_ngram_size,
            )
            summaries.extend(text.strip() for text in tokenizer.batch_decode(output, skip_special_tokens=True))
        return summaries

    def predict(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        examples: list[SummaryExample],
        progress: bool = True,
    ) -> dict[str, str]:
        summaries = self.generate(model, tokenizer, [e.article for e in examples], progress)
        return {example.id: summary for example, summary in zip(examples, summaries, strict=True)}

    def score(self, predictions: dict[str, str], examples: list[SummaryExample]) -> dict[str, float]:
        generated = [predictions.get(example.id, "") for example in examples]
        return {**rouge_scores(generated, [e.summary for e in examples]), "n": len(examples)}

    def evaluate(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        examples: list[SummaryExample],
        progress: bool = True,
    ) -> dict[str, float]:
        return self.score(self.predict(model, tokenizer, examples, progress), examples)

    def write_predictions(self, predictions: dict[str, str], path: Path) -> None:
        lines = (json.dumps({"id": key, "summary": text}, ensure_ascii=False) for key, text in predictions.items())
        Path(path).write_text("\n".join(lines) + "\n")
