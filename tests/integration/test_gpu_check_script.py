"""`make gpu-check` runs only where CUDA is; its script is tested here on the CPU with tiny presets."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_the_gpu_script_runs_every_step_and_writes_its_files(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--out", str(tmp_path), "--device", "cpu", "--quick"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [json.loads(line) for line in (tmp_path / "bench.jsonl").read_text().splitlines()]
    assert {row["arch"] for row in rows} == {"bert-tiny", "bart-tiny"} and all(row["reference_ms"] for row in rows)
    assert json.loads((tmp_path / "latency.json").read_text())["checks"]
    engines = json.loads((tmp_path / "engines.json").read_text())
    assert set(engines["qa"]) == set(engines["summarize"]) == {"batch 1", "batch 8"}
    assert "torch" in json.loads((tmp_path / "environment.json").read_text())
