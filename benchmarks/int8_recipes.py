"""Which int8 recipe for ONNX Runtime keeps the fp32 answers, and what it costs, on the shared SQuAD MiniLM.

    python benchmarks/int8_recipes.py --model ../shared/models/minilm-l6-squad \
        --data ../shared/data/squad/dev.json --questions 200 --out benchmarks/numerics/int8-recipes.json

Every recipe starts from the shipped export (ONNX Runtime's fused attention, `export_qa_onnx`); the
unfused graph is timed beside it. For each recipe: the share of dev questions whose best span equals the fp32 torch model's (the whole
QA engine: windows, span search), and the batch-1 seq-384 latency of the ORT session, timed interleaved
with the fp32 ORT graph in one process (2 threads, medians). It is the evidence behind the int8 recipe
`pruning.artifacts.export.quantize_qa_onnx` uses, and behind the parity bound it does not reach.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pruning.artifacts.checkpoint import load_checkpoint  # noqa: E402
from pruning.artifacts.export import export_qa_onnx, onnx_session  # noqa: E402
from pruning.methods.int8_calibration import Int8CalibrationSettings, calibrate_int8  # noqa: E402
from pruning.runtime.candidates import onnx_forward, torch_forward  # noqa: E402
from pruning.runtime.timing import time_interleaved  # noqa: E402
from pruning.tasks.qa import read_squad  # noqa: E402
from service.config import LimitsConfig  # noqa: E402
from service.qa_engine import QAEngine, QAInput  # noqa: E402


def matmuls_by_role(graph: Path) -> dict[str, list[str]]:
    """MatMul node names of the fused graph grouped by role. Q/K/V and the attention products live in the
    fused Attention nodes; every layer keeps three MatMuls in one order (output projection, FFN up, FFN
    down), then the QA head's."""
    names = [n.name for n in onnx.load(str(graph)).graph.node if n.op_type == "MatMul"]
    layers = [names[i : i + 3] for i in range(0, len(names) - 1, 3)]
    return {"ffn": [name for layer in layers for name in layer[1:3]], "ffn_down": [layer[2] for layer in layers]}


def recipes(graph: Path, unfused: Path, out: Path) -> dict[str, Path]:
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    roles = matmuls_by_role(graph)
    per_channel = {"per_channel": True, "op_types_to_quantize": ["MatMul", "Attention"]}
    dynamic = {
        "dynamic, defaults": {},
        "dynamic, per-channel MatMul + Attention (shipped)": per_channel,
        "dynamic, per-channel MatMul, attention in fp32": {"per_channel": True, "op_types_to_quantize": ["MatMul"]},
        "dynamic, per-channel, reduce_range": {**per_channel, "reduce_range": True},
        "dynamic, per-channel, FFN down in fp32": {**per_channel, "nodes_to_exclude": roles["ffn_down"]},
        "dynamic, per-channel, FFN in fp32": {**per_channel, "nodes_to_exclude": roles["ffn"]},
    }
    paths = {"fp32": graph, "fp32, unfused graph": unfused}
    for index, (name, options) in enumerate(dynamic.items()):
        paths[name] = out / f"dynamic-{index}.onnx"
        quantize_dynamic(
            str(graph), str(paths[name]), weight_type=QuantType.QInt8,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT}, **options,
        )  # fmt: skip
    attention_only = out / "attention-int8.onnx"
    quantize_dynamic(
        str(graph), str(attention_only), weight_type=QuantType.QInt8, per_channel=True,
        op_types_to_quantize=["Attention"], extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )  # fmt: skip
    for block, start, label in ((32, graph, ""), (128, graph, ""), (128, attention_only, ", dynamic int8 attention"),
                                (256, attention_only, ", dynamic int8 attention")):  # fmt: skip
        name = f"weight-only 8-bit, block {block} (MatMulNBits, int8 compute){label}"
        quantizer = MatMulNBitsQuantizer(
            onnx.load(str(start)), bits=8, block_size=block, is_symmetric=True, accuracy_level=4
        )
        quantizer.process()
        paths[name] = out / f"nbits-{block}{'-qattention' if label else ''}.onnx"
        quantizer.model.save_model_to_file(str(paths[name]), use_external_data_format=False)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--questions", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument(
        "--calib", help="train questions: also the calibrated recipe (`blockserve export --int8-calib`)"
    )
    parser.add_argument("--calib-questions", type=int, default=96)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    checkpoint = load_checkpoint(args.model)
    tokenizer = checkpoint.tokenizer()
    limits = LimitsConfig(window_tokens=384, window_stride=128, max_question_tokens=200, max_input_tokens=10**6)
    examples = read_squad(args.data)[: args.questions]
    inputs = [QAInput(e.question, e.context) for e in examples]
    reference = QAEngine(torch_forward(checkpoint.model), tokenizer, limits, 512)
    expected = [reference.answer([i])[0][0] for i in tqdm(inputs, desc="fp32 torch answers")]
    encoded = tokenizer(
        examples[0].question, examples[0].context, padding="max_length", max_length=384,
        truncation="only_second", return_tensors="np",
    )  # fmt: skip
    feed = {name: encoded[name].astype(np.int64) for name in ("input_ids", "attention_mask", "token_type_ids")}
    with tempfile.TemporaryDirectory() as scratch:
        graph = export_qa_onnx(checkpoint.model, Path(scratch) / "model.onnx")
        unfused = export_qa_onnx(checkpoint.model, Path(scratch) / "unfused.onnx", fuse=False)
        paths = recipes(graph, unfused, Path(scratch))
        calibration = None
        if args.calib:
            settings = Int8CalibrationSettings(int8_calib=args.calib, int8_questions=args.calib_questions, threads=2)
            name = f"dynamic, per-channel, fp32 nodes chosen on {args.calib_questions} train questions (calibrated)"
            calibration = calibrate_int8(graph, tokenizer, settings, Path(scratch) / "calibrated.onnx")
            paths[name] = Path(scratch) / "calibrated.onnx"
        sessions = {name: onnx_session(path, "cpu", threads=2, spinning=False) for name, path in paths.items()}
        rows = {}
        for name, session in sessions.items():
            engine = QAEngine(onnx_forward(session), tokenizer, limits, 512)
            got = [engine.answer([i])[0][0] for i in tqdm(inputs, desc=name)]
            same = sum((a.start, a.end) == (b.start, b.end) for a, b in zip(expected, got, strict=True))
            rows[name] = {"span_agreement": same / len(inputs)}
        timings = time_interleaved(
            {name: (lambda s=session: s.run(None, feed)) for name, session in sessions.items()},
            warmup=3,
            repeats=args.repeats,
        )
    for name, timing in timings.items():
        rows[name]["b1_s384_ms"] = round(timing.median_ms, 2)
        rows[name]["vs_fp32"] = round(timings["fp32"].median_ms / timing.median_ms, 2)
    result = {"model": args.model, "questions": len(inputs), "threads": 2, "recipes": rows,
              "calibration": calibration.model_dump() if calibration else None}  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print("| recipe | best span = fp32 | b1 s384 ms | vs ORT fp32 |\n|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['span_agreement']:.1%} | {row['b1_s384_ms']:.1f} | {row['vs_fp32']:.2f}× |")


if __name__ == "__main__":
    main()
