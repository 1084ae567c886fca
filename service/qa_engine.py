"""Question answering for the service: requests → doc-stride windows → one batched forward → top-k spans.

Windows of all requests in a Serve batch run together (a long context is several windows), and each
request's answers are ranked over its own windows only. The span search is the evaluator's
(`pruning.tasks.qa.candidate_spans`), so the service answers exactly what `blockserve evaluate` scores.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from pruning.tasks.qa import MODEL_INPUTS, Span, candidate_spans
from service.config import LimitsConfig
from service.errors import InputTooLong

# (input arrays by name) → (start logits, end logits), each (windows, tokens)
Forward = Callable[[dict[str, np.ndarray]], tuple[np.ndarray, np.ndarray]]
N_BEST = 20


@dataclass(frozen=True)
class QAInput:
    question: str
    context: str
    top_k: int = 1


def torch_forward(model: PreTrainedModel) -> Forward:
    device = next(model.parameters()).device

    @torch.inference_mode()
    def forward(arrays: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        outputs = model(**{name: torch.from_numpy(array).to(device) for name, array in arrays.items()})
        return outputs.start_logits.float().cpu().numpy(), outputs.end_logits.float().cpu().numpy()

    return forward


def onnx_forward(session) -> Forward:
    """The same contract as `torch_forward`, on an ONNX Runtime session of an exported QA model."""
    names = [node.name for node in session.get_inputs()]

    def forward(arrays: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        feed = dict(arrays)
        # The exported graph always takes token_type_ids; a tokenizer without them means "all segment 0",
        # which is what the torch model assumes when they are absent.
        feed.setdefault("token_type_ids", np.zeros_like(arrays["input_ids"]))
        start, end = session.run(["start_logits", "end_logits"], {name: feed[name] for name in names})
        return start, end

    return forward


class QAEngine:
    def __init__(
        self, forward: Forward, tokenizer: PreTrainedTokenizerBase, limits: LimitsConfig, max_positions: int
    ) -> None:
        if limits.window_tokens > max_positions:
            raise ValueError(
                f"limits.window_tokens ({limits.window_tokens}) exceeds the model's {max_positions} positions"
            )
        self.forward = forward
        self.tokenizer = tokenizer
        self.limits = limits

    def count_tokens(self, item: QAInput) -> int:
        """Context tokens of a request; raises `InputTooLong` when the question or the context is over its limit."""
        question = len(self.tokenizer(item.question, add_special_tokens=False)["input_ids"])
        if question > self.limits.max_question_tokens:
            raise InputTooLong("question", question, self.limits.max_question_tokens)
        context = len(self.tokenizer(item.context, add_special_tokens=False)["input_ids"])
        if context > self.limits.max_input_tokens:
            raise InputTooLong("context", context, self.limits.max_input_tokens)
        return question + context

    def answer(self, items: list[QAInput]) -> list[list[Span]]:
        """The `top_k` best spans of each item (character offsets into its context), best first."""
        encoded = self.tokenizer(
            [item.question.lstrip() for item in items],
            [item.context for item in items],
            truncation="only_second",
            max_length=self.limits.window_tokens,
            stride=self.limits.window_stride,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
            padding="longest",
            return_tensors="np",
        )
        arrays = {name: encoded[name].astype(np.int64) for name in MODEL_INPUTS if name in encoded}
        start_logits, end_logits = self.forward(arrays)
        best: list[dict[tuple[int, int], Span]] = [{} for _ in items]
        for window, item_index in enumerate(encoded["overflow_to_sample_mapping"]):
            sequence_ids = encoded.sequence_ids(window)
            in_context = np.array([s == 1 for s in sequence_ids])
            offsets = [tuple(pair) for pair in encoded["offset_mapping"][window][: len(sequence_ids)]]
            for span in candidate_spans(
                start_logits[window], end_logits[window], offsets, in_context, N_BEST, self.limits.max_answer_tokens
            ):
                key = (span.start, span.end)  # the same span seen from two overlapping windows counts once
                if key not in best[item_index] or span.score > best[item_index][key].score:
                    best[item_index][key] = span
        return [
            sorted(spans.values(), key=lambda span: span.score, reverse=True)[: item.top_k]
            for spans, item in zip(best, items, strict=True)
        ]
