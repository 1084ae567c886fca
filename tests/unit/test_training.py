import json

import pytest
import torch
from torch import nn

from pruning.core.errors import TrainingError
from pruning.methods.movement.pruner import MovementPruner, MovementSettings
from pruning.methods.training import Trainer, TrainSettings, _batch_indices, hidden_state_loss
from pruning.tasks import make_task
from tests.factories import tiny_bert


def _no_dropout(model):
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    model.config.attention_probs_dropout_prob = 0.0
    return model


@pytest.fixture
def qa_setup(wordpiece_tokenizer):
    task = make_task("question-answering", max_length=48, stride=16)
    contexts = [
        "Fresno is a major city in the San Joaquin Valley of California.",
        "The Apollo program was carried out by NASA between 1961 and 1972.",
    ]
    features = []
    for index, context in enumerate(contexts * 4):
        answer = context.split()[2]
        features.append({"question": "What?", "context": context, "answer": answer, "index": index})
    from pruning.tasks.qa import QAExample

    examples = [
        QAExample(str(i), f["question"], f["context"], (f["answer"],), (f["context"].index(f["answer"]),))
        for i, f in enumerate(features)
    ]
    return task, task.train_features(wordpiece_tokenizer, examples)


def _trainer(model, tokenizer, task, features, workdir, **settings):
    defaults = {"max_steps": 6, "batch_size": 2, "learning_rate": 1e-3, "save_every": 3, "log_every": 1}
    pruner = MovementPruner.attach(model, MovementSettings(block="8x8", target_density=0.5), 6)
    return Trainer(model, tokenizer, task, features, TrainSettings(**{**defaults, **settings}), workdir, pruner=pruner)


def test_batches_cover_each_epoch_once_in_a_seeded_order():
    first_epoch = sorted(i for step in range(4) for i in _batch_indices(step, 10, 3, seed=1))
    assert first_epoch == list(range(10))
    assert _batch_indices(0, 10, 3, seed=1) == _batch_indices(0, 10, 3, seed=1)
    epoch_one = [_batch_indices(step, 10, 3, seed=1) for step in range(4)]
    epoch_two = [_batch_indices(step, 10, 3, seed=1) for step in range(4, 8)]
    assert epoch_one != epoch_two  # each epoch reshuffles
    assert sorted(i for step in range(4, 8) for i in _batch_indices(step, 10, 3, seed=1)) == list(range(10))


def test_length_grouping_pads_less_and_still_covers_each_epoch_once():
    lengths = [int(n) for n in torch.randint(20, 384, (400,), generator=torch.Generator().manual_seed(0))]

    def padded(step_lengths):
        return sum(
            len(batch) * max(lengths[i] for i in batch)
            for batch in (_batch_indices(step, 400, 16, 3, step_lengths) for step in range(25))
        )

    assert sorted(i for step in range(25) for i in _batch_indices(step, 400, 16, 3, lengths)) == list(range(400))
    assert padded(lengths) < 0.7 * padded(None)  # random batches pad to ~1.5× here, grouped ones to ~1.0×
    assert _batch_indices(7, 400, 16, 3, lengths) == _batch_indices(7, 400, 16, 3, lengths)  # resumable
    first = [_batch_indices(step, 400, 16, 3, lengths) for step in range(25)]
    assert [min(lengths[i] for i in batch) for batch in first] != sorted(min(lengths[i] for i in b) for b in first)


def test_scores_get_their_own_learning_rate(qa_setup, wordpiece_tokenizer, tmp_path):
    task, features = qa_setup
    model = tiny_bert(vocab_size=len(wordpiece_tokenizer))
    trainer = _trainer(model, wordpiece_tokenizer, task, features, tmp_path, score_learning_rate=0.05)
    weights, scores = trainer.optimizer.param_groups
    assert scores["lr"] == pytest.approx(0.05 * trainer.scheduler.lr_lambdas[0](0))
    assert {id(p) for p in scores["params"]} == trainer.pruner.score_parameter_ids()
    assert not {id(p) for p in weights["params"]} & trainer.pruner.score_parameter_ids()


