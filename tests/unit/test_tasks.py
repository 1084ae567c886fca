"""Tasks: SQuAD metrics and data, QA windows/labels/span search, summarization data and ROUGE, distillation loss."""

import json
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast
from transformers.modeling_outputs import QuestionAnsweringModelOutput

from pruning.core.errors import DataError, UnsupportedModelError
from pruning.tasks import QuestionAnsweringTask, SummarizationTask, distillation_loss, make_task
from pruning.tasks.qa import QAExample, read_squad
from pruning.tasks.squad_metrics import exact_match, normalize_answer, squad_scores, token_f1
from pruning.tasks.summarization import SummaryExample, one_sentence_per_line, read_jsonl, rouge_scores
from pruning.zoo.local_init import wordpiece_tokenizer
from tests.factories import tiny_bart, tiny_bert

FILLER = "The first manned flight would launch with support. "
# Every word of these is one token of `word_tokenizer`, so token ids name words (others are [UNK]).
WORDS = (
    FILLER + "Which center was the landing support from? It came from the Kennedy Space Center. NASA chose for the "
    "Apollo launch. The lunar module was built by NASA. Would Webb support the mission? Did led it x"
)


def qa_example(context: str, answer: str, question: str = "Which center was the landing support from?", id="q"):
    return QAExample(
        id=id, question=question, context=context, answer_texts=(answer,), answer_starts=(context.index(answer),)
    )


def context_range(encoded, window: int) -> tuple[int, int]:
    """Character span of the context that a window covers."""
    offsets = encoded["offset_mapping"][window]
    tokens = [i for i, s in enumerate(encoded.sequence_ids(window)) if s == 1]
    return offsets[tokens[0]][0], offsets[tokens[-1]][1]


def token_at(encoded, window: int, char: int) -> int:
    """The context token of `window` whose offsets start at character `char`."""
    offsets = encoded["offset_mapping"][window]
    (index,) = [i for i, s in enumerate(encoded.sequence_ids(window)) if s == 1 and offsets[i][0] == char]
    return index


def word_tokenizer(model_input_names: list[str]) -> PreTrainedTokenizerFast:
    """A BERT-style WordPiece tokenizer with a fixed whole-word vocabulary (no training, no shared data needed)."""
    words = sorted(set(re.findall(r"\w+|[^\w\s]", WORDS.lower())))
    vocab = {token: i for i, token in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words])}
    return wordpiece_tokenizer(vocab=vocab, model_input_names=model_input_names)


class TokenScoreModel(torch.nn.Module):
    """A stand-in QA model: each token's start/end logit is looked up by token id, so the best span is known."""

    def __init__(self, tokenizer, start: dict[str, float], end: dict[str, float], default: float = -10.0):
        super().__init__()
        scores = torch.full((2, len(tokenizer)), default)
        for row, words in enumerate((start, end)):
            for word, score in words.items():
                (token,) = tokenizer.tokenize(word)
                scores[row, tokenizer.convert_tokens_to_ids(token)] = score
        self.scores = torch.nn.Parameter(scores, requires_grad=False)
        self.batch_shapes = []
        self.input_names = set()

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        assert attention_mask.shape == input_ids.shape
        assert token_type_ids is None or token_type_ids.shape == input_ids.shape
        self.batch_shapes.append(tuple(input_ids.shape))
        self.input_names.add("token_type_ids" if token_type_ids is not None else "no token_type_ids")
        return QuestionAnsweringModelOutput(
            start_logits=self.scores[0][input_ids], end_logits=self.scores[1][input_ids]
        )


@pytest.fixture(scope="module")
def qa_tokenizer():
    """Makes input_ids and attention_mask only (like the `wordpiece_tokenizer` fixture)."""
    return word_tokenizer(["input_ids", "attention_mask"])


@pytest.fixture(scope="module")
def typed_tokenizer():
    """Also makes token_type_ids (0 for [CLS] question [SEP], 1 for the context and its [SEP]), like BERT's."""
    return word_tokenizer(["input_ids", "token_type_ids", "attention_mask"])


# ---------------------------------------------------------------------------------------------- SQuAD metrics


def test_normalize_answer_lowercases_drops_punctuation_articles_and_extra_spaces():
    assert normalize_answer("The  Apollo-11 mission!") == "apollo11 mission"
    assert normalize_answer("  An apple, a pear and THE plum. ") == "apple pear and plum"


def test_normalize_answer_removes_articles_only_as_whole_words():
    assert normalize_answer("the theory of anatomy") == "theory of anatomy"
    assert normalize_answer("Athens and an ant") == "athens and ant"


def test_exact_match_compares_normalised_text():
    assert exact_match("the Eiffel Tower.", "Eiffel tower") == 1.0
    assert exact_match("Eiffel", "Eiffel Tower") == 0.0


def test_token_f1_partial_overlap_by_hand():
    # prediction "big cat" (after dropping "the") vs gold "big dog": precision 1/2, recall 1/2.
    assert token_f1("the big cat", "big dog") == pytest.approx(0.5)
    # precision 2/2, recall 2/4 -> F1 = 2 * 1 * 0.5 / 1.5
    assert token_f1("red fox", "a quick red fox jumps") == pytest.approx(2 / 3)


def test_token_f1_counts_repeated_tokens_at_most_as_often_as_in_gold():
    # prediction "go go go" vs gold "go": overlap 1 (not 3), precision 1/3, recall 1.
    assert token_f1("go go go", "go") == pytest.approx(2 * (1 / 3) / (1 / 3 + 1))
    # ... and as often as they are in both: "go go" vs "go go stop" overlaps 2 tokens, precision 1, recall 2/3.
    assert token_f1("go go", "go go stop") == pytest.approx(0.8)


