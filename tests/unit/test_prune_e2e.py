"""Tiny end-to-end runs of movement pruning: BERT QA and BART summarization, built and trained here."""

import json

import pytest
import torch

from blockserve.cli import main
from pruning.artifacts.checkpoint import load_checkpoint, save_compact
from pruning.artifacts.compact import compact_model
from pruning.methods.movement.pruner import MovementPruner, MovementSettings
from pruning.methods.training import Trainer, TrainSettings
from pruning.tasks import make_task
from pruning.tasks.options import TaskOptions
from tests.factories import _CORPUS


def _train_with_masks(model, tokenizer, task, data_file, settings, workdir, steps=8):
    features = task.train_features(tokenizer, task.load(data_file))
    train = TrainSettings(max_steps=steps, batch_size=4, learning_rate=1e-3, distill_alpha=0.5, log_every=2)
    teacher = load_checkpoint(workdir.parent / "teacher").model if (workdir.parent / "teacher").exists() else None
    pruner = MovementPruner.attach(model, settings, steps)
    Trainer(model, tokenizer, task, features, train, workdir, pruner=pruner, teacher=teacher).train()
    pruner.update(steps)
    return pruner


def test_tiny_bert_movement_pruning_end_to_end(dense_bert_dir, squad_file, tmp_path):
    checkpoint = load_checkpoint(dense_bert_dir)
    model, tokenizer = checkpoint.model, checkpoint.tokenizer()
    task = make_task("question-answering", max_length=48, stride=16)
    settings = MovementSettings(block="head", target_density=0.25, warmup_fraction=0.0, hold_fraction=0.25)
    pruner = _train_with_masks(model, tokenizer, task, squad_file, settings, tmp_path / "run")

    for group in pruner.groups.values():
        assert group.density() == pytest.approx(0.25, abs=0.02)
    inputs = tokenizer("Where is Fresno?", _CORPUS[1], return_tensors="pt")
    model.eval()
    with torch.no_grad():
        masked = model(**inputs)
    plan = pruner.plan()
    pruner.detach()
    compact_model(model, plan)
    save_compact(model, plan, tmp_path / "compact", source=str(dense_bert_dir), tokenizer=tokenizer)

    reloaded = load_checkpoint(tmp_path / "compact")
    summary = plan.summary()["encoder"]
    assert summary.heads_kept < summary.heads_total
    assert summary.ffn_units_kept == pytest.approx(0.25 * summary.ffn_units_total, abs=2)
    assert reloaded.model.bert.encoder.layer[0].intermediate.dense.out_features < 64
    with torch.no_grad():
        compact = reloaded.model(**inputs)
    assert torch.allclose(masked.start_logits, compact.start_logits, atol=1e-5)
    assert torch.allclose(masked.end_logits, compact.end_logits, atol=1e-5)
    history = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    assert history[-1]["density"] == pytest.approx(0.25, abs=0.02)


