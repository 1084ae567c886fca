"""Question answering for the service: requests → doc-stride windows → one batched forward → top-k spans.

Windows of all requests in a Serve batch run together (a long context is several windows), and each
request's answers are ranked over its own windows only. The span search is the evaluator's
(`pruning.tasks.qa.candidate_spans`), so the service answers exactly what `blockserve evaluate` scores.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerBase

from pruning.runtime.candidates import Forward
from pruning.tasks.qa import Span, candidate_spans
from service.config import LimitsConfig, padding_multiple
from service.errors import InputTooLong

N_BEST = 20


@dataclass(frozen=True)
class QAInput:
    question: str
    context: str
    top_k: int = 1


@dataclass(frozen=True)
class Window:
    """One doc-stride window as the model sees it: [special] question [special] context slice [special]."""

    input_ids: list[int]
    token_type_ids: list[int]
    offsets: list[tuple[int, int]]  # character spans (context tokens: in the request's context)
    in_context: list[bool]


@dataclass(frozen=True)
class EncodedQA:
    """A request tokenized once: its limits are checked on this encoding and its windows are cut from it."""

    item: QAInput
    tokens: int  # question + context tokens, before any window is cut
    windows: tuple[Window, ...]


def _window(encoding) -> Window:
    in_context = [sequence == 1 for sequence in encoding.sequence_ids]
    # Segment ids from the sequence ids: after `truncate`, the post-processor leaves the context tokens
    # at segment 0 (tokenizers 0.22), while BERT takes 1 from the first context token on.
    first = in_context.index(True) if any(in_context) else len(in_context) - 1
    types = [0] * first + [1] * (len(in_context) - first)
    return Window(list(encoding.ids), types, [tuple(offset) for offset in encoding.offsets], in_context)


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
        # Measured here: a pruned MiniLM in bf16 took 40 ms per request over 40 distinct lengths and
        # 10 ms with lengths rounded up to 32 (7 ms at one length): oneDNN's per-shape kernels thrash (its
        # cache is now sized for them, `service.model_thread`, and lengths are padded to 8).
        self.pad_multiple = padding_multiple(limits, limits.window_tokens, max_positions)
        # A private copy of the fast tokenizer's backend: transformers leaves truncation and padding
        # settings on the shared one after each call, and the windows below need neither.
        self.backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
        self.backend.no_truncation()
        self.backend.no_padding()

    def encode(self, item: QAInput) -> EncodedQA:
        """Tokenize once, check the limits, cut the doc-stride windows; `InputTooLong` over a limit.

        The windows come from the tokenizer's own truncation with stride and post-processor (special
        tokens, segment ids), run on this one encoding: the same windows the evaluator scores.
        """
        backend = self.backend
        question = backend.encode(item.question.lstrip(), add_special_tokens=False)
        if len(question.ids) > self.limits.max_question_tokens:
            raise InputTooLong("question", len(question.ids), self.limits.max_question_tokens)
        context = backend.encode(item.context, add_special_tokens=False)
        if len(context.ids) > self.limits.max_input_tokens:
            raise InputTooLong("context", len(context.ids), self.limits.max_input_tokens)
        tokens = len(question.ids) + len(context.ids)
        room = self.limits.window_tokens - len(question.ids) - backend.num_special_tokens_to_add(True)
        context.truncate(room, stride=self.limits.window_stride)
        full = backend.post_process(question, context, add_special_tokens=True)
        return EncodedQA(item, tokens, tuple(_window(encoding) for encoding in (full, *full.overflowing)))

    def answer(self, items: list[QAInput]) -> list[list[Span]]:
        """`answer_encoded` of requests not encoded yet (limits checked here)."""
        return self.answer_encoded([self.encode(item) for item in items])

    def answer_encoded(self, encoded: list[EncodedQA]) -> list[list[Span]]:
        """The `top_k` best spans of each request (character offsets into its context), best first."""
        windows = [(index, window) for index, request in enumerate(encoded) for window in request.windows]
        features = {"input_ids": [w.input_ids for _, w in windows]}
        if "token_type_ids" in self.tokenizer.model_input_names:
            features["token_type_ids"] = [w.token_type_ids for _, w in windows]
        # Right-padded whatever the tokenizer's default: each window's offsets index its leading positions.
        padded = self.tokenizer.pad(
            features, padding_side="right", pad_to_multiple_of=self.pad_multiple, return_tensors="np"
        )
        start_logits, end_logits = self.forward({name: array.astype(np.int64) for name, array in padded.items()})
        best: list[dict[tuple[int, int], Span]] = [{} for _ in encoded]
        for row, (index, window) in enumerate(windows):
            for span in candidate_spans(
                start_logits[row], end_logits[row], window.offsets, np.array(window.in_context),
                N_BEST, self.limits.max_answer_tokens,
            ):  # fmt: skip
                key = (span.start, span.end)  # the same span seen from two overlapping windows counts once
                if key not in best[index] or span.score > best[index][key].score:
                    best[index][key] = span
        return [
            sorted(spans.values(), key=lambda span: span.score, reverse=True)[: request.item.top_k]
            for spans, request in zip(best, encoded, strict=True)
        ]
