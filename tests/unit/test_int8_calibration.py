"""int8 with float32 nodes chosen by calibration: the search, the graph it writes, where it is found."""

import json

import onnx
import pytest

from pruning.artifacts.checkpoint import load_checkpoint
from pruning.artifacts.export import INT8_NAME, INT8_REPORT, export_checkpoint, prepared_graph, quantize_qa_onnx
from pruning.core.errors import DataError
from pruning.methods.int8_calibration import Int8CalibrationSettings, calibrate_int8, quantisable_nodes

INT8_OPS = {"QAttention", "DynamicQuantizeMatMul", "MatMulInteger"}


def _float_nodes(graph) -> set[str]:
    """Names of the MatMul / Attention nodes left in float32 in a quantised graph."""
    return {n.name for n in onnx.load(str(graph)).graph.node if n.op_type in ("MatMul", "Attention")}


@pytest.fixture(scope="module")
def exported(dense_bert_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("exported")
    return export_checkpoint(dense_bert_dir, out), out


def test_exclude_keeps_nodes_float_and_only_quantises_just_those(exported, tmp_path):
    graph, _ = exported
    nodes = quantisable_nodes(graph)
    assert len(nodes) >= 4
    everything = quantize_qa_onnx(graph, tmp_path / "all.onnx")
    assert _float_nodes(everything) == set()
    assert _float_nodes(quantize_qa_onnx(graph, tmp_path / "kept.onnx", exclude=nodes[:2])) == set(nodes[:2])
    alone = quantize_qa_onnx(graph, tmp_path / "one.onnx", only=[nodes[0]])
    assert _float_nodes(alone) == set(nodes[1:])
    assert any(n.op_type in INT8_OPS for n in onnx.load(str(alone)).graph.node)


@pytest.mark.parametrize("bound", [0.5, 1.0])
def test_calibration_keeps_the_fewest_sensitive_nodes_that_reach_the_bound(exported, squad_file, tmp_path, bound):
    graph, out = exported
    tokenizer = load_checkpoint(out).tokenizer()
    settings = Int8CalibrationSettings(int8_calib=squad_file, int8_questions=12, min_agreement=bound, seq=64)
    report = calibrate_int8(graph, tokenizer, settings, tmp_path / "int8.onnx")

    nodes = quantisable_nodes(graph)
    assert set(report.sensitivity) == set(nodes) and report.windows >= 12
    ranked = list(report.sensitivity)
    assert report.sensitivity[ranked[0]] >= report.sensitivity[ranked[-1]]  # most sensitive first
    assert report.kept_fp32 == ranked[: len(report.kept_fp32)]  # kept: a prefix of the ranking
    assert report.agreement >= bound or report.kept_fp32 == ranked
    if report.agreement_all_int8 >= bound:
        assert report.kept_fp32 == []
    assert _float_nodes(tmp_path / "int8.onnx") == set(report.kept_fp32)  # the graph is what the report says


def test_calibration_needs_questions(exported, tmp_path):
    graph, out = exported
    with pytest.raises(DataError, match="--int8-calib"):
        calibrate_int8(graph, load_checkpoint(out).tokenizer(), Int8CalibrationSettings(), tmp_path / "x.onnx")


def test_export_writes_a_servable_directory_and_the_int8_graph_is_found(dense_bert_dir, squad_file, tmp_path):
    from blockserve.cli import main

    out = tmp_path / "served"
    main(["export", "--model", str(dense_bert_dir), "--out", str(out), "--int8-calib", str(squad_file),
          "--int8-questions", "8", "--seq", "64"])  # fmt: skip
    assert load_checkpoint(out).model is not None  # weights copied: the directory serves in any runtime
    assert prepared_graph(out, "int8") == out / INT8_NAME
    assert prepared_graph(out, "float32") == out / "model.onnx"
    assert prepared_graph(out, "float16") is None
    report = json.loads((out / INT8_REPORT).read_text())
    assert report["windows"] >= 8 and set(report["kept_fp32"]) <= set(report["sensitivity"])
    # Exporting a checkpoint into its own directory works too (nothing copied onto itself).
    export_checkpoint(out, out)
    assert load_checkpoint(out).model is not None