def test_token_f1_no_overlap_or_empty_is_zero():
    assert token_f1("cat", "dog") == 0.0
    assert token_f1("", "dog") == 0.0
    assert token_f1("the", "a") == 0.0


def test_squad_scores_take_the_best_gold_answer_and_are_in_percent():
    golds = {"q1": ["Denver Broncos", "Broncos"], "q2": ["big dog", "a cat"]}
    scores = squad_scores({"q1": "Broncos", "q2": "the big cat"}, golds)
    # q1: EM 1 (matches second gold); q2: EM 0, F1 max(0.5 vs "big dog", 2/3 vs "cat") = 2/3.
    assert scores["exact_match"] == pytest.approx(50.0)
    assert scores["f1"] == pytest.approx(100 * (1.0 + 2 / 3) / 2)


def test_squad_scores_count_a_missing_prediction_as_zero_and_ignore_extra_ones():
    golds = {"q1": ["Paris"], "q2": ["London"]}
    scores = squad_scores({"q1": "Paris", "unknown": "London"}, golds)
    assert scores == {"exact_match": pytest.approx(50.0), "f1": pytest.approx(50.0)}


def test_squad_scores_without_questions_is_an_error():
    with pytest.raises(ValueError, match="no questions"):
        squad_scores({}, {})


# ---------------------------------------------------------------------------------------------- read_squad


def _squad_json(*qas, context="Paris is the capital of France."):
    return {"version": "1.1", "data": [{"title": "T", "paragraphs": [{"context": context, "qas": list(qas)}]}]}


def _qa(id, question="What is the capital?", answers=(("Paris", 0),)):
    return {"id": id, "question": question, "answers": [{"text": t, "answer_start": s} for t, s in answers]}


def test_read_squad_reads_ids_questions_and_all_answers_in_order(tmp_path):
    path = tmp_path / "dev.json"
    data = _squad_json(_qa(101, answers=(("Paris", 0), ("Paris is", 0))), _qa("b", "Capital of?", (("France", 24),)))
    data["data"].append({"title": "U", "paragraphs": [{"context": "Rome.", "qas": [_qa("c", answers=(("Rome", 0),))]}]})
    path.write_text(json.dumps(data))
    examples = read_squad(path)
    assert [e.id for e in examples] == ["101", "b", "c"]
    assert examples[0].answer_texts == ("Paris", "Paris is")
    assert examples[0].answer_starts == (0, 0)
    assert examples[1].question == "Capital of?"
    assert examples[1].context == "Paris is the capital of France."
    assert examples[1].context[examples[1].answer_starts[0] :].startswith("France")
    assert examples[2].context == "Rome."


def test_read_squad_limit_keeps_the_first_questions(tmp_path):
    path = tmp_path / "dev.json"
    path.write_text(json.dumps(_squad_json(*(_qa(f"q{i}") for i in range(5)))))
    assert [e.id for e in read_squad(path, limit=2)] == ["q0", "q1"]
    assert len(QuestionAnsweringTask().load(path)) == 5


def test_read_squad_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nope.json"
    with pytest.raises(DataError, match="nope.json does not exist"):
        read_squad(path)


@pytest.mark.parametrize(
    "content",
    ["this is not json", json.dumps([1, 2]), json.dumps({"version": "1.1"})],
    ids=["not-json", "top-level-list", "no-data-key"],
)
def test_read_squad_rejects_files_that_are_not_squad_json(tmp_path, content):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(DataError, match=r"bad\.json is not SQuAD-format JSON"):
        read_squad(path)


def test_read_squad_binary_file_is_a_data_error_naming_the_path(tmp_path):
    path = tmp_path / "binary.json"
    path.write_bytes(b"\xff\xfe\x00\x81 not text")
    with pytest.raises(DataError, match=r"binary\.json"):
        read_squad(path)


def test_read_squad_non_numeric_answer_start_is_a_data_error(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(_squad_json(_qa("q1", answers=(("Paris", "start"),)))))
    with pytest.raises(DataError, match=r"bad\.json"):
        read_squad(path)


def test_read_squad_reports_a_missing_field_with_the_path(tmp_path):
    path = tmp_path / "bad.json"
    question = _qa("q1")
    del question["question"]
    path.write_text(json.dumps(_squad_json(question)))
    with pytest.raises(DataError, match=r"bad\.json: missing SQuAD field 'question'"):
        read_squad(path)


def test_read_squad_rejects_unanswerable_questions(tmp_path):
    path = tmp_path / "v2.json"
    path.write_text(json.dumps(_squad_json(_qa("q1"), _qa("impossible", answers=()))))
    with pytest.raises(DataError, match=r"v2\.json: question impossible has no answers"):
        read_squad(path)


def test_read_squad_file_without_questions_is_an_error(tmp_path):
    path = tmp_path / "empty.json"
    path.write_text(json.dumps({"data": []}))
    with pytest.raises(DataError, match=r"empty\.json has no questions"):
        read_squad(path)


# ---------------------------------------------------------------------------------------------- QA features


def test_stride_must_be_smaller_than_max_length():
    with pytest.raises(DataError, match="stride"):
        QuestionAnsweringTask(max_length=64, stride=64)


