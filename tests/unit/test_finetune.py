import json

import pytest
import torch
from transformers import BertConfig, BertModel

from blockserve.cli import main
from pruning.artifacts.checkpoint import load_checkpoint
from pruning.core.errors import CheckpointError


def test_finetune_trains_writes_a_loadable_teacher_and_its_results(dense_bert_dir, squad_file, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "teacher"
    code = main(
        ["finetune", "--model", str(dense_bert_dir), "--train", str(squad_file), "--eval", str(squad_file),
         "--out", str(out), "--max-steps", "6", "--batch-size", "4", "--lr", "1e-3", "--max-length", "48",
         "--stride", "16", "--log-every", "2"]
    )  # fmt: skip
    assert code == 0
    assert "6 steps" in capsys.readouterr().out
    results = json.loads((out / "training.json").read_text())
    assert results["steps"] == 6 and results["task"] == "question-answering"
    assert results["evaluation"]["n"] == 20 and "f1" in results["evaluation"]
    assert (out / "training.png").stat().st_size > 0
    before = load_checkpoint(dense_bert_dir).model.state_dict()
    after = load_checkpoint(out).model.state_dict()
    assert any(not torch.equal(before[name], after[name]) for name in before)  # it did train


def test_finetune_adds_a_fresh_task_head_to_a_bare_encoder(wordpiece_tokenizer, squad_file, tmp_path):  # noqa: F811
    base = tmp_path / "encoder"
    config = BertConfig(
        vocab_size=len(wordpiece_tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=128,
    )  # fmt: skip
    BertModel(config).save_pretrained(base)
    wordpiece_tokenizer.save_pretrained(base)
    assert type(load_checkpoint(base).model).__name__ == "BertModel"
    with pytest.raises(CheckpointError, match="tensors missing"):  # no head, and none allowed to start fresh
        load_checkpoint(base, task="question-answering")
    out = tmp_path / "qa"
    code = main(
        ["finetune", "--model", str(base), "--task", "question-answering", "--train", str(squad_file),
         "--out", str(out), "--max-steps", "2", "--batch-size", "4", "--max-length", "48", "--stride", "16"]
    )  # fmt: skip
    assert code == 0
    assert type(load_checkpoint(out).model).__name__ == "BertForQuestionAnswering"
