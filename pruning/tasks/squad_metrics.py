"""SQuAD v1.1 exact match and F1, with the official answer normalisation.

Normalisation (as in the official evaluation script): lower-case, drop punctuation, drop the
articles a/an/the, collapse whitespace. A prediction is scored against every gold answer of its
question and keeps the best score; dataset scores are means over questions, in percent.
"""

from __future__ import annotations

import re
import string
from collections import Counter

_PUNCTUATION = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    predicted_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    common = Counter(predicted_tokens) & Counter(gold_tokens)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(predicted_tokens)
    recall = overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: dict[str, str], golds: dict[str, list[str]]) -> dict[str, float]:
    """`exact_match` and `f1` in percent over the questions in `golds`; a missing prediction scores 0."""
    if not golds:
        raise ValueError("no questions to score")
    em = f1 = 0.0
    for question_id, answers in golds.items():
        prediction = predictions.get(question_id, "")
        em += max(exact_match(prediction, answer) for answer in answers)
        f1 += max(token_f1(prediction, answer) for answer in answers)
    return {"exact_match": 100.0 * em / len(golds), "f1": 100.0 * f1 / len(golds)}
