"""Request bodies for a load test: real text cut to an exact token length, or a user's JSONL file.

A model's time depends on the tokens it sees, so a load test that compares variants (and compares
itself with `blockserve bench`) must send inputs of a known length. QA requests are a SQuAD question
with its paragraph, continued with following paragraphs and cut so that question + context + special
tokens fill exactly `tokens` positions: one doc-stride window of exactly that length. Summarization
requests are CNN/DM articles cut to `tokens` model positions (special tokens included).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from pruning.core.errors import DataError
from pruning.core.plan import describe_validation_error
from pruning.core.task_registry import route_entry
from pruning.tasks.qa import read_squad
from pruning.tasks.summarization import read_jsonl


@dataclass(frozen=True)
class Payloads:
    """The bodies to send (without `variant`; the load test sets it) and what they are."""

    task: str
    bodies: tuple[dict, ...]
    source: str
    tokens: int | None  # model positions each request fills; None when unknown (a user's file)
    new_tokens: int | None = None  # summarization: tokens each request asks to generate

    def describe(self) -> str:
        length = f"{self.tokens} tokens each" if self.tokens else "lengths as given"
        return f"{len(self.bodies)} {self.task} requests, {length}, from {self.source}"


def _cut(tokenizer, text: str, tokens: int) -> str:
    """`text` up to the end of its `tokens`-th token (a prefix of the original text; it may end inside a word)."""
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = encoded["offset_mapping"]
    if len(offsets) < tokens:
        raise DataError(f"text of {len(offsets)} tokens is shorter than the {tokens} asked for")
    return text[: offsets[tokens - 1][1]]


def _count(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def _exact(tokenizer, text: str, tokens: int) -> str | None:
    """`text` cut to exactly `tokens` tokens when re-tokenized (a cut can merge or split a word piece)."""
    for target in (tokens, tokens + 1, tokens - 1, tokens + 2, tokens - 2):
        candidate = _cut(tokenizer, text, target).rstrip()
        if _count(tokenizer, candidate) == tokens:
            return candidate
    return None


def qa_payloads(
    tokenizer, squad: Path, tokens: int, count: int, new_tokens: int | None = None, seed: int = 0
) -> Payloads:
    """`count` QA bodies whose question + context + special tokens are exactly `tokens` long.

    `new_tokens` is ignored (nothing is generated); it keeps one signature for every task's builder.
    """
    examples = read_squad(squad)
    contexts = list(dict.fromkeys(example.context for example in examples))  # distinct, in file order
    specials = tokenizer.num_special_tokens_to_add(pair=True)
    order = random.Random(seed).sample(range(len(examples)), len(examples))
    bodies = []
    for index in order:
        example = examples[index]
        room = tokens - specials - _count(tokenizer, example.question)
        if room < 1:
            continue
        parts, position = [example.context], contexts.index(example.context)
        while _count(tokenizer, " ".join(parts)) < room + 2:  # following paragraphs, cyclically
            position = (position + 1) % len(contexts)
            parts.append(contexts[position])
        context = _exact(tokenizer, " ".join(parts), room)
        if context is not None:
            bodies.append({"question": example.question, "context": context})
        if len(bodies) == count:
            break
    if not bodies:
        raise DataError(f"{squad}: no question leaves room for context in {tokens} tokens")
    return Payloads("qa", tuple(bodies), str(squad), tokens)


def summarize_payloads(
    tokenizer, articles: Path, tokens: int, count: int, new_tokens: int | None = None, seed: int = 0
) -> Payloads:
    """`count` summarization bodies whose article fills exactly `tokens` model positions."""
    examples = read_jsonl(articles)
    room = tokens - tokenizer.num_special_tokens_to_add(pair=False)
    order = random.Random(seed).sample(range(len(examples)), len(examples))
    bodies = []
    for index in order:
        text = examples[index].article
        if _count(tokenizer, text) < room + 2:
            continue
        cut = _exact(tokenizer, text, room)
        if cut is not None:
            bodies.append({"text": cut} | ({"max_new_tokens": new_tokens} if new_tokens else {}))
        if len(bodies) == count:
            break
    if not bodies:
        raise DataError(f"{articles}: no article has {room} tokens")
    return Payloads("summarize", tuple(bodies), str(articles), tokens, new_tokens)


def file_payloads(task: str, path: Path) -> Payloads:
    """Bodies from a JSONL file, one request per line, each checked against the service's schema."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"payload file {path} does not exist")
    bodies = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            body = json.loads(line)
            route_entry(task).resolve("request_schema").model_validate(body)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}:{number}: not JSON: {error}") from None
        except ValidationError as error:
            raise DataError(f"{path}:{number}: not a /v1/{task} body: {describe_validation_error(error)}") from None
        bodies.append({k: v for k, v in body.items() if k != "variant"})
    if not bodies:
        raise DataError(f"payload file {path} has no requests")
    return Payloads(task, tuple(bodies), str(path), None)
