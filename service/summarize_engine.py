"""Summarization for the service: batched `generate()` with the configured decoding settings.

A request may lower `max_new_tokens` or `num_beams`, never raise them past the configuration (a
request that tries gets a clear error rather than a silent clamp). Requests with the same settings
share one `generate()` call.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from service.config import GenerationConfig, LimitsConfig, padding_multiple
from service.errors import InputTooLong, SettingsTooHigh


@dataclass(frozen=True)
class SummaryInput:
    text: str
    max_new_tokens: int | None = None
    num_beams: int | None = None


@dataclass(frozen=True)
class EncodedSummary:
    """A request tokenized once: its limit is checked on these ids and the batch generates from them."""

    item: SummaryInput
    input_ids: tuple[int, ...]

    @property
    def tokens(self) -> int:
        return len(self.input_ids)


@dataclass(frozen=True)
class Summary:
    text: str
    input_tokens: int
    output_tokens: int


class SummarizeEngine:
    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        limits: LimitsConfig,
        generation: GenerationConfig,
    ) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.limits, self.generation = limits, generation
        self.device = next(model.parameters()).device
        # The model cannot read past its position table, whatever the config allows.
        self.max_input_tokens = min(limits.max_input_tokens, model.config.max_position_embeddings)
        self.pad_multiple = padding_multiple(limits, self.max_input_tokens, model.config.max_position_embeddings)

    def encode(self, item: SummaryInput) -> EncodedSummary:
        """Tokenized once; `InputTooLong` over the limit and `SettingsTooHigh` past the config."""
        for name in ("max_new_tokens", "num_beams"):
            asked, allowed = getattr(item, name), getattr(self.generation, name)
            if asked is not None and asked > allowed:
                raise SettingsTooHigh(f"{name} {asked} is above this service's limit of {allowed}")
        ids = tuple(self.tokenizer(item.text)["input_ids"])
        if len(ids) > self.max_input_tokens:
            raise InputTooLong("text", len(ids), self.max_input_tokens)
        return EncodedSummary(item, ids)

    def _settings(self, item: SummaryInput) -> tuple[int, int]:
        return item.max_new_tokens or self.generation.max_new_tokens, item.num_beams or self.generation.num_beams

    def summarize(self, items: list[SummaryInput]) -> list[Summary]:
        """`summarize_encoded` of requests not encoded yet (limits checked here)."""
        return self.summarize_encoded([self.encode(item) for item in items])

    @torch.inference_mode()
    def summarize_encoded(self, encoded: list[EncodedSummary]) -> list[Summary]:
        results: list[Summary | None] = [None] * len(encoded)
        groups: dict[tuple[int, int], list[int]] = {}
        for index, request in enumerate(encoded):
            groups.setdefault(self._settings(request.item), []).append(index)
        for (max_new_tokens, num_beams), indices in groups.items():
            # Padded as the tokenizer pads (its `padding_side`), on the ids counted against the limit.
            inputs = self.tokenizer.pad(
                {"input_ids": [list(encoded[i].input_ids) for i in indices]},
                pad_to_multiple_of=self.pad_multiple, return_tensors="pt",
            )  # fmt: skip
            output = self.model.generate(
                input_ids=inputs["input_ids"].to(self.device),
                attention_mask=inputs["attention_mask"].to(self.device),
                max_new_tokens=max_new_tokens,
                min_new_tokens=min(self.generation.min_new_tokens, max_new_tokens),
                num_beams=num_beams,
                length_penalty=self.generation.length_penalty,
                no_repeat_ngram_size=self.generation.no_repeat_ngram_size,
            )
            special = set(self.tokenizer.all_special_ids)
            for row, index in enumerate(indices):
                ids = output[row].tolist()
                results[index] = Summary(
                    text=self.tokenizer.decode(ids, skip_special_tokens=True).strip(),
                    input_tokens=len(encoded[index].input_ids),
                    output_tokens=sum(1 for token in ids if token not in special),
                )
        return results  # type: ignore[return-value]
