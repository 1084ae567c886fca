"""`blockserve init`: a randomly initialised preset plus a tokenizer trained on local text.

The offline stand-in for a hub checkpoint: with no model hub reachable, a small model can still be
fine-tuned, pruned and served end to end. Say so wherever its numbers are quoted: its weights
start random, so its quality measures the pipeline, not the architecture.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from pruning.core.errors import DataError
from pruning.tasks import make_task
from pruning.zoo.presets import PRESETS, build_preset

log = logging.getLogger(__name__)


def wordpiece_tokenizer(
    texts: Iterable[str] = (),
    vocab_size: int = 30522,
    *,
    vocab: dict[str, int] | None = None,
    model_input_names: list[str] | None = None,
) -> PreTrainedTokenizerFast:
    """A BERT-style uncased WordPiece tokenizer ([CLS] A [SEP] B [SEP]): from a fixed `vocab`, or trained on `texts`."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]") if vocab else models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    if vocab is None:
        tokenizer.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials))
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    extra = {"model_input_names": model_input_names} if model_input_names else {}
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        **extra,
    )


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A BART-style byte-level BPE tokenizer; <s>=0, <pad>=1, </s>=2 as BART's config expects."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tokenizer.decoder = decoders.ByteLevel()
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(texts, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
    )


TOKENIZER_TRAINERS = {"bert": wordpiece_tokenizer, "bart": train_bpe_tokenizer}


def _corpus(task_name: str, files: list[Path]) -> list[str]:
    """Every text of the data files in the preset's task format (articles and summaries; contexts and questions)."""
    task = make_task(task_name)
    texts: list[str] = []
    for path in files:
        for example in task.load(path):
            texts.extend(value for value in vars(example).values() if isinstance(value, str) and len(value) > 3)
    if not texts:
        raise DataError(f"no text in {', '.join(map(str, files))}")
    return list(dict.fromkeys(texts))  # contexts repeat once per question


def init_checkpoint(
    preset: str,
    corpus: list[Path],
    out_dir: Path,
    vocab_size: int = 8000,
    seed: int = 0,
    extra_texts: list[str] | None = None,
) -> Path:
    """Write a random `preset` model with a tokenizer trained on `corpus` files (and `extra_texts`) to `out_dir`."""
    spec = PRESETS[preset]
    texts = (_corpus(spec.task, corpus) if corpus else []) + list(extra_texts or [])
    if not texts:
        raise DataError("no text to train a tokenizer on: give corpus files or texts")
    tokenizer = TOKENIZER_TRAINERS[spec.model_type](texts, vocab_size)
    model = build_preset(
        preset,
        seed=seed,
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    log.info("wrote random %s with a %d-token tokenizer to %s", preset, len(tokenizer), out_dir)
    return out_dir
