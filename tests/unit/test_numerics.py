"""Numerics per device: `auto` from detected capabilities, honest CUDA timing, dtype in every record."""

from pathlib import Path

import pytest
import torch

from pruning.runtime import numerics, timing
from pruning.runtime.numerics import Capabilities, cpu_flags, in_dtype, resolve_dtype, training_precision
from tests.factories import tiny_bert

AMX = frozenset({"fpu", "avx512f", "amx_tile", "amx_bf16", "amx_int8"})
AVX512_BF16 = frozenset({"fpu", "avx512f", "avx512_bf16"})
PLAIN = frozenset({"fpu", "avx2", "avx512f", "avx512_vnni"})


@pytest.mark.parametrize(
    ("device", "flags", "expected"),
    [
        ("cpu", AMX, torch.bfloat16),
        ("cpu", AVX512_BF16, torch.bfloat16),
        ("cpu", PLAIN, torch.float32),  # VNNI is int8, not bf16: emulated bf16 would be slower than fp32
        ("cpu", frozenset(), torch.float32),
        ("cuda", frozenset(), torch.float16),
        ("cuda:1", frozenset(), torch.float16),
    ],
)
def test_auto_follows_the_detected_capabilities(device, flags, expected):
    assert resolve_dtype("auto", device, lambda d: Capabilities(d, flags)) == expected


def test_an_explicit_dtype_is_never_overridden():
    for name in ("float32", "float16", "bfloat16"):
        assert resolve_dtype(name, "cpu", lambda d: Capabilities(d, AMX)) == getattr(torch, name)


def test_training_autocasts_to_bf16_only_where_asked_or_fast():
    def caps(flags):
        return lambda device: Capabilities(device, flags)

    assert training_precision("auto", "cpu", caps(AVX512_BF16)) == torch.bfloat16
    assert training_precision("auto", "cpu", caps(AMX)) == torch.bfloat16
    assert training_precision("auto", "cpu", caps(PLAIN)) == torch.float32
    assert training_precision("off", "cpu", caps(AMX)) == torch.float32
    assert training_precision("bfloat16", "cpu", caps(PLAIN)) == torch.bfloat16
    with numerics.autocast_to(torch.float32, "cpu"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    with numerics.autocast_to(torch.bfloat16, "cpu"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16


def test_flags_are_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f amx_bf16\nbugs\t\t: none\n")
    assert cpu_flags(cpuinfo) == frozenset({"fpu", "sse2", "avx512f", "amx_bf16"})
    assert cpu_flags(tmp_path / "missing") == frozenset()
    assert isinstance(cpu_flags(Path("/proc/cpuinfo")), frozenset)


def test_in_dtype_copies_only_when_it_must():
    model = tiny_bert()
    assert in_dtype(model, torch.float32) is model
    half = in_dtype(model, torch.bfloat16)
    assert half is not model and next(half.parameters()).dtype == torch.bfloat16
    assert next(model.parameters()).dtype == torch.float32  # the original is kept


def test_cuda_timings_wait_for_the_device(monkeypatch):
    """Runs without a GPU: what matters is that the timer synchronises around every timed call on CUDA."""
    events = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: events.append(("sync", str(device))))
    timing.time_interleaved({"a": lambda: events.append("a"), "b": lambda: events.append("b")}, 1, 2, device="cuda")
    timed = events[2:]  # after the untimed warm-up of a and b
    assert timed == [("sync", "cuda"), "a", ("sync", "cuda"), ("sync", "cuda"), "b", ("sync", "cuda")] * 2
    events.clear()
    timing.time_interleaved({"a": lambda: events.append("a")}, 0, 3, device="cpu")
    assert events == ["a", "a", "a"]  # no CUDA calls on the CPU path


def test_synchronizer_is_a_no_op_on_cpu():
    assert numerics.synchronizer("cpu")() is None


def test_bench_rows_say_the_numerics_they_timed():
    from pruning.core.plan import PruningPlan
    from pruning.core.structure import geometry_of
    from pruning.runtime.bench import BenchSettings, benchmark

    model = tiny_bert()
    plan = PruningPlan.uniform(geometry_of(model.config), 0.5, 0.5)
    settings = BenchSettings(seqs=(8,), repeats=1, warmup=0, dtype="bfloat16", runtimes=("torch", "onnx"))
    rows = benchmark(model, plan, "tiny", settings)
    assert [(row.runtime, row.dtype) for row in rows] == [("torch", "bfloat16"), ("onnx", "float32")]
    assert next(model.parameters()).dtype == torch.float32  # the caller's model is not converted
    # Every row is also compared with what a user has without blockserve: dense fp32 torch eager.
    for row in rows:
        assert row.reference_ms > 0 and row.reference_ms != row.dense_ms
        assert row.speedup_vs_reference == pytest.approx(row.reference_ms / row.compact_ms)
    (fp32,) = benchmark(model, plan, "tiny", settings.model_copy(update={"dtype": "float32", "runtimes": ("torch",)}))
    assert fp32.reference_ms == fp32.dense_ms  # the fp32 torch row is its own reference


def test_latency_tables_are_keyed_by_the_numerics_they_timed():
    from pruning.methods.posttrain.latency_model import LatencySettings, table_key
    from pruning.runtime.runners import Shape, TimingOptions

    model = tiny_bert()
    settings = LatencySettings(shape=Shape(1, 16))
    fp32, bf16 = table_key(model, settings), table_key(in_dtype(model, torch.bfloat16), settings)
    assert (fp32.dtype, bf16.dtype) == ("float32", "bfloat16") and fp32.digest() != bf16.digest()
    assert TimingOptions(runtime="onnx", dtype="bfloat16").torch_dtype() == torch.float32  # ORT runs the fp32 graph


def test_bench_times_compiled_models_beside_eager_ones_without_timing_the_compile():
    from pruning.core.plan import PruningPlan
    from pruning.core.structure import geometry_of
    from pruning.runtime.bench import BenchSettings, benchmark

    model = tiny_bert()
    plan = PruningPlan.uniform(geometry_of(model.config), 0.5, 0.5)
    settings = BenchSettings(seqs=(8,), repeats=2, warmup=0, dtype="float32", compiled=True)
    rows = benchmark(model, plan, "tiny", settings)
    assert [row.compiled for row in rows] == [False, True]
    eager, compiled = rows
    # A compile takes seconds; had it been timed, the compiled medians would dwarf the eager ones.
    assert compiled.dense_ms < 50 * eager.dense_ms and compiled.compact_ms < 50 * eager.compact_ms
    assert compiled.reference_ms > 0 and compiled.speedup_vs_reference == pytest.approx(
        compiled.reference_ms / compiled.compact_ms
    )