def test_train_features_label_the_answer_tokens_in_every_window_that_holds_it(wordpiece_tokenizer):
    context = FILLER * 4 + "The landing support came from the Kennedy Space Center. " + FILLER * 4
    example = qa_example(context, "Kennedy Space Center", question="Where?")
    task = QuestionAnsweringTask(max_length=40, stride=8)
    features = task.train_features(wordpiece_tokenizer, [example])
    encoded = task._windows(wordpiece_tokenizer, [example])
    assert len(features) == len(encoded["input_ids"]) > 2
    answer_start = example.answer_starts[0]
    answer_end = answer_start + len(example.answer_texts[0])
    labelled = 0
    for window, feature in enumerate(features):
        assert feature["input_ids"] == encoded["input_ids"][window]
        assert len(feature["input_ids"]) <= 40
        first, last = context_range(encoded, window)
        if first <= answer_start and answer_end <= last:
            offsets = encoded["offset_mapping"][window]
            start, end = feature["start_positions"], feature["end_positions"]
            assert encoded.sequence_ids(window)[start] == encoded.sequence_ids(window)[end] == 1
            assert context[offsets[start][0] : offsets[end][1]] == "Kennedy Space Center"
            labelled += 1
        else:
            assert (feature["start_positions"], feature["end_positions"]) == (0, 0)  # [CLS]
            assert feature["input_ids"][0] == wordpiece_tokenizer.cls_token_id
    assert 1 <= labelled < len(features)


def test_train_features_answer_cut_by_a_window_edge_points_at_cls(wordpiece_tokenizer):
    task = QuestionAnsweringTask(max_length=40, stride=8)
    cut = 0
    for shift in range(8):  # move the answer along so that some window edge falls inside it
        context = FILLER * 3 + "x " * shift + "Kennedy Space Center. " + FILLER * 3
        example = qa_example(context, "Kennedy Space Center", question="Where?")
        features = task.train_features(wordpiece_tokenizer, [example])
        encoded = task._windows(wordpiece_tokenizer, [example])
        answer_start = example.answer_starts[0]
        answer_end = answer_start + len("Kennedy Space Center")
        for window, feature in enumerate(features):
            first, last = context_range(encoded, window)
            if first <= answer_start < last < answer_end or answer_start < first < answer_end <= last:
                assert (feature["start_positions"], feature["end_positions"]) == (0, 0)
                cut += 1
    assert cut > 0


def test_train_features_use_the_first_answer_and_keep_question_tokens_out_of_the_label(typed_tokenizer):
    context = "NASA chose the Kennedy Space Center for the Apollo launch."
    example = QAExample(
        id="q",
        question="Which center did NASA choose?",
        context=context,
        answer_texts=("Kennedy Space Center", "Space Center"),
        answer_starts=(context.index("Kennedy"), context.index("Space")),
    )
    task = QuestionAnsweringTask()
    (feature,) = task.train_features(typed_tokenizer, [example])
    encoded = task._windows(typed_tokenizer, [example])
    offsets = encoded["offset_mapping"][0]
    assert context[offsets[feature["start_positions"]][0] : offsets[feature["end_positions"]][1]] == (
        "Kennedy Space Center"
    )
    # token_type_ids: 0 for [CLS] question [SEP], 1 for context [SEP]; the labels are in the second part.
    question_end = feature["input_ids"].index(typed_tokenizer.sep_token_id)  # [CLS] question [SEP]
    assert feature["token_type_ids"] == [0] * (question_end + 1) + [1] * (len(feature["input_ids"]) - question_end - 1)
    assert (
        feature["token_type_ids"][feature["start_positions"]]
        == feature["token_type_ids"][feature["end_positions"]]
        == 1
    )


def test_train_features_answer_glued_to_punctuation_excludes_the_neighbouring_tokens(qa_tokenizer):
    context = "NASA chose (Kennedy Space Center) for the launch."
    example = qa_example(context, "Kennedy Space Center")
    task = QuestionAnsweringTask()
    (feature,) = task.train_features(qa_tokenizer, [example])
    offsets = task._windows(qa_tokenizer, [example])["offset_mapping"][0]
    start, end = feature["start_positions"], feature["end_positions"]
    assert offsets[start - 1][1] == example.answer_starts[0]  # "(" ends where the answer starts ...
    assert context[offsets[start][0] : offsets[end][1]] == "Kennedy Space Center"  # ... and is not part of it


def test_train_features_without_token_type_ids_when_the_tokenizer_makes_none(wordpiece_tokenizer):
    example = qa_example("NASA built the lunar module.", "lunar module")
    (feature,) = QuestionAnsweringTask().train_features(wordpiece_tokenizer, [example])
    assert set(feature) == {"input_ids", "attention_mask", "start_positions", "end_positions"}


def test_train_features_one_window_per_short_example_in_order(wordpiece_tokenizer):
    examples = [
        qa_example("NASA built the lunar module.", "lunar module", id="a"),
        qa_example("Apollo was a manned program.", "Apollo", id="b"),
    ]
    task = QuestionAnsweringTask()
    features = task.train_features(wordpiece_tokenizer, examples)
    encoded = task._windows(wordpiece_tokenizer, examples)
    assert len(features) == 2
    for window, (feature, example) in enumerate(zip(features, examples, strict=True)):
        offsets = encoded["offset_mapping"][window]
        span = example.context[offsets[feature["start_positions"]][0] : offsets[feature["end_positions"]][1]]
        assert span == example.answer_texts[0]


def test_qa_collate_pads_to_the_longest_feature_and_keeps_labels(typed_tokenizer):
    examples = [
        qa_example("NASA built the lunar module for the Apollo program.", "lunar module", id="a"),
        qa_example("Apollo was manned.", "Apollo", id="b"),
    ]
    task = QuestionAnsweringTask()
    features = task.train_features(typed_tokenizer, examples)
    batch = task.collate(typed_tokenizer, features)
    longest = max(len(f["input_ids"]) for f in features)
    shortest = min(len(f["input_ids"]) for f in features)
    assert longest > shortest
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "start_positions", "end_positions"}
    assert batch["input_ids"].shape == batch["attention_mask"].shape == batch["token_type_ids"].shape == (2, longest)
    assert batch["start_positions"].tolist() == [f["start_positions"] for f in features]
    assert batch["end_positions"].tolist() == [f["end_positions"] for f in features]
    short = int(np.argmin([len(f["input_ids"]) for f in features]))
    assert batch["input_ids"][short, :shortest].tolist() == features[short]["input_ids"]
    assert (batch["input_ids"][short, shortest:] == typed_tokenizer.pad_token_id).all()
    assert batch["attention_mask"][short].tolist() == [1] * shortest + [0] * (longest - shortest)
    assert batch["token_type_ids"][short, :shortest].tolist() == features[short]["token_type_ids"]


