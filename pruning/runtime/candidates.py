"""The ways one checkpoint can run here — runtime × numerics — as callables with a common contract.

A QA candidate is a `Forward`: model input arrays (windows × tokens) → start and end logits as float32
numpy. torch runs in float32, bfloat16 or float16; ONNX Runtime runs the fused fp32 export, that export
with int8 weights (dynamic quantisation, CPU), or in float16 (CUDA). The service serves through the same callables, and `blockserve
tune` times and scores every candidate available on the device.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from transformers import PreTrainedModel

from pruning.artifacts.export import (
    export_qa_onnx,
    onnx_in_numerics,
    onnx_runs_on_cuda,
    onnx_session,
    prepared_graph,
)
from pruning.core.task_registry import TaskEntry
from pruning.runtime.numerics import capabilities, in_dtype

# (input arrays by name) → (start logits, end logits), each (windows, tokens)
Forward = Callable[[dict[str, np.ndarray]], tuple[np.ndarray, np.ndarray]]
Runtime = Literal["torch", "onnx"]


@dataclass(frozen=True)
class Candidate:
    runtime: Runtime
    dtype: Literal["float32", "bfloat16", "float16", "int8"]
    compiled: bool = False  # torch only: `torch.compile` (inductor, weights frozen into the graph)

    @property
    def name(self) -> str:
        return f"{self.runtime} {self.dtype}" + (" compiled" if self.compiled else "")


REFERENCE = Candidate("torch", "float32")  # the answers every other candidate is checked against


def available_candidates(entry: TaskEntry, device: str, compiled: bool = False) -> list[Candidate]:
    """Every runtime × dtype worth timing here: reduced precision only where the device has units for it;
    with `compiled`, each torch one compiled too (QA's forward only: generate() is not compiled)."""
    found = [REFERENCE]
    if device.startswith("cuda"):
        found += [Candidate("torch", "float16"), Candidate("torch", "bfloat16")]
    elif capabilities(device).bf16_matrix_units:
        found.append(Candidate("torch", "bfloat16"))
    if compiled and not entry.generates:
        found += [Candidate("torch", c.dtype, compiled=True) for c in list(found)]
    if entry.onnx_export:
        found.append(Candidate("onnx", "float32"))
        if not device.startswith("cuda"):  # dynamic int8 kernels are the CPU provider's
            found.append(Candidate("onnx", "int8"))
        elif onnx_runs_on_cuda():  # onnxruntime-gpu installed
            found.append(Candidate("onnx", "float16"))
    return found


def torch_forward(model: PreTrainedModel) -> Forward:
    device = next(model.parameters()).device

    @torch.inference_mode()
    def forward(arrays: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        outputs = model(**{name: torch.from_numpy(array).to(device) for name, array in arrays.items()})
        return outputs.start_logits.float().cpu().numpy(), outputs.end_logits.float().cpu().numpy()

    return forward


def onnx_forward(session) -> Forward:
    """The same contract as `torch_forward`, on an ONNX Runtime session of an exported QA model."""
    names = [node.name for node in session.get_inputs()]

    def forward(arrays: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        feed = dict(arrays)
        # The exported graph always takes token_type_ids; a tokenizer without them means "all segment 0",
        # which is what the torch model assumes when they are absent.
        feed.setdefault("token_type_ids", np.zeros_like(arrays["input_ids"]))
        start, end = session.run(["start_logits", "end_logits"], {name: feed[name] for name in names})
        return start, end

    return forward


def onnx_graph(model: PreTrainedModel, dtype: str, directory: Path, name: str = "model") -> Path:
    """The model exported for ONNX Runtime in `dtype` (float32, float16, or int8 weights), in `directory`."""
    graph = export_qa_onnx(in_dtype(model, torch.float32), Path(directory) / f"{name}.onnx")
    return onnx_in_numerics(graph, dtype, directory)


def qa_forward(
    model: PreTrainedModel,
    candidate: Candidate,
    scratch: Path,
    device: str = "cpu",
    threads: int | None = None,
    spinning: bool = False,
    checkpoint_dir: Path | None = None,
) -> Forward:
    """The candidate's forward for `model` (ONNX graphs go to `scratch`; `model` itself is not changed).

    An ONNX candidate runs the graph `blockserve export` wrote into `checkpoint_dir` for its dtype where
    there is one (int8: float32 nodes chosen by calibration), as the service would.
    """
    if candidate.runtime == "onnx":
        graph = prepared_graph(checkpoint_dir, candidate.dtype) if checkpoint_dir else None
        graph = graph or onnx_graph(model, candidate.dtype, scratch)
        return onnx_forward(onnx_session(graph, device, threads, spinning=spinning))
    model = in_dtype(model, getattr(torch, candidate.dtype)).to(device).eval()
    return torch_forward(compile_frozen(model) if candidate.compiled else model)


def compile_frozen(model: PreTrainedModel) -> PreTrainedModel:
    """`torch.compile` (inductor) with the weights frozen into the graph; a wrapper, `model` stays eager.

    Freezing folds the weights into the kernels: inference only, and inductor's setting is process-wide.
    """
    torch._inductor.config.freezing = True
    return torch.compile(model)
