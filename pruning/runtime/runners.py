"""The timed unit of work of a task at a request shape, as a zero-argument callable.

- question-answering: one forward pass over `batch` windows of `seq` tokens (torch eager, or ONNX
  Runtime on the exported graph);
- summarization: `generate()` of exactly `new_tokens` tokens per article of `seq` tokens (EOS
  suppressed until then, greedy), so every candidate does the same number of decoder steps.

Benchmarks and the latency model time candidates built here on the same inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from transformers import PreTrainedModel

from pruning.artifacts.export import QA_INPUTS, export_qa_onnx, onnx_session
from pruning.core.errors import UnsupportedModelError
from pruning.core.options import Device
from pruning.core.structure import task_of
from pruning.core.task_registry import onnx_tasks, task_entry
from pruning.runtime.numerics import DType, in_dtype, resolve_dtype

RUNTIMES = ("torch", "onnx")


@dataclass(frozen=True)
class Shape:
    batch: int
    seq: int
    new_tokens: int = 0  # summarization only

    def describe(self) -> str:
        text = f"b{self.batch} s{self.seq}"
        return f"{text} +{self.new_tokens} tokens" if self.new_tokens else text


class TimingOptions(BaseModel):
    """The request shape, runtime and device a latency is measured for (budgets, the latency model)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    batch: int = Field(1, ge=1, le=4096, description="requests per batch the latency is for")
    seq: int | None = Field(None, ge=8, le=65536, description="request tokens (default: the task's, 384/512)")
    new_tokens: int = Field(32, ge=1, le=4096, description="summarization: generated tokens per request")
    runtime: Literal["torch", "onnx"] = Field("torch", description="runtime the latency is for")
    device: Device = "cpu"
    dtype: DType = Field(
        "auto", description="numerics timed (auto: bfloat16 on CPUs with AMX/avx512_bf16, float16 on CUDA)"
    )
    threads: int | None = Field(None, ge=1, le=1024, description="CPU threads (default: torch's)")
    repeats: int = Field(10, ge=1, le=10**5, description="timed repeats per latency measurement")
    max_noise: float = Field(
        0.10,
        gt=0.0,
        le=100.0,
        description="latency model: time a chunk of probes again when their spread (IQR/median) is larger; "
        "a table still noisier is used but never cached",
    )

    def torch_dtype(self) -> torch.dtype:
        """The resolved dtype of the torch model timed (ONNX Runtime runs the fp32 export)."""
        return torch.float32 if self.runtime == "onnx" else resolve_dtype(self.dtype, self.device)

    def shape(self, model: PreTrainedModel) -> Shape:
        return request_shape(model, self.batch, self.seq, self.new_tokens)


def request_shape(model: PreTrainedModel, batch: int, seq: int | None, new_tokens: int) -> Shape:
    """The timed request shape for `model`'s task: `seq` defaults to the task's default workload, and
    `new_tokens` counts only where the timed unit generates."""
    entry = task_entry(task_of(model))
    return Shape(batch, seq or entry.default_workload.source_len, new_tokens if entry.generates else 0)


def random_inputs(model: PreTrainedModel, shape: Shape, device: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Full-length inputs (no padding); the lowest ids, special tokens in our vocabularies, avoided."""
    positions = getattr(model.config, "max_position_embeddings", None)
    if positions is not None and shape.seq > positions:
        raise UnsupportedModelError(f"a sequence of {shape.seq} tokens exceeds the model's {positions} positions")
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, model.config.vocab_size, (shape.batch, shape.seq), generator=generator)
    inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
    if getattr(model.config, "type_vocab_size", 0):  # BERT-style segment ids
        inputs["token_type_ids"] = torch.zeros_like(input_ids)
    return {name: value.to(device) for name, value in inputs.items()}


def make_runner(
    model: PreTrainedModel,
    task: str,
    inputs: dict[str, torch.Tensor],
    shape: Shape,
    runtime: str = "torch",
    *,
    scratch: Path | None = None,
    name: str = "model",
    device: str = "cpu",
    threads: int | None = None,
) -> Callable[[], object]:
    """A callable running the task's timed unit once; ONNX exports `model` into `scratch` first."""
    if runtime == "onnx":
        if not task_entry(task).onnx_export:
            raise UnsupportedModelError(f"ONNX runtime covers {', '.join(onnx_tasks())} only, not {task}")
        if scratch is None:
            raise ValueError("the ONNX runtime needs a scratch directory for the exported graph")
        # No spinning: candidates (and torch) alternate on the same cores while being timed.
        graph = export_qa_onnx(in_dtype(model, torch.float32), Path(scratch) / f"{name}.onnx")  # ORT runs fp32
        session = onnx_session(graph, device, threads, spinning=False)
        feeds = {key: inputs[key].cpu().numpy().astype(np.int64) for key in QA_INPUTS if key in inputs}
        return lambda: session.run(None, feeds)
    if runtime != "torch":
        raise UnsupportedModelError(f"unknown runtime {runtime!r} (choose from {', '.join(RUNTIMES)})")
    return _TORCH_UNITS[task_entry(task).timed_unit](model, inputs, shape)


def _forward(model: PreTrainedModel, inputs: dict[str, torch.Tensor], shape: Shape) -> Callable[[], object]:
    return lambda: model(**inputs)


def _generate(model: PreTrainedModel, inputs: dict[str, torch.Tensor], shape: Shape) -> Callable[[], object]:
    kwargs = {
        **inputs,
        "max_new_tokens": shape.new_tokens,
        "min_new_tokens": shape.new_tokens,
        "num_beams": 1,
        "do_sample": False,
    }
    return lambda: model.generate(**kwargs)


_TORCH_UNITS = {"forward": _forward, "generate": _generate}  # by `TaskEntry.timed_unit`