@pytest.mark.parametrize("typed", [True, False], ids=["token-type-ids", "no-token-type-ids"])
def test_qa_collated_batch_trains_a_bert_qa_model(qa_tokenizer, typed_tokenizer, typed):
    tokenizer = typed_tokenizer if typed else qa_tokenizer
    task = QuestionAnsweringTask(max_length=32, stride=8)
    context = FILLER * 3 + "The landing support came from the Kennedy Space Center. "
    features = task.train_features(tokenizer, [qa_example(context, "Kennedy Space Center")])
    batch = task.collate(tokenizer, features)
    assert ("token_type_ids" in batch) == typed
    outputs = tiny_bert(vocab_size=len(tokenizer))(**batch)
    assert torch.isfinite(outputs.loss)
    logits, mask = task.distillation_logits(outputs, batch)
    assert mask is None
    assert logits.shape == (len(features), 2, batch["input_ids"].shape[1])
    assert torch.equal(logits[:, 0], outputs.start_logits)
    assert torch.equal(logits[:, 1], outputs.end_logits)


# ---------------------------------------------------------------------------------------------- QA span search


@pytest.fixture
def span_setup(qa_tokenizer):
    """One window of a short context, with the token index of each context word and of a question word."""
    context = "NASA chose the Kennedy Space Center for the first Apollo launch."
    example = qa_example(context, "Kennedy Space Center", question="Would Apollo launch with Webb support?")
    task = QuestionAnsweringTask()
    encoded = task._windows(qa_tokenizer, [example])
    words = {w: token_at(encoded, 0, context.index(w)) for w in ("NASA", "Kennedy", "Space", "Center", "first")}
    words["launch"] = token_at(encoded, 0, context.index("launch"))
    question_word = encoded["input_ids"][0].index(qa_tokenizer.convert_tokens_to_ids("webb"))
    assert encoded.sequence_ids(0)[question_word] == 0
    return task, example, encoded, words, question_word


def _logits(encoded, high: dict[int, float], extra: int = 0) -> np.ndarray:
    logits = np.full(len(encoded["input_ids"][0]) + extra, -100.0, dtype=np.float32)
    for index, value in high.items():
        logits[index] = value
    return logits


def test_best_span_picks_the_highest_start_plus_end(span_setup):
    task, example, encoded, words, _ = span_setup
    start = _logits(encoded, {words["Kennedy"]: 5.0, words["NASA"]: 4.0})
    end = _logits(encoded, {words["Center"]: 5.0, words["NASA"]: 4.0})
    score, text = task._best_span(example.context, start, end, encoded, 0)
    assert text == "Kennedy Space Center"
    assert score == pytest.approx(10.0)


def test_best_span_never_chooses_question_tokens(span_setup):
    task, example, encoded, words, question_word = span_setup
    start = _logits(encoded, {question_word: 50.0, words["NASA"]: 1.0})
    end = _logits(encoded, {question_word: 50.0, words["NASA"]: 1.0})
    score, text = task._best_span(example.context, start, end, encoded, 0)
    assert text == "NASA"
    assert score == pytest.approx(2.0)


def test_best_span_never_chooses_special_tokens(span_setup, qa_tokenizer):
    task, example, encoded, words, _ = span_setup
    ids = encoded["input_ids"][0]
    specials = [i for i, t in enumerate(ids) if t in (qa_tokenizer.cls_token_id, qa_tokenizer.sep_token_id)]
    start = _logits(encoded, {**dict.fromkeys(specials, 50.0), words["first"]: 1.0})
    end = _logits(encoded, {**dict.fromkeys(specials, 50.0), words["first"]: 1.0})
    assert task._best_span(example.context, start, end, encoded, 0)[1] == "first"


def test_best_span_never_ends_before_it_starts(span_setup):
    task, example, encoded, words, _ = span_setup
    # The highest start (Center) is after the highest end (Kennedy): that pair (score 20) is not a span.
    start = _logits(encoded, {words["Center"]: 10.0, words["NASA"]: 1.0})
    end = _logits(encoded, {words["Kennedy"]: 10.0, words["NASA"]: 1.0})
    score, text = task._best_span(example.context, start, end, encoded, 0)
    assert (text, score) == ("NASA chose the Kennedy", pytest.approx(11.0))


@pytest.mark.parametrize(
    ("max_answer_tokens", "expected"),
    [(3, "first"), (5, "first"), (6, "Kennedy Space Center for the first"), (7, "Kennedy Space Center for the first")],
)
def test_best_span_respects_max_answer_tokens(span_setup, max_answer_tokens, expected):
    _, example, encoded, words, _ = span_setup
    task = QuestionAnsweringTask(max_answer_tokens=max_answer_tokens)
    assert words["first"] - words["Kennedy"] + 1 == 6
    start = _logits(encoded, {words["Kennedy"]: 10.0, words["first"]: 1.0})
    end = _logits(encoded, {words["first"]: 10.0})
    assert task._best_span(example.context, start, end, encoded, 0)[1] == expected


