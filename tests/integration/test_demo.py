"""`blockserve demo --once` end to end, in its own module so it starts (and stops) its own Ray."""

import pytest

pytestmark = pytest.mark.slow


def test_demo_once_serves_the_zoo_and_reports_latencies(dense_bert_dir, summarizer_dir, tmp_path, capsys):
    """`blockserve demo --once` with small local models (the default zoo is BERT-/BART-base, too slow for tests)."""
    from blockserve.cli import main

    code = main(["demo", "--once", "--qa-model", str(dense_bert_dir), "--sum-model", str(summarizer_dir),
                 "--zoo", str(tmp_path / "zoo"), "--port", "8010", "--repeats", "2", "--qa-method", "uniform"])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "pruned is" in out and "faster than dense through HTTP" in out and "/metrics" in out
    assert (tmp_path / "zoo" / "qa-pruned" / "blockserve.json").is_file()
    assert "RANDOM" not in out  # real checkpoints were given: the demo must not say they are random
    assert "F1 on" in out and "dense" in out  # a real (given) QA model: real questions, both variants scored
