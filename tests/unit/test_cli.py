"""The `blockserve` commands: happy paths, and clear non-zero exits on bad arguments or files."""

import json
import subprocess
import sys
from pathlib import Path

from blockserve.cli import main


def _run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _usage_error(capsys, *argv) -> str:
    """stderr of a command that must stop with exit code 2 (from argparse or from validation), no traceback."""
    try:
        code = main(list(argv))
    except SystemExit as exit_info:
        code = exit_info.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    return err


def test_console_script_is_installed():
    script = Path(sys.executable).with_name("blockserve")
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, check=True)
    for command in ("plan", "compact", "export", "bench", "demo"):
        assert command in result.stdout


def test_plan_compact_export_bench_end_to_end(capsys, dense_bert_dir, tmp_path):
    plan = tmp_path / "plan.json"
    code, out, _ = _run(
        capsys, "plan", "--model", str(dense_bert_dir), "--keep-heads", "0.5", "--keep-ffn", "0.25", "--out", str(plan)
    )
    assert code == 0 and "wrote uniform plan" in out
    assert json.loads(plan.read_text())["architecture"] == "bert"

    compact = tmp_path / "compact"
    code, out, _ = _run(capsys, "compact", "--model", str(dense_bert_dir), "--plan", str(plan), "--out", str(compact))
    assert code == 0 and "FLOPs ratio" in out
    assert (compact / "blockserve.json").is_file()

    code, out, _ = _run(capsys, "export", "--model", str(compact), "--out", str(tmp_path / "onnx"))
    assert code == 0 and (tmp_path / "onnx" / "model.onnx").is_file()

    # A compact checkpoint is benchmarked against the dense source named in its manifest.
    code, out, err = _run(
        capsys,
        "bench", "--model", str(compact), "--seq", "8", "--runtime", "torch", "onnx",
        "--repeats", "1", "--warmup", "0", "--json", "-",
    )  # fmt: skip
    assert code == 0
    # stdout holds only the JSON lines: the ONNX exporter's chatter must not leak into it.
    rows = [json.loads(line) for line in out.splitlines()]
    assert [(row["runtime"], row["seq"]) for row in rows] == [("torch", 8), ("onnx", 8)]
    assert "speedup/FLOPs" in err  # the table goes to stderr when JSON goes to stdout


def test_bench_preset_writes_json_file_and_plot(capsys, tmp_path):
    path, plot = tmp_path / "rows.jsonl", tmp_path / "rows.png"
    code, out, _ = _run(
        capsys,
        "bench", "--arch", "bart-tiny", "--seq", "8", "--new-tokens", "2", "--repeats", "1",
        "--json", str(path), "--plot", str(plot),
    )  # fmt: skip
    assert code == 0
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [row["unit"] for row in rows] == ["encoder", "generate"]
    assert plot.stat().st_size > 1000


def test_missing_files_and_bad_values_are_usage_errors(capsys, dense_bert_dir, tmp_path):
    err = _usage_error(
        capsys, "compact", "--model", str(dense_bert_dir), "--plan", str(tmp_path / "none.json"), "--out", "x"
    )
    assert "none.json does not exist" in err
    err = _usage_error(capsys, "compact", "--model", str(tmp_path / "missing"), "--plan", "p", "--out", "x")
    assert "--model" in err and "missing does not exist" in err
    err = _usage_error(capsys, "bench", "--arch", "bert-tiny", "--keep-heads", "1.5")
    assert "--keep-heads 1.5: Input should be less than or equal to 1" in err
    err = _usage_error(capsys, "bench", "--arch", "no-such-model")
    assert "--arch no-such-model: Input should be 'bert-base-uncased'" in err
    err = _usage_error(capsys, "bench", "--arch", "bert-tiny", "--seq", "0")
    assert "--seq 0: Value error, every value must be in 1..65536" in err or "--seq 0: every value must be" in err
    err = _usage_error(capsys, "bench", "--model", str(dense_bert_dir), "--arch", "bert-tiny")
    assert "give exactly one of --model and --arch" in err