def test_resume_continues_where_an_interrupted_run_stopped(qa_setup, wordpiece_tokenizer, tmp_path, monkeypatch):
    task, features = qa_setup
    uninterrupted = _no_dropout(tiny_bert(vocab_size=len(wordpiece_tokenizer)))
    _trainer(uninterrupted, wordpiece_tokenizer, task, features, tmp_path / "a").train()

    interrupted = _no_dropout(tiny_bert(vocab_size=len(wordpiece_tokenizer)))
    trainer = _trainer(interrupted, wordpiece_tokenizer, task, features, tmp_path / "b")
    original_loss = Trainer._loss

    def crash_at_step_4(self, batch):
        if self.step == 4:
            raise KeyboardInterrupt
        return original_loss(self, batch)

    monkeypatch.setattr(Trainer, "_loss", crash_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    monkeypatch.setattr(Trainer, "_loss", original_loss)

    resumed_model = _no_dropout(tiny_bert(vocab_size=len(wordpiece_tokenizer), seed=7))  # other init: state must win
    resumed = _trainer(resumed_model, wordpiece_tokenizer, task, features, tmp_path / "b")
    result = resumed.train(resume=True)
    assert result.steps == 6
    state = json.loads((tmp_path / "b" / "state" / "trainer_state.json").read_text())
    assert state["step"] == 3
    for (name, expected), actual in zip(
        uninterrupted.state_dict().items(), resumed_model.state_dict().values(), strict=True
    ):
        assert torch.allclose(expected, actual, atol=1e-6), name


def test_resume_refuses_state_of_other_settings(qa_setup, wordpiece_tokenizer, tmp_path):
    task, features = qa_setup
    model = tiny_bert(vocab_size=len(wordpiece_tokenizer))
    trainer = _trainer(model, wordpiece_tokenizer, task, features, tmp_path)
    trainer.save_state()
    other = _trainer(tiny_bert(vocab_size=len(wordpiece_tokenizer)), wordpiece_tokenizer, task, features, tmp_path,
                     learning_rate=5e-4)  # fmt: skip
    with pytest.raises(TrainingError, match="other settings"):
        other.train(resume=True)


def test_distillation_and_regularisation_enter_the_loss(qa_setup, wordpiece_tokenizer, tmp_path):
    task, features = qa_setup
    teacher = tiny_bert(vocab_size=len(wordpiece_tokenizer), seed=1)
    student = tiny_bert(vocab_size=len(wordpiece_tokenizer), seed=2)
    pruner = MovementPruner.attach(student, MovementSettings(block="8x8", lambda_attention=1.0), 4)
    settings = TrainSettings(max_steps=4, batch_size=2, log_every=1, distill_alpha=0.9)
    Trainer(student, wordpiece_tokenizer, task, features, settings, tmp_path, teacher=teacher, pruner=pruner).train()
    entries = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    last = entries[-1]
    assert last["distill_loss"] > 0 and last["regularization"] > 0
    expected = 0.1 * last["task_loss"] + 0.9 * last["distill_loss"] + last["regularization"]
    assert last["loss"] == pytest.approx(expected, rel=1e-3)
    assert not teacher.training  # the teacher stays in eval mode


def test_hidden_state_distillation_enters_the_loss_and_vanishes_on_the_teacher_itself(
    qa_setup, wordpiece_tokenizer, tmp_path
):
    task, features = qa_setup
    teacher = _no_dropout(tiny_bert(vocab_size=len(wordpiece_tokenizer), seed=1))
    student = tiny_bert(vocab_size=len(wordpiece_tokenizer), seed=2)
    settings = TrainSettings(max_steps=2, batch_size=2, log_every=1, distill_alpha=0.5, distill_hidden=3.0)
    Trainer(student, wordpiece_tokenizer, task, features, settings, tmp_path, teacher=teacher).train()
    last = json.loads((tmp_path / "history.jsonl").read_text().splitlines()[-1])
    assert last["hidden_loss"] > 0
    expected = 0.5 * last["task_loss"] + 0.5 * last["distill_loss"] + 3.0 * last["hidden_loss"]
    assert last["loss"] == pytest.approx(expected, rel=1e-3)

    batch = task.collate(wordpiece_tokenizer, features[:2])
    with torch.no_grad():
        same = teacher(**batch, output_hidden_states=True)
        assert float(hidden_state_loss(same, same, batch["attention_mask"])) == 0.0
        other = student.eval()(**batch, output_hidden_states=True)
        assert float(hidden_state_loss(other, same, batch["attention_mask"])) > 0.0


def test_timing_a_step_leaves_the_weights_and_gradients_as_they_were(qa_setup, wordpiece_tokenizer, tmp_path):
    task, features = qa_setup
    teacher = tiny_bert(vocab_size=len(wordpiece_tokenizer), seed=1)
    student = tiny_bert(vocab_size=len(wordpiece_tokenizer), seed=2)
    before = {name: p.detach().clone() for name, p in student.named_parameters()}
    trainer = Trainer(
        student, wordpiece_tokenizer, task, features, TrainSettings(max_steps=1), tmp_path, teacher=teacher
    )
    assert trainer.seconds_per_step(features[:2]) > 0
    assert all(torch.equal(p, before[name]) and p.grad is None for name, p in student.named_parameters())
    assert not student.training and not (tmp_path / "history.jsonl").exists()


def test_settings_count_steps_from_epochs():
    assert TrainSettings(epochs=2, batch_size=4).total_steps(10) == 6
    assert TrainSettings(epochs=0.5, batch_size=4).total_steps(10) == 2
    assert TrainSettings(max_steps=7).total_steps(10) == 7


def test_threshold_mode_prunes_through_the_regulariser(qa_setup, wordpiece_tokenizer, tmp_path):
    task, features = qa_setup
    model = tiny_bert(vocab_size=len(wordpiece_tokenizer))
    settings = MovementSettings(
        block="8x8", mode="threshold", final_threshold=0.4, lambda_attention=0.1, lambda_ffn=0.1,
        warmup_fraction=0.0, hold_fraction=0.3,
    )  # fmt: skip
    pruner = MovementPruner.attach(model, settings, 20)
    train = TrainSettings(max_steps=20, batch_size=2, score_learning_rate=0.1, warmup_fraction=0.0, log_every=5)
    Trainer(model, wordpiece_tokenizer, task, features, train, tmp_path, pruner=pruner).train()
    pruner.update(20)
    without_regulariser = tiny_bert(vocab_size=len(wordpiece_tokenizer))
    free = MovementPruner.attach(
        without_regulariser, settings.model_copy(update={"lambda_attention": 0.0, "lambda_ffn": 0.0}), 20
    )
    Trainer(without_regulariser, wordpiece_tokenizer, task, features, train, tmp_path / "free", pruner=free).train()
    free.update(20)
    # The regulariser drives the density down beyond what movement alone prunes (here ≈ 0.24 vs 0.68).
    assert 0.0 < pruner.density() < free.density() - 0.2


@pytest.mark.parametrize(
    ("seconds_per_step", "slower_after", "expected_steps"),
    [(2.0, None, 15), (0.5, None, 60), (0.5, 24, 42)],
)
def test_a_time_budget_replans_the_steps_from_the_measured_rate(
    qa_setup, wordpiece_tokenizer, tmp_path, monkeypatch, seconds_per_step, slower_after, expected_steps
):
    """Planned 40 steps for 30 s; the real rate, measured every 8 steps, decides how many fit — and the
    learning rate still decays to 0 at the last step the budget allows. In the third case the steps
    slow down to 1 s after step 24 (later batches are longer): the later re-plans follow the mean rate."""
    task, features = qa_setup
    clock = [100.0]
    original_loss = Trainer._loss

    def timed_loss(self, batch):
        clock[0] += 1.0 if slower_after is not None and self.step >= slower_after else seconds_per_step
        return original_loss(self, batch)

    monkeypatch.setattr(Trainer, "_loss", timed_loss)
    settings = TrainSettings(max_steps=40, batch_size=2, learning_rate=1e-3, log_every=1, save_every=1000)
    trainer = Trainer(tiny_bert(vocab_size=len(wordpiece_tokenizer)), wordpiece_tokenizer, task, features, settings,
                      tmp_path)  # fmt: skip
    trainer.clock = lambda: clock[0]
    result = trainer.train(deadline=clock[0] + 30.0)
    # 8 steps at the real rate, then (30 − 8 × rate) / rate more: 15 at 2 s (fewer), 60 at 0.5 s (more).
    assert result.steps == expected_steps == trainer.total_steps
    assert trainer.scheduler.get_last_lr()[0] == 0.0
    assert trainer.planned_steps == 40  # resumable state stays keyed to the plan