def test_best_span_ignores_logits_of_padding_positions(span_setup):
    task, example, encoded, words, _ = span_setup
    start = _logits(encoded, {words["NASA"]: 1.0}, extra=5)
    end = _logits(encoded, {words["NASA"]: 1.0}, extra=5)
    start[-5:] = end[-5:] = 99.0
    assert task._best_span(example.context, start, end, encoded, 0) == (pytest.approx(2.0), "NASA")


def test_best_span_pairs_only_the_n_best_starts_and_ends(span_setup):
    _, example, encoded, words, _ = span_setup
    start = _logits(encoded, {words["Center"]: 10.0, words["Kennedy"]: 3.0})
    end = _logits(encoded, {words["Kennedy"]: 10.0, words["Center"]: 2.0})
    # n_best=1: the only pair (Center, Kennedy) ends before it starts, so this window proposes nothing.
    assert QuestionAnsweringTask(n_best=1)._best_span(example.context, start, end, encoded, 0) == (-np.inf, "")
    # n_best=2: (Kennedy, Kennedy) = 13 beats (Center, Center) = 12 and (Kennedy, Center) = 5.
    assert QuestionAnsweringTask(n_best=2)._best_span(example.context, start, end, encoded, 0) == (
        pytest.approx(13.0),
        "Kennedy",
    )


# ---------------------------------------------------------------------------------------------- QA predict / evaluate


@pytest.mark.parametrize("typed", [True, False], ids=["token-type-ids", "no-token-type-ids"])
def test_predict_returns_the_span_the_model_scores_highest(qa_tokenizer, typed_tokenizer, typed):
    tokenizer = typed_tokenizer if typed else qa_tokenizer
    example = qa_example("NASA chose the Kennedy Space Center for the first Apollo launch.", "Kennedy Space Center")
    model = TokenScoreModel(tokenizer, start={"kennedy": 5.0}, end={"center": 5.0})
    assert QuestionAnsweringTask().predict(model, tokenizer, [example], progress=False) == {"q": "Kennedy Space Center"}
    assert model.input_names == {"token_type_ids" if typed else "no token_type_ids"}


def test_predict_ignores_high_scores_on_question_tokens(qa_tokenizer):
    example = qa_example(
        "The lunar module was built for NASA.", "NASA", question="Would Webb support the Apollo mission?"
    )
    model = TokenScoreModel(qa_tokenizer, start={"webb": 50.0, "nasa": 1.0}, end={"webb": 50.0, "nasa": 1.0})
    assert QuestionAnsweringTask().predict(model, qa_tokenizer, [example], progress=False) == {"q": "NASA"}


