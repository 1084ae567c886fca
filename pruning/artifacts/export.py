"""ONNX export of (dense or compact) BERT QA models, fused for ONNX Runtime, and sessions to run them.

ONNX Runtime's fast path for BERT is its fused `Attention` operator (one kernel for Q/K/V, the scores,
the mask and the context), which its transformer optimizer substitutes by matching the exported graph.
The match needs three things the stock transformers graph does not give, so export runs a classic form:
- explicit head counts in the Q/K/V reshapes: transformers reshapes with `-1` heads, which the optimizer
  can resolve only from one global head count, and a compact model has a different count per layer;
- the additive mask `(1 - mask) * -10000`, computed once from the 2-D mask (transformers 5 builds a
  boolean mask that the optimizer matches only in some exporter outputs);
- the TorchScript exporter: the dynamo exporter's graph optimiser merges the mask's two `Unsqueeze`s,
  after which the mask pattern no longer matches.
The numbers are the same as the torch model's (tested); `fused_attention_count` says how many layers fused.
Layers that keep no heads keep the stock forward (their attention adds only the output bias).
Batch and sequence axes are dynamic.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import onnx
import onnxruntime as ort
import torch
from torch import nn
from transformers import PreTrainedModel

from pruning.artifacts.checkpoint import MANIFEST_NAME, WEIGHTS_NAME, load_checkpoint
from pruning.core.errors import UnsupportedModelError
from pruning.core.structure import geometry_of, iter_layers, task_of
from pruning.core.task_registry import onnx_tasks, task_entry

log = logging.getLogger(__name__)

ONNX_NAME = "model.onnx"
INT8_NAME = "model.int8.onnx"  # written by `blockserve export --int8-calib` (float32 nodes chosen by measurement)
INT8_REPORT = "int8.json"
QA_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
QA_OUTPUTS = ("start_logits", "end_logits")
MASK_VALUE = -10000.0  # what ONNX Runtime's fused attention assumes for masked keys; exp() of it is 0 in fp32


class _AdditiveMaskQA(nn.Module):
    """The QA model fed a ready 4-D additive mask (transformers passes a 4-D mask through as is)."""

    def __init__(self, model: PreTrainedModel):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids):
        keep = attention_mask.unsqueeze(1).unsqueeze(2).to(torch.float32)
        outputs = self.model(
            input_ids=input_ids, attention_mask=(1.0 - keep) * MASK_VALUE, token_type_ids=token_type_ids
        )
        return outputs.start_logits, outputs.end_logits


def _explicit_heads_attention(query: nn.Linear, key: nn.Linear, value: nn.Linear, heads: int, head_dim: int):
    """Self-attention with the layer's own head count written into every reshape (eager, no cache)."""
    # Divided, not multiplied: a scaling `Mul` beside the mask's `Mul` hides the mask from the matcher.
    divisor = float(head_dim) ** 0.5

    def forward(hidden_states, attention_mask=None, *_, **__):
        batch, tokens = hidden_states.shape[0], hidden_states.shape[1]
        shape = (batch, tokens, heads, head_dim)
        q = query(hidden_states).view(shape).transpose(1, 2)
        k = key(hidden_states).view(shape).transpose(1, 2)
        v = value(hidden_states).view(shape).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(-1, -2)) / divisor
        if attention_mask is not None:
            scores = scores + attention_mask
        context = torch.matmul(torch.softmax(scores, dim=-1), v).transpose(1, 2)
        return context.reshape(batch, tokens, heads * head_dim), None

    return forward


@contextlib.contextmanager
def _fusable_attention(model: PreTrainedModel) -> Iterator[int]:
    """Every self-attention block with heads runs `_explicit_heads_attention` inside; yields their count."""
    geometry = geometry_of(model.config)
    patched: list[nn.Module] = []
    try:
        for stack, _, layer in iter_layers(model):
            head_dim = geometry.stack(stack.name).head_dim
            for block in stack.attention:
                query = layer.get_submodule(block.query)
                heads = query.out_features // head_dim
                if heads == 0 or block.attends_to_encoder:
                    continue
                owner = layer.get_submodule(block.query.rpartition(".")[0])
                projections = (query, layer.get_submodule(block.key), layer.get_submodule(block.value))
                owner.forward = _explicit_heads_attention(*projections, heads, head_dim)
                patched.append(owner)
        yield len(patched)
    finally:
        for owner in patched:
            del owner.forward  # the class's forward again


