"""Shared fixtures: tiny checkpoints written to temporary directories, offline."""

from __future__ import annotations

import os

# Tests never reach a model hub; set before huggingface_hub is imported, which reads it once.
os.environ["HF_HUB_OFFLINE"] = "1"

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from transformers import PreTrainedTokenizerFast  # noqa: E402

from tests.factories import tiny_bart, tiny_bert, train_bpe_tokenizer, train_wordpiece_tokenizer  # noqa: E402


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
