"""Tiny BERT/BART models built from configs, and tokenizers trained here: no hub, no network."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import (
    BartConfig,
    BartForConditionalGeneration,
    BertConfig,
    BertForQuestionAnswering,
    PreTrainedTokenizerFast,
)

from pruning.core.plan import PruningPlan
from pruning.zoo import local_init

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"

_CORPUS = [
    "The Apollo program was the third United States human spaceflight program carried out by NASA.",
    "Fresno is a major city in the San Joaquin Valley of California, United States.",
    "A prime number is a natural number greater than 1 that has no positive divisors other than 1 and itself.",
    "The Victoria and Albert Museum in London is the world's largest museum of decorative arts and design.",
    "Summaries are short; articles are long. Pruning removes heads and feed-forward units from each layer.",
]


def _training_text() -> list[str]:
    """Real text when the shared data is present, the built-in sentences otherwise."""
    squad = SHARED / "data" / "squad" / "dev.json"
    if squad.is_file():
        paragraphs = json.loads(squad.read_text())["data"][0]["paragraphs"][:20]
        return _CORPUS + [p["context"] for p in paragraphs]
    return _CORPUS


def train_wordpiece_tokenizer(vocab_size: int = 300) -> PreTrainedTokenizerFast:
    """A BERT-style WordPiece tokenizer trained locally by the `tokenizers` library."""
    return local_init.wordpiece_tokenizer(_training_text(), vocab_size)


def _summarization_text() -> list[str]:
    cnndm = SHARED / "data" / "summarization" / "cnndm_sample.jsonl"
    if cnndm.is_file():
        rows = [json.loads(line) for line in cnndm.read_text().splitlines()[:30]]
        return _CORPUS + [row["article"][:2000] for row in rows] + [row["highlights"] for row in rows]
    return _CORPUS


def train_bpe_tokenizer(vocab_size: int = 400) -> PreTrainedTokenizerFast:
    """A BART-style byte-level BPE tokenizer trained locally."""
    return local_init.train_bpe_tokenizer(_summarization_text(), vocab_size)


def tiny_bert(vocab_size: int = 300, layers: int = 3, seed: int = 0, dropout: float = 0.1) -> BertForQuestionAnswering:
    torch.manual_seed(seed)
    config = BertConfig(
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    return BertForQuestionAnswering(config).eval()


def tiny_bart(vocab_size: int = 120, seed: int = 0, max_positions: int = 64) -> BartForConditionalGeneration:
    torch.manual_seed(seed)
    config = BartConfig(
        vocab_size=vocab_size,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=max_positions,
    )
    return BartForConditionalGeneration(config).eval()


def edited_plan(plan: PruningPlan, edit: Callable[[dict], None]) -> PruningPlan:
    """A new plan: `plan` as JSON data, changed in place by `edit`, then validated anew.

    Plans are frozen, so tests build a changed one from its data; validation sorts the kept lists
    and checks the indices again, as for a plan file.
    """
    data = plan.model_dump(mode="json")
    edit(data)
    return PruningPlan.model_validate(data)
