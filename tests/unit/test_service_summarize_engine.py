import pytest

from pruning.artifacts.checkpoint import load_checkpoint
from service.config import GenerationConfig, LimitsConfig
from service.errors import InputTooLong, SettingsTooHigh
from service.summarize_engine import SummarizeEngine, SummaryInput
from tests.factories import _CORPUS


@pytest.fixture(scope="module")
def engine(summarizer_dir):
    checkpoint = load_checkpoint(summarizer_dir)
    generation = GenerationConfig(num_beams=2, max_new_tokens=8, no_repeat_ngram_size=0)
    return SummarizeEngine(checkpoint.model, checkpoint.tokenizer(), LimitsConfig(max_input_tokens=120), generation)


def test_batched_summaries_equal_one_by_one_generation(engine):
    items = [SummaryInput(_CORPUS[0]), SummaryInput(_CORPUS[2] + " " + _CORPUS[3]), SummaryInput(_CORPUS[1], 3, 1)]
    together = engine.summarize(items)
    alone = [engine.summarize([item])[0] for item in items]
    assert [s.text for s in together] == [s.text for s in alone]
    assert together[2].output_tokens <= 3
    assert all(s.output_tokens <= 8 for s in together)
    assert together[0].input_tokens == len(engine.tokenizer(_CORPUS[0])["input_ids"])


def test_requests_may_lower_but_not_raise_limits(engine):
    with pytest.raises(SettingsTooHigh, match="max_new_tokens 9 is above this service's limit of 8"):
        engine.encode(SummaryInput("text", max_new_tokens=9))
    with pytest.raises(SettingsTooHigh, match="num_beams 3"):
        engine.encode(SummaryInput("text", num_beams=3))
    with pytest.raises(InputTooLong, match=r"text has \d+ tokens; the limit is 120"):
        engine.encode(SummaryInput(" ".join(_CORPUS * 4)))
    assert engine.encode(SummaryInput(_CORPUS[0], max_new_tokens=4, num_beams=1)).tokens > 5


def test_limit_never_exceeds_the_models_positions(summarizer_dir):
    checkpoint = load_checkpoint(summarizer_dir)  # 160 positions
    engine = SummarizeEngine(
        checkpoint.model, checkpoint.tokenizer(), LimitsConfig(max_input_tokens=4096), GenerationConfig()
    )
    with pytest.raises(InputTooLong, match="the limit is 160"):
        engine.encode(SummaryInput(" ".join(_CORPUS * 2)))


def test_each_request_is_tokenized_once(engine, monkeypatch):
    encoded = [engine.encode(SummaryInput(_CORPUS[0])), engine.encode(SummaryInput(_CORPUS[2] + " " + _CORPUS[3]))]
    expected = [s.text for s in engine.summarize_encoded(encoded)]
    tokenizer = engine.tokenizer

    def refuse(*args, **kwargs):
        raise AssertionError("tokenized again")

    monkeypatch.setattr(type(tokenizer), "__call__", refuse)
    assert [s.text for s in engine.summarize_encoded(encoded)] == expected  # batches run on the counted ids
