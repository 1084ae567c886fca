"""Which numerics a model runs in: `auto` resolves to the fastest the device does well, detected.

- CUDA: float16 (bfloat16 only where asked for: its tensor-core speed is the same and fp16 keeps
  more mantissa for QA logits).
- CPU with bf16 matrix support (AMX `amx_bf16`, or `avx512_bf16`): bfloat16 — BERT-base at 384
  tokens ran 4.1× faster than float32 on such a Xeon (issue 14's measurements).
- any other CPU: float32 (bf16 without those units is emulated and slower than fp32).

Flags are read from the machine (`/proc/cpuinfo`), never assumed; a test passes them in.
"""

from __future__ import annotations

import contextlib
import copy
import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

DType = Literal["auto", "float32", "float16", "bfloat16"]
TrainPrecision = Literal["off", "auto", "bfloat16"]
BF16_MATRIX_FLAGS = ("amx_bf16", "avx512_bf16")


@dataclass(frozen=True)
class Capabilities:
    """What the device can do, as far as choosing numerics goes."""

    device: str  # "cpu" or "cuda[:N]"
    cpu_flags: frozenset[str] = frozenset()

    @property
    def bf16_matrix_units(self) -> bool:
        return any(flag in self.cpu_flags for flag in BF16_MATRIX_FLAGS)


# The flags every benchmark records beside its timings (CPU models of one machine kind differ).
REPORTED_FLAGS = ("amx_bf16", "amx_int8", "avx512_bf16", "avx512_vnni")


def reported_cpu_flags() -> list[str]:
    """Which of `REPORTED_FLAGS` this CPU has, for a benchmark's results."""
    return sorted(set(REPORTED_FLAGS) & cpu_flags())


@functools.cache
def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU's feature flags (Linux); empty where they cannot be read."""
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def capabilities(device: str) -> Capabilities:
    return Capabilities(device, cpu_flags() if device == "cpu" else frozenset())


def resolve_dtype(
    dtype: DType, device: str, capabilities_of: Callable[[str], Capabilities] = capabilities
) -> torch.dtype:
    """The torch dtype a model runs in on `device` for a configured `dtype` (`auto` resolved as above)."""
    if dtype != "auto":
        return getattr(torch, dtype)
    if device.startswith("cuda"):
        return torch.float16
    return torch.bfloat16 if capabilities_of(device).bf16_matrix_units else torch.float32


def training_precision(
    precision: TrainPrecision, device: str, capabilities_of: Callable[[str], Capabilities] = capabilities
) -> torch.dtype:
    """What a training step's matrix products run in: bfloat16 (autocast; weights and optimizer state
    stay fp32) when asked for, or with `auto` where bf16 is fast — CUDA with bf16 support, a CPU with
    bf16 matrix units (a recovery step ran 1.4× faster on an `avx512_bf16` EPYC); else float32.
    bf16 rather than fp16: the same speed and no loss scaling needed."""
    if precision == "bfloat16":
        return torch.bfloat16
    if precision == "auto":
        fast = (
            torch.cuda.is_bf16_supported() if device.startswith("cuda") else capabilities_of(device).bf16_matrix_units
        )
        if fast:
            return torch.bfloat16
    return torch.float32


def autocast_to(dtype: torch.dtype, device: str) -> contextlib.AbstractContextManager:
    """Autocast to `dtype` on `device`, or nothing for float32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast("cuda" if device.startswith("cuda") else "cpu", dtype=dtype)


def in_dtype(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """`model` itself when it already runs in `dtype`, else a copy that does (the original is kept)."""
    if next(model.parameters()).dtype == dtype:
        return model
    return copy.deepcopy(model).to(dtype)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def synchronizer(device: str) -> Callable[[], None]:
    """What makes a wall-clock timing on `device` honest: CUDA runs asynchronously, so wait for it."""
    if device.startswith("cuda"):
        return lambda: torch.cuda.synchronize(torch.device(device))
    return lambda: None
