"""`blockserve tune`: every candidate timed and scored; the fastest that keeps its answers is chosen."""

import json

import pytest

from blockserve.cli import main
from blockserve.tune import CandidateResult, choose
from pruning.core.task_registry import TASKS
from pruning.runtime.candidates import REFERENCE, Candidate, available_candidates
from pruning.runtime.numerics import capabilities
from service.config import VariantConfig


def _measured(name: str, ms: float, drop: float, bound: float) -> CandidateResult:
    runtime, dtype = name.split()
    return CandidateResult(
        candidate=name, runtime=runtime, dtype=dtype, median_ms=ms, spread_ms=0.1, speedup=100 / ms, metric="f1",
        score=80 - drop, drop=drop, tolerance=bound, passes=drop <= bound,
    )  # fmt: skip


def test_the_fastest_passing_candidate_wins_and_faster_failures_are_named():
    measured = [
        _measured("torch float32", 100, 0.0, 0.0),
        _measured("torch bfloat16", 30, 0.1, 0.3),
        _measured("onnx int8", 20, 1.6, 1.0),  # faster, but loses too many answers
        _measured("onnx float32", 90, 0.0, 0.3),
    ]
    best, why = choose(measured)
    assert best.candidate == "torch bfloat16"
    assert "faster but rejected: onnx int8 (f1 drop +1.60 > 1)" in why
    assert choose(measured[:1])[0].candidate == "torch float32"  # the reference always passes


def test_candidates_follow_the_device():
    qa, summarization = TASKS["question-answering"], TASKS["summarization"]
    names = [c.name for c in available_candidates(qa, "cpu")]
    assert names[0] == REFERENCE.name and "onnx float32" in names and "onnx int8" in names
    assert ("torch bfloat16" in names) == capabilities("cpu").bf16_matrix_units
    assert all(c.runtime == "torch" for c in available_candidates(summarization, "cpu"))  # no ONNX export
    assert Candidate("torch", "float16") in available_candidates(qa, "cuda")


def test_onnx_float16_is_a_candidate_where_onnxruntime_has_cuda(monkeypatch):
    import pruning.runtime.candidates as candidates

    qa = TASKS["question-answering"]
    monkeypatch.setattr(candidates, "onnx_runs_on_cuda", lambda: False)
    assert Candidate("onnx", "float16") not in available_candidates(qa, "cuda")
    monkeypatch.setattr(candidates, "onnx_runs_on_cuda", lambda: True)
    cuda = available_candidates(qa, "cuda")
    assert Candidate("onnx", "float16") in cuda and Candidate("onnx", "int8") not in cuda
    assert Candidate("onnx", "float16") not in available_candidates(qa, "cpu")


def test_int8_serves_only_through_onnx():
    assert VariantConfig(checkpoint="x", runtime="onnx", dtype="int8").dtype == "int8"
    with pytest.raises(ValueError, match="dtype int8 needs runtime onnx"):
        VariantConfig(checkpoint="x", dtype="int8")
    with pytest.raises(ValueError, match="runtime onnx runs float32, float16 or int8, not bfloat16"):
        VariantConfig(checkpoint="x", runtime="onnx", dtype="bfloat16")


def test_tune_cli_times_scores_and_chooses(dense_bert_dir, squad_file, tmp_path, capsys):
    out = tmp_path / "tune.json"
    argv = ["tune", "--model", str(dense_bert_dir), "--data", str(squad_file), "--limit", "6", "--seq", "48",
            "--repeats", "2", "--warmup", "1", "--max-length", "48", "--stride", "16", "--json", str(out)]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "chosen:" in printed and "runtime:" in printed
    report = json.loads(out.read_text())
    names = [m["candidate"] for m in report["candidates"]]
    assert names == [c.name for c in available_candidates(TASKS["question-answering"], "cpu")]
    reference = report["candidates"][0]
    assert reference["drop"] == 0 and reference["speedup"] == 1 and reference["passes"]
    chosen = next(m for m in report["candidates"] if m["candidate"] == report["chosen"])
    assert chosen["passes"] and all(m["median_ms"] >= chosen["median_ms"] for m in report["candidates"] if m["passes"])
    assert report["variant"]["runtime"] == chosen["runtime"] and report["variant"]["dtype"] == chosen["dtype"]
    onnx = next(m for m in report["candidates"] if m["candidate"] == "onnx float32")
    assert abs(onnx["drop"]) < 1e-6  # the fp32 export answers as torch does


