"""Benchmark mechanics on tiny models: rows, units, FLOPs ratios. (Speed targets live in BENCHMARKS.md.)"""

import time

import pytest

from pruning.core.plan import PruningPlan
from pruning.core.structure import geometry_of, spec_for_config
from pruning.runtime.bench import BenchSettings, benchmark, format_table, plot_rows
from pruning.runtime.timing import time_interleaved
from pruning.zoo.presets import PRESETS, build_preset, preset_config

REQUIRED_KEYS = {
    "arch",
    "runtime",
    "batch",
    "seq",
    "dense_ms",
    "compact_ms",
    "speedup",
    "flops_ratio",
    "params_dense",
    "params_compact",
}


def test_time_interleaved_alternates_and_measures():
    order = []
    timings = time_interleaved(
        {"fast": lambda: order.append("fast"), "slow": lambda: (order.append("slow"), time.sleep(0.002))},
        warmup=1,
        repeats=4,
    )
    assert order == ["fast", "slow"] * 5
    assert len(timings["slow"].samples_ms) == 4
    assert timings["slow"].median_ms >= 2.0 > timings["fast"].median_ms


def test_time_interleaved_needs_a_repeat():
    with pytest.raises(ValueError):
        time_interleaved({"a": lambda: None}, warmup=0, repeats=0)


def test_presets_have_real_shapes():
    _, bert_large = preset_config("bert-large-uncased")
    assert (bert_large.num_hidden_layers, bert_large.hidden_size, bert_large.num_attention_heads) == (24, 1024, 16)
    _, bart_base = preset_config("bart-base")
    assert (bart_base.encoder_layers, bart_base.d_model, bart_base.decoder_ffn_dim) == (6, 768, 3072)
    for name in PRESETS:
        spec_for_config(preset_config(name)[1])  # every preset is a supported architecture


def test_qa_bench_rows_for_both_runtimes(tmp_path):
    model = build_preset("bert-tiny")
    plan = PruningPlan.uniform(geometry_of(model.config), 0.5, 0.33)
    settings = BenchSettings(batches=(1, 2), seqs=(16,), runtimes=("torch", "onnx"), repeats=2, warmup=1)
    rows = benchmark(model, plan, "bert-tiny", settings)
    assert [(r.runtime, r.batch) for r in rows] == [("torch", 1), ("onnx", 1), ("torch", 2), ("onnx", 2)]
    for row in rows:
        assert set(row.model_dump()) >= REQUIRED_KEYS
        assert row.dense_ms > 0 and row.compact_ms > 0
        assert row.speedup == pytest.approx(row.dense_ms / row.compact_ms, rel=1e-2)
        assert row.flops_ratio > 1.5 and row.params_compact < row.params_dense
    assert "speedup/FLOPs" in format_table(rows)
    plot_rows(rows, tmp_path / "bench.png")
    assert (tmp_path / "bench.png").stat().st_size > 1000


def test_bart_bench_times_encoder_and_generate():
    model = build_preset("bart-tiny")
    plan = PruningPlan.uniform(geometry_of(model.config), 0.5, 0.33)
    rows = benchmark(model, plan, "bart-tiny", BenchSettings(seqs=(12,), repeats=2, warmup=1, new_tokens=3))
    assert [r.unit for r in rows] == ["encoder", "generate"]
    assert rows[1].new_tokens == 3
    assert all(r.flops_ratio > 1.5 for r in rows)


def test_bench_a_bart_whose_encoder_is_entirely_pruned():
    """Found by post-training pruning: Fisher may remove every encoder head and unit; FLOPs ratio undefined."""
    from tests.factories import edited_plan, tiny_bart

    def prune_the_encoder(data: dict) -> None:
        for layer in data["stacks"]["encoder"]["layers"]:
            layer["heads"]["self_attn"] = []
            layer["ffn_units"] = []

    dense = tiny_bart()
    plan = edited_plan(PruningPlan.full(geometry_of(dense.config)), prune_the_encoder)
    rows = benchmark(dense, plan, "tiny", BenchSettings(seqs=(16,), repeats=1, warmup=0, new_tokens=2))
    encoder = next(row for row in rows if row.unit == "encoder")
    generate = next(row for row in rows if row.unit == "generate")
    assert encoder.flops_ratio is None and generate.flops_ratio > 1.0
    assert "—" in format_table(rows)
