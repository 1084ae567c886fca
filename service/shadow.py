"""Shadow checks: does a pruned variant still answer like its reference, on live traffic?

A sampled share of a variant's requests is run again on the reference variant *after* the response has
been sent, and the two answers are compared: QA by exact span match and token F1 of the answer texts,
summarization by ROUGE-L F1 of the summaries. Agreement goes to Prometheus
(`blockserve_shadow_agreement{task,variant,against,metric}`, a histogram of per-request scores in
[0, 1]: agreement = rate(_sum) / rate(_count)). Shadow work never delays an answer: the reference runs it
on its idle lane (`_ModelServer.shadow`: a thread at the lowest CPU priority, outside the batch queue),
so it uses only CPU no request wants. It is dropped first under load: when the variant's in-flight shadow
requests are at their cap, or when the reference refuses (its replica's queue full), the sample is dropped
and counted as such.
"""

from __future__ import annotations

from functools import lru_cache

from pruning.tasks.squad_metrics import normalize_answer, token_f1

AGREEMENT_BUCKETS = (0.0, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0)


def qa_agreement(answer: str, reference: str, span: tuple[int, int], reference_span: tuple[int, int]) -> dict:
    return {
        "span_exact_match": float(span == reference_span),
        "answer_f1": token_f1(answer, reference) if normalize_answer(reference) else float(answer == reference),
    }


@lru_cache(maxsize=1)
def _rouge():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def summary_agreement(summary: str, reference: str) -> dict:
    if not summary.strip() and not reference.strip():
        return {"rougeL": 1.0}
    return {"rougeL": _rouge().score(reference, summary)["rougeL"].fmeasure}


def compare_qa(payload, primary: list, reference: list) -> dict:
    """Best spans of two QA results (lists of spans, best first) for the same request."""

    def best(spans) -> tuple[str, tuple[int, int]]:
        if not spans:
            return "", (0, 0)
        return payload.context[spans[0].start : spans[0].end], (spans[0].start, spans[0].end)

    (answer, span), (expected, expected_span) = best(primary), best(reference)
    return qa_agreement(answer, expected, span, expected_span)


def compare_summaries(payload, primary, reference) -> dict:
    return summary_agreement(primary.text, reference.text)


COMPARE = {"qa": compare_qa, "summarize": compare_summaries}  # route → how two results are compared
