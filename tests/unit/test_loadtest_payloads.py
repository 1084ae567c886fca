import json

import pytest

from loadtests.payloads import file_payloads, qa_payloads, summarize_payloads
from pruning.core.errors import DataError


def _length(tokenizer, body: dict) -> int:
    return len(tokenizer(body["question"], body["context"])["input_ids"])


@pytest.mark.parametrize("tokens", [24, 48, 100])
def test_qa_bodies_fill_exactly_the_token_count(wordpiece_tokenizer, squad_file, tokens):
    # 100 tokens is longer than any fixture paragraph: the context continues with the following ones.
    payloads = qa_payloads(wordpiece_tokenizer, squad_file, tokens, count=12)
    assert len(payloads.bodies) == 12
    assert [_length(wordpiece_tokenizer, body) for body in payloads.bodies] == [tokens] * 12
    assert payloads.task == "qa" and payloads.tokens == tokens
    assert all(set(body) == {"question", "context"} for body in payloads.bodies)


def test_qa_bodies_are_deterministic_per_seed(wordpiece_tokenizer, squad_file):
    first = qa_payloads(wordpiece_tokenizer, squad_file, 40, count=8, seed=3)
    again = qa_payloads(wordpiece_tokenizer, squad_file, 40, count=8, seed=3)
    other = qa_payloads(wordpiece_tokenizer, squad_file, 40, count=8, seed=4)
    assert first.bodies == again.bodies
    assert first.bodies != other.bodies


def test_qa_count_is_honoured(wordpiece_tokenizer, squad_file):
    assert len(qa_payloads(wordpiece_tokenizer, squad_file, 32, count=3).bodies) == 3
    # The fixture holds 20 questions: asking for more gives at most those.
    assert 1 <= len(qa_payloads(wordpiece_tokenizer, squad_file, 32, count=50).bodies) <= 20


def test_qa_tokens_too_few_for_any_question_is_a_data_error(wordpiece_tokenizer, squad_file):
    # The shortest fixture question with [CLS] [SEP], plus the pair's second [SEP]: no room left for context.
    shortest = min(
        len(wordpiece_tokenizer(q)["input_ids"]) for q in ("What is it?", "Where is it?", "Which one?", "Who did it?")
    )
    with pytest.raises(DataError, match="no question leaves room"):
        qa_payloads(wordpiece_tokenizer, squad_file, shortest + 1, count=4)
    # One more position is enough for a one-token context.
    assert qa_payloads(wordpiece_tokenizer, squad_file, shortest + 2, count=4).bodies


@pytest.mark.parametrize("tokens", [20, 60])
def test_summarize_texts_fill_exactly_the_token_count(bpe_tokenizer, summaries_file, tokens):
    payloads = summarize_payloads(bpe_tokenizer, summaries_file, tokens, count=3)
    assert len(payloads.bodies) == 3
    # With special tokens: the model positions the request takes.
    assert [len(bpe_tokenizer(body["text"])["input_ids"]) for body in payloads.bodies] == [tokens] * 3
    assert all("max_new_tokens" not in body for body in payloads.bodies)
    assert payloads.new_tokens is None


def test_summarize_passes_max_new_tokens_through(bpe_tokenizer, summaries_file):
    payloads = summarize_payloads(bpe_tokenizer, summaries_file, 30, count=3, new_tokens=7)
    assert [body["max_new_tokens"] for body in payloads.bodies] == [7, 7, 7]
    assert payloads.new_tokens == 7


def test_summarize_articles_too_short_is_a_data_error(bpe_tokenizer, summaries_file):
    with pytest.raises(DataError, match="no article"):
        summarize_payloads(bpe_tokenizer, summaries_file, 100_000, count=3)


def _write(path, lines: list[str]):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_file_payloads_read_bodies_drop_variant_and_skip_blank_lines(tmp_path):
    path = _write(
        tmp_path / "bodies.jsonl",
        [
            json.dumps({"question": "Who?", "context": "Ada did.", "variant": "pruned"}),
            "",
            "   ",
            json.dumps({"question": "Where?", "context": "In London.", "top_k": 2}),
        ],
    )
    payloads = file_payloads("qa", path)
    # The load test sets `variant` itself; a variant in the file must not pin every request to one.
    assert payloads.bodies == (
        {"question": "Who?", "context": "Ada did."},
        {"question": "Where?", "context": "In London.", "top_k": 2},
    )
    assert payloads.tokens is None and payloads.source == str(path)


def test_file_payloads_summarize_schema(tmp_path):
    path = _write(tmp_path / "articles.jsonl", [json.dumps({"text": "A long article.", "max_new_tokens": 5})])
    assert file_payloads("summarize", path).bodies == ({"text": "A long article.", "max_new_tokens": 5},)


def test_file_payloads_bad_json_names_file_and_line(tmp_path):
    path = _write(tmp_path / "bodies.jsonl", [json.dumps({"question": "Who?", "context": "x"}), "", "{not json"])
    with pytest.raises(DataError, match=rf"{path}:3: not JSON"):
        file_payloads("qa", path)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"question": "Who?"}, "context"),
        ({"question": "Who?", "context": "x", "top_k": 0}, "top_k"),
        ({"question": "Who?", "context": "x", "colour": "red"}, "colour"),
        ({"text": "an article"}, "question"),  # a summarization body sent to /v1/qa
    ],
)
def test_file_payloads_invalid_body_names_the_field(tmp_path, body, field):
    path = _write(tmp_path / "bodies.jsonl", [json.dumps(body)])
    with pytest.raises(DataError, match=rf"{path}:1: not a /v1/qa body: .*{field}"):
        file_payloads("qa", path)


def test_file_payloads_empty_or_missing_file_is_a_data_error(tmp_path):
    empty = _write(tmp_path / "empty.jsonl", ["", "  "])
    with pytest.raises(DataError, match="has no requests"):
        file_payloads("qa", empty)
    with pytest.raises(DataError, match="does not exist"):
        file_payloads("qa", tmp_path / "missing.jsonl")