def export_qa_onnx(model: PreTrainedModel, path: str | Path, fuse: bool = True) -> Path:
    """Write `model` (a BERT QA model, dense or compact) as ONNX with dynamic batch and sequence.

    With `fuse`, the written graph is ONNX Runtime's optimised one (fused attention, layer norms, GELU);
    a warning says when fewer attention blocks fused than the model has.
    """
    task = task_of(model)
    if not task_entry(task).onnx_export:
        raise UnsupportedModelError(f"ONNX export supports {', '.join(onnx_tasks())}; this model is {task}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    # Example sizes > 1 so the exporter does not specialise the dynamic axes to 1.
    example = tuple(torch.ones(2, 16, dtype=torch.long) for _ in QA_INPUTS)
    exporter_output = io.StringIO()
    try:
        with (
            torch.no_grad(),
            warnings.catch_warnings(),
            contextlib.redirect_stdout(exporter_output),  # would corrupt `bench --json -`
            _fusable_attention(model) as attention_blocks,
        ):
            warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated, and warns so
            torch.onnx.export(
                _AdditiveMaskQA(model).eval(),
                example,
                str(path),
                input_names=list(QA_INPUTS),
                output_names=list(QA_OUTPUTS),
                dynamic_axes={name: {0: "batch", 1: "sequence"} for name in (*QA_INPUTS, *QA_OUTPUTS)},
                opset_version=17,
                dynamo=False,
            )
    finally:
        model.set_attn_implementation(previous)
        log.debug("exporter output:\n%s", exporter_output.getvalue())
    if fuse:
        fused = _fuse_for_onnxruntime(path)
        if fused != attention_blocks:
            log.warning("%s: %d of %d attention blocks fused", path, fused, attention_blocks)
    log.info("exported %s", path)
    return path


def _fuse_for_onnxruntime(path: Path) -> int:
    """Rewrite `path` with ONNX Runtime's BERT fusions; the number of fused attention nodes."""
    from onnxruntime.transformers.optimizer import optimize_model

    # num_heads=0: read from each layer's reshapes (they carry explicit counts, see the module docstring).
    # opt_level 0: graph fusions only; the session applies ORT's own optimisations when it loads.
    with _quiet():
        optimized = optimize_model(str(path), model_type="bert", num_heads=0, hidden_size=0, opt_level=0)
    optimized.save_model_to_file(str(path))
    return fused_attention_count(path)


def fused_attention_count(path: str | Path) -> int:
    """How many fused attention nodes (float or quantised) a graph has."""
    graph = onnx.load(str(path), load_external_data=False).graph
    return sum(node.op_type in ("Attention", "QAttention") for node in graph.node)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The optimizer logs every fusion it tries, at INFO and WARNING, under top-level logger names."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def export_checkpoint(model_dir: str | Path, out_dir: str | Path) -> Path:
    """Export a checkpoint directory to `out_dir/model.onnx`, beside a copy of the checkpoint itself
    (weights, config, tokenizer, manifest): the directory serves in any runtime. `out_dir` may be
    `model_dir`."""
    checkpoint = load_checkpoint(model_dir)
    out_dir = Path(out_dir)
    onnx_path = export_qa_onnx(checkpoint.model, out_dir / ONNX_NAME)
    checkpoint.model.config.save_pretrained(out_dir)
    names = (WEIGHTS_NAME, MANIFEST_NAME, "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
             "vocab.txt")  # fmt: skip
    for name in names:
        source, target = checkpoint.directory / name, out_dir / name
        if source.is_file() and not (target.exists() and target.samefile(source)):
            shutil.copy2(source, target)
    return onnx_path


def prepared_graph(directory: str | Path, dtype: str) -> Path | None:
    """The graph `blockserve export` wrote into a checkpoint directory for `dtype`, if it did."""
    name = {"float32": ONNX_NAME, "int8": INT8_NAME}.get(dtype)
    if name is None or not (Path(directory) / name).is_file():
        return None
    return Path(directory) / name


def onnx_runs_on_cuda() -> bool:
    """Whether this onnxruntime build has the CUDA provider (onnxruntime-gpu), whatever the GPU."""
    return "CUDAExecutionProvider" in ort.get_available_providers()


def onnx_providers(device: str = "auto") -> list[str]:
    """CUDA first when onnxruntime-gpu sees a GPU (unless `device='cpu'`), CPU always as fallback."""
    available = ort.get_available_providers()
    if device != "cpu" and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "cuda":
        raise UnsupportedModelError(f"device 'cuda' asked for, but onnxruntime offers only {available}")
    return ["CPUExecutionProvider"]


def quantize_qa_onnx(
    path: str | Path, out: str | Path, exclude: Sequence[str] = (), only: Sequence[str] | None = None
) -> Path:
    """The exported graph with int8 weights (dynamic quantisation: activations scaled per batch at run time).

    `exclude`: nodes kept in float32 (`pruning.methods.int8_calibration` chooses them); `only`: quantise
    just these nodes.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = Path(out)
    # Per-channel weight scales, matrix products and fused attention only (embeddings stay float):
    # see `make bench-int8` for what each recipe keeps of the fp32 answers and what it costs.
    with _quiet():  # its pre-processing hint is noise here
        quantize_dynamic(
            str(path),
            str(out),
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=["MatMul", "Attention"],
            nodes_to_exclude=list(exclude),
            nodes_to_quantize=list(only) if only is not None else None,
            # Shape inference cannot type the outputs of the fused (com.microsoft) operators.
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    return out


def half_precision_onnx(path: str | Path, out: str | Path) -> Path:
    """The graph with float16 weights and arithmetic for CUDA; inputs and logits keep their types."""
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = OnnxModel(onnx.load(str(path)))
    with _quiet():
        model.convert_float_to_float16(keep_io_types=True)
    model.save_model_to_file(str(out))
    return Path(out)


ONNX_NUMERICS = ("float32", "float16", "int8")  # what an exported graph can be turned into


def onnx_in_numerics(path: str | Path, dtype: str, directory: str | Path) -> Path:
    """The fp32 export at `path` in `dtype` (one of ONNX_NUMERICS), written beside it in `directory`."""
    path, directory = Path(path), Path(directory)
    if dtype == "float32":
        return path
    if dtype == "int8":
        return quantize_qa_onnx(path, directory / f"{path.stem}.int8.onnx")
    if dtype == "float16":
        return half_precision_onnx(path, directory / f"{path.stem}.fp16.onnx")
    raise UnsupportedModelError(f"ONNX graphs run in {', '.join(ONNX_NUMERICS)}, not {dtype}")


def onnx_session(
    path: str | Path, device: str = "auto", threads: int | None = None, spinning: bool = True
) -> ort.InferenceSession:
    """An ONNX Runtime session with all graph optimisations on.

    `spinning=False` stops the session's threads from busy-waiting after each run. A server with
    one session per process wants spinning (lower latency); a benchmark that alternates between
    sessions, or with torch, must turn it off, or each session's spinning threads steal the cores
    from the next run (measured here: 2× slower runs that are not the model's fault).
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=onnx_providers(device))