def test_prune_cli_writes_compact_checkpoint_with_method_and_evaluation(dense_bert_dir, squad_file, tmp_path, capsys):
    out = tmp_path / "pruned"
    code = main(
        ["prune", "--teacher", str(dense_bert_dir), "--train", str(squad_file), "--eval", str(squad_file),
         "--out", str(out), "--block", "head", "--target-density", "0.25", "--max-steps", "6", "--batch-size", "4",
         "--max-length", "48", "--stride", "16", "--fill-steps", "2", "--eval-limit", "8", "--log-every", "2",
         "--lr", "1e-3"]
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "heads" in printed and "teacher" in printed and "filled" in printed
    manifest = json.loads((out / "blockserve.json").read_text())
    assert manifest["method"]["name"] == "movement" and manifest["method"]["hybrid_filled"] is True
    assert manifest["method"]["final_density"] == pytest.approx(0.25, abs=0.02)
    assert manifest["method"]["settings"]["masks"]["block"] == "head"
    assert manifest["method"]["prune_steps"] == 6 and manifest["method"]["fill_steps"] == 2
    evaluation = manifest["evaluation"]
    assert evaluation["result"] == "filled" and evaluation["filled"]["n"] == 8
    assert {"f1", "exact_match"} <= set(evaluation["teacher"]) and {"f1", "exact_match"} <= set(evaluation["pruned"])
    assert manifest["stats"]["params"] < manifest["stats"]["params_dense"]
    assert (out / "history.jsonl").is_file() and (out / "training.png").stat().st_size > 0
    stages = {json.loads(line)["stage"] for line in (out / "history.jsonl").read_text().splitlines()}
    assert stages == {"prune", "fill"}
    # The result loads and evaluates like any checkpoint.
    assert main(["evaluate", "--model", str(out), "--data", str(squad_file), "--max-length", "48", "--stride", "16",
                 "--json", str(tmp_path / "eval.json"), "--predictions", str(tmp_path / "pred.json")]) == 0  # fmt: skip
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["task"] == "question-answering" and result["n"] == 20 and 0.0 <= result["f1"] <= 100.0
    predictions = json.loads((tmp_path / "pred.json").read_text())
    assert len(predictions) == 20 and all(isinstance(text, str) for text in predictions.values())


def test_tiny_bart_prunes_heads_of_all_three_attention_kinds(summarizer_dir, summaries_file, tmp_path):
    from pruning.methods.movement.pipeline import MovementJob, prune_movement

    job = MovementJob(
        teacher=str(summarizer_dir), train=summaries_file, eval=summaries_file, out=tmp_path / "bart",
        masks=MovementSettings(block="head", target_density=0.25, warmup_fraction=0.0, hold_fraction=0.25),
        train_run=TrainSettings(max_steps=8, batch_size=2, learning_rate=1e-3, log_every=2),
        fill_steps=2,
        task_options=TaskOptions(max_source_tokens=96, max_target_tokens=12, num_beams=2),
        eval_limit=2,
    )  # fmt: skip
    manifest = prune_movement(job)
    plan = manifest.plan
    for stack, block in (("encoder", "self_attn"), ("decoder", "self_attn"), ("decoder", "cross_attn")):
        kept = sum(len(layer.heads[block]) for layer in plan.stacks[stack].layers)
        assert kept < 8, f"{stack} {block} kept all heads"
    assert set(manifest.evaluation.filled.metrics()) == {"rouge1", "rouge2", "rougeL", "rougeLsum"}
    from pruning.tasks.evaluate import EvaluateJob, evaluate_checkpoint

    options = TaskOptions(max_source_tokens=96, max_target_tokens=6, num_beams=1)
    predictions = tmp_path / "summaries.jsonl"
    job = EvaluateJob(
        model=str(tmp_path / "bart"), data=summaries_file, limit=3, task_options=options, predictions=predictions
    )
    result = evaluate_checkpoint(job)
    assert result.n == 3 and result.task == "summarization" and result.data == str(summaries_file)
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert [row["id"] for row in rows] == ["0", "1", "2"] and all(isinstance(row["summary"], str) for row in rows)
    reloaded = load_checkpoint(tmp_path / "bart")
    ids = torch.tensor([[0, 50, 60, 70, 2]])
    generated = reloaded.model.generate(input_ids=ids, max_new_tokens=5, num_beams=1)
    assert generated.shape[1] >= 2


def test_resume_after_the_pruning_stage_skips_it(dense_bert_dir, squad_file, tmp_path, monkeypatch):
    import pruning.methods.movement.pipeline as prune_module
    from pruning.methods.movement.pipeline import MovementJob, prune_movement

    job = MovementJob(
        teacher=str(dense_bert_dir), train=squad_file, eval=squad_file, out=tmp_path / "a",
        masks=MovementSettings(block="head", target_density=0.5, warmup_fraction=0.0),
        train_run=TrainSettings(max_steps=4, batch_size=4, learning_rate=1e-3),
        fill_steps=2,
        task_options=TaskOptions(max_length=48, stride=16),
        eval_limit=4,
        evaluate_teacher=False,
    )  # fmt: skip
    first = prune_movement(job)

    def must_not_run(*args, **kwargs):
        raise AssertionError("the pruning stage ran again")

    monkeypatch.setattr(prune_module, "_prune_stage", must_not_run)
    again = prune_movement(job.model_copy(update={"resume": True}))
    assert again.plan == first.plan and again.plan.digest() == first.plan.digest()
    assert again.method.prune_steps == 4 and again.evaluation.pruned == first.evaluation.pruned
    # Without --resume, the work directory starts over (and so the pruning stage runs).
    with pytest.raises(AssertionError, match="ran again"):
        prune_movement(job)