@pytest.mark.parametrize(("nasa", "kennedy", "expected"), [(9.0, 2.0, "NASA"), (2.0, 9.0, "Kennedy Space Center")])
@pytest.mark.parametrize("eval_batch_size", [1, 32])
def test_predict_best_window_wins_across_windows_of_a_long_context(
    qa_tokenizer, nasa, kennedy, expected, eval_batch_size
):
    context = "NASA led it. " + FILLER * 6 + "The landing support came from the Kennedy Space Center."
    example = qa_example(context, "Kennedy Space Center")
    task = QuestionAnsweringTask(max_length=32, stride=8, eval_batch_size=eval_batch_size)
    encoded = task._windows(qa_tokenizer, [example])
    windows = len(encoded["input_ids"])
    nasa_windows = [w for w in range(windows) if context_range(encoded, w)[0] == 0]
    kennedy_windows = [w for w in range(windows) if context_range(encoded, w)[1] >= context.index("Center") + 6]
    assert windows > 3 and nasa_windows == [0] and 0 not in kennedy_windows and windows - 1 in kennedy_windows
    model = TokenScoreModel(
        qa_tokenizer, start={"nasa": nasa, "kennedy": kennedy}, end={"nasa": nasa, "center": kennedy}
    )
    assert task.predict(model, qa_tokenizer, [example], progress=False) == {"q": expected}
    assert sum(shape[0] for shape in model.batch_shapes) == windows
    assert len(model.batch_shapes) == -(-windows // eval_batch_size)


def test_predict_answers_each_question_from_its_own_windows(qa_tokenizer):
    examples = [
        qa_example("The lunar module was built for NASA.", "NASA", id="a"),
        qa_example(FILLER * 4 + "It came from the Kennedy Space Center.", "Kennedy Space Center", id="b"),
        qa_example("NASA chose the Kennedy Space Center.", "Kennedy Space Center", id="c"),
    ]
    model = TokenScoreModel(qa_tokenizer, start={"nasa": 1.0, "kennedy": 5.0}, end={"nasa": 1.0, "center": 5.0})
    predictions = QuestionAnsweringTask(max_length=32, stride=8).predict(model, qa_tokenizer, examples, progress=False)
    assert predictions == {"a": "NASA", "b": "Kennedy Space Center", "c": "Kennedy Space Center"}


def test_evaluate_scores_right_answers_100(qa_tokenizer):
    examples = [
        qa_example("The landing support came from the Kennedy Space Center.", "Kennedy Space Center", id="a"),
        qa_example("The lunar module was built for NASA.", "NASA", id="b"),
    ]
    model = TokenScoreModel(qa_tokenizer, start={"kennedy": 5.0, "nasa": 5.0}, end={"center": 5.0, "nasa": 5.0})
    scores = QuestionAnsweringTask().evaluate(model, qa_tokenizer, examples, progress=False)
    assert scores == {"exact_match": pytest.approx(100.0), "f1": pytest.approx(100.0), "n": 2}


def test_evaluate_scores_a_partly_right_answer(qa_tokenizer):
    example = qa_example("The landing support came from the Kennedy Space Center.", "Kennedy Space Center")
    model = TokenScoreModel(qa_tokenizer, start={"space": 5.0}, end={"center": 5.0})  # predicts "Space Center"
    scores = QuestionAnsweringTask().evaluate(model, qa_tokenizer, [example], progress=False)
    # precision 2/2, recall 2/3 -> F1 0.8
    assert scores == {"exact_match": 0.0, "f1": pytest.approx(80.0), "n": 1}


# ---------------------------------------------------------------------------------------------- summarization data


def _write_lines(path, *lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_read_jsonl_reads_cnndm_field_names(tmp_path):
    path = _write_lines(
        tmp_path / "cnndm.jsonl",
        json.dumps({"id": "abc", "article": "Long text.", "highlights": "Short.\nShorter."}),
        json.dumps({"article": "Second.", "highlights": "Two."}),
    )
    assert read_jsonl(path) == [
        SummaryExample(id="abc", article="Long text.", summary="Short.\nShorter."),
        SummaryExample(id="2", article="Second.", summary="Two."),  # no id: the line number
    ]


def test_read_jsonl_reads_xsum_field_names(tmp_path):
    path = _write_lines(tmp_path / "xsum.jsonl", json.dumps({"id": 7, "document": "A document.", "summary": "One."}))
    assert read_jsonl(path) == [SummaryExample(id="7", article="A document.", summary="One.")]


def test_read_jsonl_skips_blank_lines_and_honours_limit(tmp_path):
    rows = [json.dumps({"document": f"doc {i}", "summary": f"sum {i}"}) for i in range(4)]
    path = _write_lines(tmp_path / "data.jsonl", "", rows[0], "   ", rows[1], rows[2], "", rows[3])
    examples = read_jsonl(path)
    assert [e.article for e in examples] == ["doc 0", "doc 1", "doc 2", "doc 3"]
    assert [e.id for e in examples] == ["2", "4", "5", "7"]  # file line numbers, blank lines counted
    assert [e.article for e in read_jsonl(path, limit=2)] == ["doc 0", "doc 1"]
    assert len(SummarizationTask().load(path, limit=3)) == 3


def test_read_jsonl_bad_json_names_file_and_line(tmp_path):
    path = _write_lines(tmp_path / "bad.jsonl", json.dumps({"article": "a", "highlights": "b"}), "", "{not json")
    with pytest.raises(DataError, match=r"bad\.jsonl:3 is not valid JSON"):
        read_jsonl(path)


@pytest.mark.parametrize(
    "row",
    [{"article": "a", "summary": "b"}, {"text": "a"}, ["article", "highlights"]],
    ids=["mixed-names", "other-names", "not-an-object"],
)
def test_read_jsonl_missing_fields_name_file_and_line(tmp_path, row):
    path = _write_lines(tmp_path / "bad.jsonl", json.dumps({"document": "a", "summary": "b"}), json.dumps(row))
    with pytest.raises(DataError, match=r"bad\.jsonl:2 has no article/summary fields"):
        read_jsonl(path)


def test_read_jsonl_binary_file_is_a_data_error_naming_the_path(tmp_path):
    path = tmp_path / "binary.jsonl"
    path.write_bytes(b"\xff\xfe\x00\x81 not text\n")
    with pytest.raises(DataError, match=r"binary\.jsonl"):
        read_jsonl(path)


def test_read_jsonl_non_string_fields_are_an_error(tmp_path):
    path = _write_lines(tmp_path / "bad.jsonl", json.dumps({"article": ["a"], "highlights": "b"}))
    with pytest.raises(DataError, match=r"bad\.jsonl:1: 'article' and 'highlights' must be strings"):
        read_jsonl(path)


def test_read_jsonl_missing_or_empty_file_is_an_error(tmp_path):
    with pytest.raises(DataError, match=r"missing\.jsonl does not exist"):
        read_jsonl(tmp_path / "missing.jsonl")
    with pytest.raises(DataError, match=r"empty\.jsonl has no rows"):
        read_jsonl(_write_lines(tmp_path / "empty.jsonl", "", "  "))


def test_one_sentence_per_line_keeps_existing_line_breaks():
    text = "  Police arrest a man .\n\n  He is charged with theft. Court date set.  \n"
    assert one_sentence_per_line(text) == "Police arrest a man .\nHe is charged with theft. Court date set."


def test_one_sentence_per_line_splits_after_sentence_ends():
    assert (
        one_sentence_per_line("  One. Two!  Three? It cost 3.5 million ") == "One.\nTwo!\nThree?\nIt cost 3.5 million"
    )


# ---------------------------------------------------------------------------------------------- ROUGE


def test_rouge_of_identical_texts_is_100():
    texts = ["The cat sat on the mat. It was happy.", "Dogs bark."]
    assert rouge_scores(texts, list(texts)) == {
        name: pytest.approx(100.0) for name in ("rouge1", "rouge2", "rougeL", "rougeLsum")
    }


def test_rouge_of_disjoint_texts_is_0():
    assert rouge_scores(["alpha beta gamma"], ["delta epsilon zeta"]) == dict.fromkeys(
        ("rouge1", "rouge2", "rougeL", "rougeLsum"), 0.0
    )


def test_rouge_partial_overlap_by_hand_and_mean_over_pairs():
    scores = rouge_scores(["the cat sat", "alpha beta"], ["the cat ran", "alpha beta"])
    # pair 1: unigrams 2/3 -> F 2/3; bigrams {the cat} of 2 -> 1/2; pair 2: 1.
    assert scores["rouge1"] == pytest.approx(100 * (2 / 3 + 1) / 2)
    assert scores["rouge2"] == pytest.approx(100 * (1 / 2 + 1) / 2)
    assert scores["rougeL"] == pytest.approx(100 * (2 / 3 + 1) / 2)


def test_rouge_uses_porter_stemming():
    assert rouge_scores(["cats running"], ["cat runs"])["rouge1"] == pytest.approx(100.0)


def test_rouge_lsum_matches_sentence_by_sentence():
    # Same sentences in another order: the whole-text LCS is short, the per-sentence union LCS is complete.
    scores = rouge_scores(["Dogs bark loudly. Birds sing at dawn."], ["Birds sing at dawn. Dogs bark loudly."])
    assert scores["rougeLsum"] == pytest.approx(100.0)
    assert scores["rougeL"] == pytest.approx(100 * 4 / 7)


@pytest.mark.parametrize(("predictions", "references"), [(["a"], ["a", "b"]), (["a", "b"], ["a"]), ([], [])])
def test_rouge_needs_one_prediction_per_reference(predictions, references):
    with pytest.raises(ValueError, match="predictions for"):
        rouge_scores(predictions, references)


# ---------------------------------------------------------------------------------------------- summarization features


@pytest.fixture(scope="module")
def bpe_tokenizer():
    """A BART-style byte-level BPE tokenizer (<s> text </s>), trained here."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    corpus = [FILLER * 3, "The landing support came from the Kennedy Space Center.", "NASA built the lunar module."]
    tokenizer.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=320, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        special_tokens=[("<s>", tokenizer.token_to_id("<s>")), ("</s>", tokenizer.token_to_id("</s>"))],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


def _summary_examples():
    return [
        SummaryExample(id="1", article=FILLER * 10, summary="NASA built the lunar module for the first manned flight."),
        SummaryExample(id="2", article="The lunar module.", summary="Launch."),
    ]


def test_summarization_train_features_tokenize_article_and_summary_with_truncation(bpe_tokenizer):
    examples = _summary_examples()
    task = SummarizationTask(max_source_tokens=20, max_target_tokens=6)
    features = task.train_features(bpe_tokenizer, examples)
    assert len(features) == 2
    long, short = features
    assert set(long) == {"input_ids", "attention_mask", "labels"}
    assert len(long["input_ids"]) == 20 and len(long["labels"]) == 6  # truncated, specials included
    assert long["attention_mask"] == [1] * 20
    for feature in features:
        assert feature["input_ids"][0] == feature["labels"][0] == bpe_tokenizer.bos_token_id
        assert feature["input_ids"][-1] == feature["labels"][-1] == bpe_tokenizer.eos_token_id
    assert bpe_tokenizer.decode(short["input_ids"], skip_special_tokens=True) == "The lunar module."
    assert bpe_tokenizer.decode(short["labels"], skip_special_tokens=True) == "Launch."


def test_summarization_collate_pads_inputs_with_pad_and_labels_with_minus_100(bpe_tokenizer):
    task = SummarizationTask(max_source_tokens=20, max_target_tokens=12)
    features = task.train_features(bpe_tokenizer, _summary_examples())
    batch = task.collate(bpe_tokenizer, features)
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    source_lengths = [len(f["input_ids"]) for f in features]
    label_lengths = [len(f["labels"]) for f in features]
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (2, max(source_lengths))
    assert batch["labels"].shape == (2, max(label_lengths))
    assert batch["labels"].dtype == torch.long
    for row, feature in enumerate(features):
        n, m = source_lengths[row], label_lengths[row]
        assert batch["input_ids"][row, :n].tolist() == feature["input_ids"]
        assert (batch["input_ids"][row, n:] == bpe_tokenizer.pad_token_id).all()
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (max(source_lengths) - n)
        assert batch["labels"][row, :m].tolist() == feature["labels"]
        assert (batch["labels"][row, m:] == -100).all()
    assert (batch["labels"] == -100).sum() == max(label_lengths) - min(label_lengths) > 0


def test_summarization_batch_runs_through_bart_and_masks_label_padding(bpe_tokenizer):
    task = SummarizationTask(max_source_tokens=20, max_target_tokens=12)
    batch = task.collate(bpe_tokenizer, task.train_features(bpe_tokenizer, _summary_examples()))
    model = tiny_bart(vocab_size=len(bpe_tokenizer))
    model.config.pad_token_id = bpe_tokenizer.pad_token_id
    model.config.decoder_start_token_id = bpe_tokenizer.eos_token_id
    outputs = model(**batch)
    assert torch.isfinite(outputs.loss)
    logits, mask = task.distillation_logits(outputs, batch)
    assert logits.shape[:2] == mask.shape == batch["labels"].shape
    assert torch.equal(mask, batch["labels"] != -100)


# ---------------------------------------------------------------------------------------------- distillation loss


def test_distillation_loss_is_zero_for_identical_logits():
    logits = torch.randn(3, 5, 7, generator=torch.Generator().manual_seed(0))
    assert distillation_loss(logits, logits.clone(), temperature=2.0).item() == pytest.approx(0.0, abs=1e-6)


def test_distillation_loss_is_positive_for_different_logits():
    generator = torch.Generator().manual_seed(1)
    student, teacher = torch.randn(2, 4, 6, generator=generator), torch.randn(2, 4, 6, generator=generator)
    assert distillation_loss(student, teacher, temperature=1.0) > 0


def test_distillation_loss_ignores_a_constant_shift_of_the_logits():
    generator = torch.Generator().manual_seed(2)
    student, teacher = torch.randn(2, 4, 6, generator=generator), torch.randn(2, 4, 6, generator=generator)
    assert distillation_loss(student + 3.0, teacher, 2.0).item() == pytest.approx(
        distillation_loss(student, teacher, 2.0).item(), rel=1e-5
    )


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_distillation_loss_is_kl_teacher_student_of_softened_distributions_times_t_squared(temperature):
    generator = torch.Generator().manual_seed(3)
    student, teacher = torch.randn(2, 3, 5, generator=generator), torch.randn(2, 3, 5, generator=generator)
    p_teacher = F.softmax(teacher / temperature, dim=-1)
    p_student = F.softmax(student / temperature, dim=-1)
    kl = (p_teacher * (p_teacher.log() - p_student.log())).sum(-1)  # per position, KL(teacher || student)
    expected = kl.mean() * temperature**2
    assert distillation_loss(student, teacher, temperature).item() == pytest.approx(expected.item(), rel=1e-5)
    # torch's own KL: "batchmean" divides the sum by the first dim (2) only, so ÷ 3 more for the mean per position.
    reference = F.kl_div(F.log_softmax(student / temperature, -1), p_teacher, reduction="batchmean")
    assert expected.item() == pytest.approx(reference.item() / 3 * temperature**2, rel=1e-5)


def test_distillation_loss_is_not_symmetric():
    student = torch.tensor([[4.0, 0.0, 0.0]])
    teacher = torch.tensor([[1.0, 1.0, 0.0]])
    forward = distillation_loss(student, teacher, 1.0).item()
    p, q = F.softmax(teacher, -1), F.softmax(student, -1)
    assert forward == pytest.approx((p * (p / q).log()).sum().item(), rel=1e-5)
    assert forward != pytest.approx(distillation_loss(teacher, student, 1.0).item(), rel=1e-3)


def test_distillation_loss_mask_means_over_the_selected_positions_only():
    generator = torch.Generator().manual_seed(4)
    student, teacher = torch.randn(2, 4, 6, generator=generator), torch.randn(2, 4, 6, generator=generator)
    mask = torch.tensor([[True, True, False, False], [True, False, False, False]])
    loss = distillation_loss(student, teacher, 2.0, mask)
    expected = distillation_loss(student[mask], teacher[mask], 2.0)  # the 3 kept positions, unmasked
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    changed_student, changed_teacher = student.clone(), teacher.clone()
    changed_student[~mask] = torch.randn(5, 6, generator=generator) * 10
    changed_teacher[~mask] = torch.randn(5, 6, generator=generator) * 10
    assert distillation_loss(changed_student, changed_teacher, 2.0, mask).item() == pytest.approx(loss.item(), rel=1e-6)
    assert distillation_loss(changed_student, changed_teacher, 2.0).item() != pytest.approx(loss.item(), rel=1e-3)


def test_distillation_loss_with_nothing_selected_is_zero():
    student, teacher = torch.randn(1, 3, 4), torch.randn(1, 3, 4)
    assert distillation_loss(student, teacher, 2.0, torch.zeros(1, 3, dtype=torch.bool)).item() == 0.0


def test_distillation_loss_gradient_reaches_the_student():
    student = torch.randn(2, 5, requires_grad=True)
    teacher = torch.randn(2, 5)
    distillation_loss(student, teacher, 2.0).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------- make_task


def test_make_task_defaults():
    qa = make_task("question-answering")
    assert isinstance(qa, QuestionAnsweringTask)
    assert (qa.max_length, qa.stride, qa.n_best, qa.max_answer_tokens, qa.eval_batch_size) == (384, 128, 20, 30, 32)
    assert qa.headline_metric == "f1"
    summarization = make_task("summarization")
    assert isinstance(summarization, SummarizationTask)
    assert (summarization.max_source_tokens, summarization.max_target_tokens, summarization.num_beams) == (512, 128, 4)
    assert summarization.eval_batch_size == 8
    assert summarization.headline_metric == "rougeLsum"


def test_make_task_applies_given_settings_and_keeps_defaults_for_unset_ones():
    qa = make_task("question-answering", max_length=256, stride=64, n_best=None)
    assert (qa.max_length, qa.stride, qa.n_best) == (256, 64, 20)
    summarization = make_task("summarization", num_beams=2, max_target_tokens=None)
    assert (summarization.num_beams, summarization.max_target_tokens) == (2, 128)


def test_make_task_unknown_name_lists_known_tasks():
    with pytest.raises(UnsupportedModelError, match=r"'translation'.*question-answering, summarization"):
        make_task("translation")


def test_make_task_rejects_a_setting_the_task_does_not_have():
    with pytest.raises(UnsupportedModelError, match=r"summarization has no setting stride"):
        make_task("summarization", stride=128)
    with pytest.raises(UnsupportedModelError, match=r"question-answering has no setting num_beams"):
        make_task("question-answering", num_beams=4)


def test_make_task_passes_invalid_values_to_the_task_checks():
    with pytest.raises(DataError, match="stride"):
        make_task("question-answering", max_length=128, stride=200)


def test_generation_never_repeats_an_ngram_of_the_configured_size(bpe_tokenizer):
    from tests.factories import tiny_bart

    model = tiny_bart(vocab_size=len(bpe_tokenizer), max_positions=160)
    articles = ["The council met on Monday and voted to build a new bridge over the river."]
    for size in (1, 2):
        task = SummarizationTask(max_source_tokens=64, max_target_tokens=20, num_beams=2, no_repeat_ngram_size=size)
        generated = model.generate(
            **bpe_tokenizer(articles, return_tensors="pt"), num_beams=2, max_new_tokens=20, no_repeat_ngram_size=size
        )
        summary = task.generate(model, bpe_tokenizer, articles, progress=False)[0]
        assert summary == bpe_tokenizer.decode(generated[0], skip_special_tokens=True).strip()
        ids = [i for i in generated[0].tolist() if i not in bpe_tokenizer.all_special_ids]
        ngrams = [tuple(ids[i : i + size]) for i in range(len(ids) - size + 1)]
        assert len(ngrams) == len(set(ngrams)), summary