def test_tune_rejects_windows_longer_than_the_model(dense_bert_dir, squad_file, capsys):
    argv = ["tune", "--model", str(dense_bert_dir), "--data", str(squad_file), "--limit", "2", "--seq", "48",
            "--max-length", "256"]  # fmt: skip
    assert main(argv) == 2
    assert "--max-length 256 exceeds the model's 128 positions" in capsys.readouterr().err


def test_compiled_candidates_answer_as_the_eager_ones(dense_bert_dir, tmp_path):
    from pruning.artifacts.checkpoint import load_checkpoint
    from pruning.runtime.candidates import qa_forward, torch_forward
    from service.config import LimitsConfig
    from service.qa_engine import QAEngine, QAInput
    from tests.factories import _CORPUS

    checkpoint = load_checkpoint(dense_bert_dir)
    limits = LimitsConfig(window_tokens=48, window_stride=16, max_question_tokens=16, max_input_tokens=1000)
    compiled = qa_forward(checkpoint.model, Candidate("torch", "float32", compiled=True), tmp_path)
    engines = [QAEngine(f, checkpoint.tokenizer(), limits, 128) for f in (torch_forward(checkpoint.model), compiled)]
    questions = [QAInput("Where is Fresno?", _CORPUS[1]), QAInput("What is prime?", " ".join(_CORPUS * 3))]
    for question in questions:  # two lengths: the compiled graph handles both
        eager, fast = (engine.answer([question])[0][0] for engine in engines)
        assert (eager.start, eager.end) == (fast.start, fast.end)
        assert fast.score == pytest.approx(eager.score, abs=1e-3)
    names = [c.name for c in available_candidates(TASKS["question-answering"], "cpu", compiled=True)]
    assert "torch float32 compiled" in names
    assert not any(c.compiled for c in available_candidates(TASKS["summarization"], "cpu", compiled=True))


def test_compiled_variants_are_torch_qa_only():
    from service.config import AppConfig

    assert VariantConfig(checkpoint="x", compiled=True).compiled
    with pytest.raises(ValueError, match="compiled applies to runtime torch"):
        VariantConfig(checkpoint="x", runtime="onnx", compiled=True)
    with pytest.raises(ValueError, match="generate\\(\\) is not compiled"):
        AppConfig.model_validate(
            {"summarize": {"default_variant": "a", "variants": {"a": {"checkpoint": "x", "compiled": True}}}}
        )


def test_tune_summarization_scores_rouge_l_with_torch_candidates(summarizer_dir, summaries_file, tmp_path):
    out = tmp_path / "tune.json"
    argv = ["tune", "--model", str(summarizer_dir), "--data", str(summaries_file), "--limit", "2", "--seq", "32",
            "--new-tokens", "2", "--repeats", "1", "--warmup", "0", "--max-source-tokens", "48",
            "--max-target-tokens", "8", "--num-beams", "1", "--json", str(out)]  # fmt: skip
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert report["task"] == "summarization" and report["shape"] == "b1 s32 +2 tokens"
    assert {m["metric"] for m in report["candidates"]} == {"rougeL"}
    assert [m["candidate"] for m in report["candidates"]] == [
        c.name for c in available_candidates(TASKS["summarization"], "cpu")
    ]
    assert report["candidates"][0]["drop"] == 0 and report["chosen"] in {m["candidate"] for m in report["candidates"]}
