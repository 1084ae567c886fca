"""Our QA pipeline reproduces the shared MiniLM's published dev score; ROUGE on real CNN/DM text."""

import json

import pytest

from blockserve.cli import main
from pruning.tasks.summarization import read_jsonl, rouge_scores
from tests.factories import SHARED

MODEL = SHARED / "models" / "minilm-l6-squad"
SQUAD_DEV = SHARED / "data" / "squad" / "dev.json"
CNNDM = SHARED / "data" / "summarization" / "cnndm_test.jsonl"

pytestmark = pytest.mark.slow


@pytest.mark.skipif(not (MODEL / "model.safetensors").is_file(), reason="../shared/models/minilm-l6-squad absent")
def test_evaluate_reproduces_the_shared_models_dev_score(tmp_path):
    """training.json records dev EM/F1 of the model's own evaluation (max length 256, stride 96)."""
    reference = json.loads((MODEL / "training.json").read_text())
    out = tmp_path / "dense.json"
    code = main(
        ["evaluate", "--model", str(MODEL), "--data", str(SQUAD_DEV), "--max-length", "256", "--stride", "96",
         "--json", str(out)]
    )  # fmt: skip
    assert code == 0
    result = json.loads(out.read_text())
    assert result["n"] == reference["dev_questions"] == 826
    # Same model, data and windows; tie-breaking between equal-scoring spans may differ on a question or two.
    assert result["f1"] == pytest.approx(reference["dev_f1"], abs=0.5)
    assert result["exact_match"] == pytest.approx(reference["dev_em"], abs=0.5)


@pytest.mark.skipif(not CNNDM.is_file(), reason="../shared/data/summarization absent")
def test_lead_three_baseline_scores_like_published_lead3():
    """Lead-3 on CNN/DM test scores ROUGE-1 ≈ 40 in the literature; a broken ROUGE setup lands far off."""
    examples = read_jsonl(CNNDM)
    lead3 = [" ".join(e.article.replace("\n", " ").split(". ")[:3]) for e in examples]
    scores = rouge_scores(lead3, [e.summary for e in examples])
    assert 30 < scores["rouge1"] < 48
    assert 10 < scores["rouge2"] < 22
    assert scores["rougeLsum"] > scores["rougeL"]


@pytest.mark.skipif(not (MODEL / "model.safetensors").is_file(), reason="../shared/models/minilm-l6-squad absent")
def test_service_qa_engine_answers_like_the_evaluator_on_real_squad():
    from pruning.artifacts.checkpoint import load_checkpoint
    from pruning.runtime.candidates import torch_forward
    from pruning.tasks.qa import QuestionAnsweringTask, read_squad
    from service.config import LimitsConfig
    from service.qa_engine import QAEngine, QAInput

    checkpoint = load_checkpoint(MODEL)
    tokenizer = checkpoint.tokenizer()
    examples = read_squad(SQUAD_DEV)
    longest = max(examples, key=lambda e: len(e.context))
    chosen = examples[:24] + [longest]
    task = QuestionAnsweringTask(max_length=256, stride=96)
    expected = task.predict(checkpoint.model, tokenizer, chosen, progress=False)
    limits = LimitsConfig(window_tokens=256, window_stride=96)
    engine = QAEngine(
        torch_forward(checkpoint.model), tokenizer, limits, checkpoint.model.config.max_position_embeddings
    )
    answers = engine.answer([QAInput(e.question, e.context) for e in chosen])
    assert len(tokenizer(longest.context)["input_ids"]) > 256  # the long one spans several windows
    got = {e.id: e.context[spans[0].start : spans[0].end] for e, spans in zip(chosen, answers, strict=True)}
    assert got == expected
