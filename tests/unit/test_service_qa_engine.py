import pytest

from pruning.artifacts.checkpoint import load_checkpoint
from pruning.runtime.candidates import torch_forward
from pruning.tasks.qa import QAExample, QuestionAnsweringTask
from service.config import LimitsConfig
from service.errors import InputTooLong
from service.qa_engine import QAEngine, QAInput
from tests.factories import _CORPUS

LONG_CONTEXT = " ".join(_CORPUS * 3)  # several windows of 48 tokens


@pytest.fixture(scope="module")
def engine_and_task(dense_bert_dir):
    checkpoint = load_checkpoint(dense_bert_dir)
    limits = LimitsConfig(window_tokens=48, window_stride=16, max_question_tokens=16, max_input_tokens=1000)
    engine = QAEngine(torch_forward(checkpoint.model), checkpoint.tokenizer(), limits, 128)
    task = QuestionAnsweringTask(max_length=48, stride=16)
    return engine, task, checkpoint


def test_answers_equal_the_evaluators_best_span_including_long_contexts(engine_and_task):
    engine, task, checkpoint = engine_and_task
    items = [QAInput("Where is Fresno?", _CORPUS[1]), QAInput("What is a prime number?", LONG_CONTEXT, top_k=3)]
    examples = [QAExample(str(i), item.question, item.context, ("x",), (0,)) for i, item in enumerate(items)]
    expected = task.predict(checkpoint.model, checkpoint.tokenizer(), examples, progress=False)
    assert len(engine.tokenizer(items[1].question, items[1].context, truncation="only_second", max_length=48,
                                stride=16, return_overflowing_tokens=True)["input_ids"]) > 3  # fmt: skip
    answers = engine.answer(items)
    for index, (item, spans) in enumerate(zip(items, answers, strict=True)):
        assert item.context[spans[0].start : spans[0].end] == expected[str(index)]
        assert len(spans) == item.top_k
        assert [s.score for s in spans] == sorted((s.score for s in spans), reverse=True)
        assert len({(s.start, s.end) for s in spans}) == len(spans)


def test_limits_are_checked_with_counts(engine_and_task):
    engine = engine_and_task[0]
    with pytest.raises(InputTooLong, match=r"question has \d+ tokens; the limit is 16"):
        engine.encode(QAInput("why " * 30, "short"))
    with pytest.raises(InputTooLong, match=r"context has \d+ tokens; the limit is 1000"):
        engine.encode(QAInput("why?", LONG_CONTEXT * 3))
    assert engine.encode(QAInput("why?", _CORPUS[0])).tokens > 5


def test_windows_longer_than_the_models_positions_fail_at_start(dense_bert_dir):
    checkpoint = load_checkpoint(dense_bert_dir)
    with pytest.raises(ValueError, match=r"window_tokens \(384\) exceeds the model's 128 positions"):
        QAEngine(torch_forward(checkpoint.model), checkpoint.tokenizer(), LimitsConfig(), 128)


@pytest.mark.parametrize("window", [32, 40, 48])
@pytest.mark.parametrize("stride", [0, 4, 8])
def test_windows_cut_from_one_encoding_equal_the_tokenizers_own_doc_stride(engine_and_task, window, stride):
    """The service tokenizes each request once and cuts windows itself; they must be the evaluator's."""
    engine, _, checkpoint = engine_and_task
    tokenizer = checkpoint.tokenizer()
    limits = LimitsConfig(window_tokens=window, window_stride=stride, max_question_tokens=12, max_input_tokens=400)
    engine = QAEngine(engine.forward, tokenizer, limits, 128)
    for words in (1, 5, 17, 40, 90):
        item = QAInput("  Where is the museum?", " ".join(LONG_CONTEXT.split()[:words]))
        expected = tokenizer(
            item.question.lstrip(), item.context, truncation="only_second", max_length=window, stride=stride,
            return_overflowing_tokens=True, return_offsets_mapping=True,
        )  # fmt: skip
        windows = engine.encode(item).windows
        assert len(windows) == len(expected["input_ids"]), words
        for index, got in enumerate(windows):
            assert got.input_ids == expected["input_ids"][index]
            assert got.token_type_ids == expected.encodings[index].type_ids
            assert got.offsets == [tuple(pair) for pair in expected["offset_mapping"][index]]
            assert got.in_context == [s == 1 for s in expected.sequence_ids(index)]


def test_each_request_is_tokenized_once(engine_and_task, monkeypatch):
    engine = engine_and_task[0]
    encoded = engine.encode(QAInput("Where is Fresno?", _CORPUS[1]))
    monkeypatch.setattr(engine, "tokenizer", _Refuses(engine.tokenizer))
    monkeypatch.setattr(engine, "backend", _Refuses(engine.backend))
    (spans,) = engine.answer_encoded([encoded])
    assert spans  # the batch ran on the encoding the limits were checked on, without tokenizing again


class _Refuses:
    """A tokenizer that fails the test if it encodes any text (its other attributes work)."""

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer

    def __call__(self, *args, **kwargs):
        raise AssertionError("tokenized again")

    def encode(self, *args, **kwargs):
        raise AssertionError("tokenized again")

    def encode_batch(self, *args, **kwargs):
        raise AssertionError("tokenized again")

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)