def test_invalid_plan_is_a_clear_error_not_a_traceback(capsys, dense_bert_dir, tmp_path):
    plan = tmp_path / "bad.json"
    _run(capsys, "plan", "--model", str(dense_bert_dir), "--keep-heads", "1", "--keep-ffn", "1", "--out", str(plan))
    data = json.loads(plan.read_text())
    data["stacks"]["encoder"]["layers"][2]["heads"]["self_attn"] = [0, 0]
    plan.write_text(json.dumps(data))
    code, _, err = _run(
        capsys, "compact", "--model", str(dense_bert_dir), "--plan", str(plan), "--out", str(tmp_path / "o")
    )
    assert code == 2
    assert "blockserve compact: error:" in err and "encoder layer 2: self_attn head index 0 is listed twice" in err
    assert "Traceback" not in err


def test_checkpoint_errors_exit_non_zero(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    code, _, err = _run(capsys, "export", "--model", str(tmp_path / "empty"), "--out", str(tmp_path / "o"))
    assert code == 2 and "has no config.json" in err
    code, _, err = _run(
        capsys, "plan", "--model", str(tmp_path / "empty"), "--keep-heads", "1", "--keep-ffn", "1", "--out", "p.json"
    )
    assert code == 2 and "has no config.json" in err


def test_cuda_without_a_gpu_is_a_clear_error(capsys, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    code, _, err = _run(capsys, "bench", "--arch", "bert-tiny", "--device", "cuda", "--repeats", "1")
    assert code == 2 and "torch sees no CUDA device" in err


def test_prune_and_evaluate_usage_errors(capsys, dense_bert_dir, tmp_path):
    data = tmp_path / "data.json"
    data.write_text("{}")
    common = ["--teacher", str(dense_bert_dir), "--train", str(data), "--eval", str(data), "--out", str(tmp_path / "o")]
    assert "--block 32 by 32: block must look like '32x32'" in _usage_error(
        capsys, "prune", *common, "--block", "32 by 32"
    )
    assert "--target-density 25: Input should be less than or equal to 1" in _usage_error(
        capsys, "prune", *common, "--target-density", "25"
    )
    err = _usage_error(capsys, "prune", "--teacher", str(dense_bert_dir))
    assert "--train is required" in err and "--eval is required" in err and "--out is required" in err
    assert "does not exist" in _usage_error(capsys, "evaluate", "--model", str(dense_bert_dir), "--data", "nope.json")


def test_wrong_data_format_is_a_one_line_error(capsys, dense_bert_dir, tmp_path):
    data = tmp_path / "articles.jsonl"
    data.write_text('{"article": "a", "highlights": "b"}\n')
    code, _, err = _run(capsys, "evaluate", "--model", str(dense_bert_dir), "--data", str(data))
    assert code == 2 and "is not SQuAD-format JSON" in err and "Traceback" not in err
    code, _, err = _run(capsys, "evaluate", "--model", str(dense_bert_dir), "--data", str(data), "--num-beams", "2")
    assert code == 2 and "question-answering has no setting num_beams" in err


def test_training_on_cuda_without_a_gpu_is_a_clear_error(capsys, monkeypatch, dense_bert_dir, tmp_path):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    data = tmp_path / "d.json"
    data.write_text("{}")
    code, _, err = _run(
        capsys, "finetune", "--model", str(dense_bert_dir), "--train", str(data), "--out", str(tmp_path / "o"),
        "--device", "cuda",
    )  # fmt: skip
    assert code == 2 and "torch sees no CUDA device" in err


def test_init_writes_a_random_model_with_a_trained_tokenizer(capsys, tmp_path):
    corpus = tmp_path / "news.jsonl"
    rows = [{"article": f"Story {i}: the city council met on Monday to vote.", "highlights": "Council votes."}
            for i in range(20)]  # fmt: skip
    corpus.write_text("\n".join(json.dumps(row) for row in rows))
    code, out, _ = _run(capsys, "init", "--arch", "bart-tiny", "--corpus", str(corpus), "--vocab-size", "300",
                        "--out", str(tmp_path / "m"))  # fmt: skip
    assert code == 0 and "random bart-tiny" in out
    from pruning.artifacts.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(tmp_path / "m")
    tokenizer = checkpoint.tokenizer()
    assert checkpoint.model.config.vocab_size == len(tokenizer) <= 300
    assert (
        tokenizer.decode(tokenizer("the city council").input_ids, skip_special_tokens=True).strip()
        == "the city council"
    )
