"""ONNX export of dense and compact BERT QA: parity with torch on new batch and sequence sizes."""

import copy

import numpy as np
import onnx
import pytest
import torch

from pruning.artifacts.checkpoint import MANIFEST_NAME, compact_checkpoint
from pruning.artifacts.compact import compact_model
from pruning.artifacts.export import (
    ONNX_NAME,
    QA_INPUTS,
    export_checkpoint,
    export_qa_onnx,
    fused_attention_count,
    onnx_in_numerics,
    onnx_providers,
    onnx_session,
)
from pruning.core.errors import UnsupportedModelError
from pruning.core.plan import PruningPlan
from pruning.core.structure import geometry_of
from tests.factories import edited_plan, tiny_bart, tiny_bert

TOLERANCE = 1e-4


def _feeds(vocab_size: int, batch: int, seq: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(batch * 100 + seq)
    ids = torch.randint(5, vocab_size, (batch, seq), generator=generator)
    mask = torch.ones_like(ids)
    mask[-1, seq // 2 :] = 0
    types = torch.zeros_like(ids)
    types[:, seq // 3 :] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def _assert_parity(model, onnx_path) -> None:
    session = onnx_session(onnx_path, device="cpu")
    # Shapes differ from the export example (2 × 16): the axes must really be dynamic.
    for batch, seq in ((1, 7), (3, 29)):
        inputs = _feeds(model.config.vocab_size, batch, seq)
        with torch.no_grad():
            expected = model(**inputs)
        start, end = session.run(None, {name: inputs[name].numpy().astype(np.int64) for name in QA_INPUTS})
        np.testing.assert_allclose(start, expected.start_logits.numpy(), atol=TOLERANCE, rtol=0)
        np.testing.assert_allclose(end, expected.end_logits.numpy(), atol=TOLERANCE, rtol=0)


def test_dense_export_matches_torch(tmp_path):
    model = tiny_bert()
    _assert_parity(model, export_qa_onnx(model, tmp_path / "dense.onnx"))


def test_every_layer_fuses_into_one_attention_node(tmp_path):
    model = tiny_bert()
    graph = export_qa_onnx(model, tmp_path / "dense.onnx")
    assert fused_attention_count(graph) == model.config.num_hidden_layers
    assert fused_attention_count(export_qa_onnx(model, tmp_path / "plain.onnx", fuse=False)) == 0


def test_different_head_counts_per_layer_each_fuse_and_match_torch(tmp_path):
    """ONNX Runtime reads each layer's head count from its reshapes; a layer with no heads has nothing to fuse."""
    model = tiny_bert()

    def uneven_heads(data: dict) -> None:
        layers = data["stacks"]["encoder"]["layers"]
        layers[0]["heads"]["self_attn"] = [0, 1, 3]
        layers[1]["heads"]["self_attn"] = []
        layers[2]["heads"]["self_attn"] = [2]

    plan = edited_plan(PruningPlan.uniform(geometry_of(model.config), 0.5, 0.5), uneven_heads)
    compact = compact_model(copy.deepcopy(model), plan)
    graph = export_qa_onnx(compact, tmp_path / "compact.onnx")
    assert fused_attention_count(graph) == 2
    _assert_parity(compact, graph)
    # The torch model is left as it was: its attention modules run their own forward again.
    assert all("forward" not in vars(layer.attention.self) for layer in compact.bert.encoder.layer)


def test_compact_export_with_empty_layers_matches_torch(tmp_path):
    model = tiny_bert()

    def empty_layers(data: dict) -> None:
        data["stacks"]["encoder"]["layers"][1]["heads"]["self_attn"] = []
        data["stacks"]["encoder"]["layers"][2]["ffn_units"] = []

    plan = edited_plan(PruningPlan.uniform(geometry_of(model.config), 0.5, 0.25), empty_layers)
    compact = compact_model(copy.deepcopy(model), plan)
    _assert_parity(compact, export_qa_onnx(compact, tmp_path / "compact.onnx"))
    # Export leaves the torch model on its original attention implementation.
    assert compact.config._attn_implementation == model.config._attn_implementation


def test_export_checkpoint_writes_a_self_describing_directory(dense_bert_dir, tmp_path):
    model_dir = tmp_path / "compact"
    compact_checkpoint(dense_bert_dir, PruningPlan.uniform(geometry_of(tiny_bert().config), 0.5, 0.5), model_dir)
    out = tmp_path / "onnx"
    assert export_checkpoint(model_dir, out) == out / ONNX_NAME
    assert {ONNX_NAME, MANIFEST_NAME, "config.json", "tokenizer.json"} <= {p.name for p in out.iterdir()}


def test_summarization_export_is_refused_clearly(tmp_path):
    with pytest.raises(UnsupportedModelError, match="ONNX export supports question-answering"):
        export_qa_onnx(tiny_bart(), tmp_path / "bart.onnx")


def test_cpu_provider_is_always_available():
    assert onnx_providers("cpu") == ["CPUExecutionProvider"]
    assert onnx_providers("auto")[-1] == "CPUExecutionProvider"


def test_half_precision_graph_has_half_weights_but_the_same_interface(tmp_path):
    """ORT CUDA runs the float16 graph; its inputs and logits keep the fp32 graph's types."""
    graph = export_qa_onnx(tiny_bert(), tmp_path / "dense.onnx")
    half = onnx.load(str(onnx_in_numerics(graph, "float16", tmp_path)))
    weights = {tensor.name: tensor.data_type for tensor in half.graph.initializer}
    matmul_weights = [
        node.input[1] for node in half.graph.node if node.op_type == "MatMul" and node.input[1] in weights
    ]
    assert matmul_weights and all(weights[name] == onnx.TensorProto.FLOAT16 for name in matmul_weights)
    assert [i.type.tensor_type.elem_type for i in half.graph.input] == [onnx.TensorProto.INT64] * 3
    assert [o.type.tensor_type.elem_type for o in half.graph.output] == [onnx.TensorProto.FLOAT] * 2


def test_int8_graph_quantises_the_fused_attention(tmp_path):
    model = tiny_bert()
    quantised = onnx.load(str(onnx_in_numerics(export_qa_onnx(model, tmp_path / "dense.onnx"), "int8", tmp_path)))
    assert sum(node.op_type == "QAttention" for node in quantised.graph.node) == model.config.num_hidden_layers


def test_unknown_onnx_numerics_are_refused(tmp_path):
    with pytest.raises(UnsupportedModelError, match="ONNX graphs run in float32, float16, int8, not bfloat16"):
        onnx_in_numerics(tmp_path / "model.onnx", "bfloat16", tmp_path)
