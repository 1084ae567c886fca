"""Shared fixtures: tiny checkpoints written to temporary directories, offline."""

from __future__ import annotations

import json
import os

# Tests never reach a model hub; set before huggingface_hub is imported, which reads it once.
os.environ["HF_HUB_OFFLINE"] = "1"

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from transformers import PreTrainedTokenizerFast  # noqa: E402

from tests.factories import _CORPUS, tiny_bart, tiny_bert, train_bpe_tokenizer, train_wordpiece_tokenizer  # noqa: E402


@pytest.fixture(scope="session")
def wordpiece_tokenizer() -> PreTrainedTokenizerFast:
    return train_wordpiece_tokenizer()


@pytest.fixture(scope="session")
def dense_bert_dir(tmp_path_factory, wordpiece_tokenizer) -> Path:
    """A dense tiny BERT QA checkpoint directory with a locally trained tokenizer."""
    directory = tmp_path_factory.mktemp("bert-dense")
    tiny_bert(vocab_size=len(wordpiece_tokenizer)).save_pretrained(directory)
    wordpiece_tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def dense_bart_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("bart-dense")
    tiny_bart().save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def bpe_tokenizer() -> PreTrainedTokenizerFast:
    return train_bpe_tokenizer()


@pytest.fixture(scope="session")
def summarizer_dir(tmp_path_factory, bpe_tokenizer) -> Path:
    """A dense tiny BART summarization checkpoint with a locally trained byte-level BPE tokenizer."""
    directory = tmp_path_factory.mktemp("bart-summarizer")
    tiny_bart(vocab_size=len(bpe_tokenizer), max_positions=160).save_pretrained(directory)
    bpe_tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def squad_file(tmp_path_factory):
    """A SQuAD v1.1 file whose answers are real spans of the corpus sentences."""
    questions = [("What is it?", 3), ("Where is it?", 7), ("Which one?", 1), ("Who did it?", 5)]
    paragraphs = []
    for index, context in enumerate(_CORPUS):
        words = context.split()
        qas = []
        for number, (question, start_word) in enumerate(questions):
            answer = " ".join(words[start_word : start_word + 2])
            qas.append(
                {
                    "id": f"{index}-{number}",
                    "question": question,
                    "answers": [{"text": answer, "answer_start": context.index(answer)}],
                }
            )
        paragraphs.append({"context": context, "qas": qas})
    path = tmp_path_factory.mktemp("squad") / "tiny-squad.json"
    path.write_text(json.dumps({"data": [{"title": "tiny", "paragraphs": paragraphs}]}))
    return path


@pytest.fixture(scope="session")
def summaries_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("summaries") / "tiny.jsonl"
    rows = [{"id": str(i), "article": " ".join(_CORPUS[i:] + _CORPUS[:i]), "highlights": _CORPUS[i]} for i in range(5)]
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    return path
