"""Compact checkpoint format v1: round trips, and clear refusals of bad checkpoints."""

import copy
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from pruning.artifacts.checkpoint import MANIFEST_NAME, compact_checkpoint, load_checkpoint, load_pretrained
from pruning.artifacts.compact import compact_model
from pruning.artifacts.records import PlanFileMethod
from pruning.core.errors import CheckpointError
from pruning.core.plan import PruningPlan
from pruning.core.structure import geometry_of
from tests.factories import edited_plan


def _plan_for(directory) -> PruningPlan:
    model = load_pretrained(directory)

    def no_heads_in_layer_1(data: dict) -> None:
        heads = data["stacks"]["encoder"]["layers"][1]["heads"]
        heads[next(iter(heads))] = []

    return edited_plan(PruningPlan.uniform(geometry_of(model.config), 0.5, 0.25), no_heads_in_layer_1)


@pytest.fixture(scope="module")
def compact_bert_dir(dense_bert_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("bert-compact")
    compact_checkpoint(dense_bert_dir, _plan_for(dense_bert_dir), out, method=PlanFileMethod(plan_file="plan.json"))
    return out


def _same_state(a, b) -> None:
    state_a, state_b = a.state_dict(), b.state_dict()
    assert state_a.keys() == state_b.keys()
    for name in state_a:
        assert torch.equal(state_a[name], state_b[name]), name


def test_compact_directory_layout_and_manifest(compact_bert_dir):
    names = {path.name for path in compact_bert_dir.iterdir()}
    assert {"config.json", "model.safetensors", MANIFEST_NAME, "tokenizer.json"} <= names
    manifest = json.loads((compact_bert_dir / MANIFEST_NAME).read_text())
    assert manifest["format_version"] == 1
    assert manifest["architecture"] == "bert"
    assert manifest["task"] == "question-answering"
    assert manifest["method"] == {"name": "plan-file", "plan_file": "plan.json"}
    assert manifest["stats"]["params"] < manifest["stats"]["params_dense"]
    assert manifest["stats"]["flops_ratio"] > 1.5
    assert manifest["plan"]["stacks"]["encoder"]["layers"][1]["heads"]["self_attn"] == []
    # The config is the stock one with dense sizes; the weights are smaller than it says.
    config = json.loads((compact_bert_dir / "config.json").read_text())
    assert config["num_attention_heads"] == 4
    tensors = load_file(compact_bert_dir / "model.safetensors")
    assert tensors["bert.encoder.layer.0.attention.self.query.weight"].shape == (16, 32)


def test_bert_round_trip_equals_in_memory_compaction(dense_bert_dir, compact_bert_dir):
    dense = load_checkpoint(dense_bert_dir)
    assert not dense.is_compact
    expected = compact_model(copy.deepcopy(dense.model), _plan_for(dense_bert_dir))
    loaded = load_checkpoint(compact_bert_dir)
    assert loaded.is_compact and type(loaded.model).__name__ == "BertForQuestionAnswering"
    assert not loaded.model.training
    _same_state(expected, loaded.model)
    assert loaded.tokenizer()("hello world")["input_ids"][0] == loaded.tokenizer().cls_token_id
    ids = torch.randint(5, dense.model.config.vocab_size, (2, 10))
    with torch.no_grad():
        assert torch.equal(expected(input_ids=ids).start_logits, loaded.model(input_ids=ids).start_logits)


def test_bart_round_trip_keeps_tied_embeddings(dense_bart_dir, tmp_path):
    plan = _plan_for(dense_bart_dir)
    compact_checkpoint(dense_bart_dir, plan, tmp_path / "bart")
    loaded = load_checkpoint(tmp_path / "bart").model
    expected = compact_model(load_pretrained(dense_bart_dir), plan)
    _same_state(expected, loaded)
    assert loaded.lm_head.weight is loaded.model.shared.weight
    assert loaded.model.decoder.embed_tokens.weight is loaded.model.shared.weight
    ids = torch.randint(4, loaded.config.vocab_size, (1, 9))
    settings = {"max_new_tokens": 6, "min_new_tokens": 6, "num_beams": 2}
    with torch.no_grad():
        assert torch.equal(expected.generate(input_ids=ids, **settings), loaded.generate(input_ids=ids, **settings))


def _copy(source, tmp_path, name="copy"):
    target = tmp_path / name
    shutil.copytree(source, target)
    return target


def test_shape_mismatch_names_file_tensor_and_shapes(compact_bert_dir, tmp_path):
    broken = _copy(compact_bert_dir, tmp_path)
    tensors = load_file(broken / "model.safetensors")
    tensors["bert.encoder.layer.0.attention.self.query.weight"] = torch.zeros(24, 32)
    save_file(tensors, broken / "model.safetensors")
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(broken)
    message = str(error.value)
    assert "model.safetensors" in message
    assert "bert.encoder.layer.0.attention.self.query.weight" in message
    assert "(24, 32)" in message and "(16, 32)" in message


def test_missing_and_unexpected_tensors_are_reported(compact_bert_dir, tmp_path):
    missing = _copy(compact_bert_dir, tmp_path, "missing")
    tensors = load_file(missing / "model.safetensors")
    del tensors["qa_outputs.bias"]
    save_file(tensors, missing / "model.safetensors")
    with pytest.raises(CheckpointError, match="missing from the checkpoint: qa_outputs.bias"):
        load_checkpoint(missing)

    extra = _copy(compact_bert_dir, tmp_path, "extra")
    tensors = load_file(extra / "model.safetensors")
    tensors["surprise.weight"] = torch.zeros(2)
    save_file(tensors, extra / "model.safetensors")
    with pytest.raises(CheckpointError, match="unexpected tensor 'surprise.weight'"):
        load_checkpoint(extra)


def test_corrupt_safetensors_is_reported(compact_bert_dir, tmp_path):
    broken = _copy(compact_bert_dir, tmp_path)
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors is not a readable safetensors file"):
        load_checkpoint(broken)
    (broken / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_checkpoint(broken)


def test_dense_shape_mismatch_and_missing_tensor_are_reported(dense_bert_dir, tmp_path):
    broken = _copy(dense_bert_dir, tmp_path)
    tensors = load_file(broken / "model.safetensors")
    tensors["bert.encoder.layer.0.attention.self.query.weight"] = torch.zeros(24, 32)
    del tensors["qa_outputs.bias"]
    save_file(tensors, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(broken)
    message = str(error.value)
    assert message.startswith("model.safetensors in ")
    assert (
        "tensor 'bert.encoder.layer.0.attention.self.query.weight' has shape (24, 32); the model expects (32, 32)"
        in message
    )
    assert "tensors missing from the checkpoint: qa_outputs.bias" in message


def test_corrupt_dense_safetensors_is_reported(dense_bert_dir, tmp_path):
    broken = _copy(dense_bert_dir, tmp_path)
    (broken / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_checkpoint(broken)


def test_pickle_weights_are_refused_not_unpickled(dense_bert_dir, tmp_path):
    pickled = _copy(dense_bert_dir, tmp_path)
    (pickled / "model.safetensors").unlink()
    # Not even a valid pickle: proves the loader never opens it.
    (pickled / "pytorch_model.bin").write_bytes(b"not a pickle")
    with pytest.raises(
        CheckpointError, match=r"only pickle weights \(pytorch_model.bin\); blockserve loads safetensors only"
    ):
        load_checkpoint(pickled)


def test_manifest_errors(compact_bert_dir, tmp_path):
    future = _copy(compact_bert_dir, tmp_path, "future")
    manifest = json.loads((future / MANIFEST_NAME).read_text())
    manifest["format_version"] = 2
    (future / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="format_version 2 is not supported"):
        load_checkpoint(future)

    bad_plan = _copy(compact_bert_dir, tmp_path, "bad-plan")
    manifest = json.loads((bad_plan / MANIFEST_NAME).read_text())
    manifest["plan"]["stacks"]["encoder"]["layers"][0]["heads"]["self_attn"] = [9]
    (bad_plan / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="encoder layer 0: self_attn head index 9 is out of range"):
        load_checkpoint(bad_plan)

    truncated = _copy(compact_bert_dir, tmp_path, "truncated")
    (truncated / MANIFEST_NAME).write_text("{")
    with pytest.raises(CheckpointError, match="blockserve.json is not valid JSON"):
        load_checkpoint(truncated)


def test_plan_not_matching_config_is_reported(compact_bert_dir, tmp_path):
    other = _copy(compact_bert_dir, tmp_path)
    config = json.loads((other / "config.json").read_text())
    config["num_hidden_layers"] = 4
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="plan does not fit config.json: encoder stack: plan has 3 layers"):
        load_checkpoint(other)


def test_missing_directory_and_files(tmp_path):
    with pytest.raises(CheckpointError, match="neither an existing directory nor a hub model id"):
        load_checkpoint(str(tmp_path / "no" / "such" / "dir"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="has no config.json"):
        load_checkpoint(tmp_path / "empty")


def test_compacting_a_compact_checkpoint_is_refused(compact_bert_dir, tmp_path):
    plan = json.loads((compact_bert_dir / MANIFEST_NAME).read_text())["plan"]
    with pytest.raises(CheckpointError, match="already compact"):
        compact_checkpoint(compact_bert_dir, PruningPlan.from_dict(plan), tmp_path / "again")
