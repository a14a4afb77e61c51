"""Logging one step late (runner.train.async_log), on CPU with TRL's trainer and the tiny
GPT-OSS: the rows, the Trainer's log history and its final loss are those synchronous logging
writes, checkpoints hold every row up to their step, and CPU training logs synchronously unless
asked."""

from __future__ import annotations

import json

import pytest
from test_training_lean_loss import ROWS, _trainer, tokenizer  # noqa: F401  (fixture)

from runner.registry import StepContext
from runner.train import async_log, lean_loss
from runner.train.train_metrics import StepClock, metrics_callback, read_metrics

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _run(tokenizer, tmp_path, deferred: bool, **config):  # noqa: F811
    trainer = _trainer(tokenizer, tmp_path, max_steps=4, gradient_accumulation_steps=1,
                       **config)
    lean_loss.install(trainer, 0.0)
    ctx = StepContext(recipe_name="t", step="training", key="k", settings={}, sections={},
                      inputs={}, out_dir=tmp_path, run_dir=tmp_path, cache_dir=tmp_path,
                      quiet=True)
    clock = StepClock()
    metrics = tmp_path / "metrics.jsonl"
    trainer.add_callback(metrics_callback(metrics, ctx, clock=clock))
    done = async_log.install(trainer, clock, force=True) if deferred else None
    output = trainer.train()
    return trainer, [row for row in read_metrics(metrics) if "loss" in row], output, done


STEADY = ("step", "epoch", "loss", "grad_norm", "learning_rate", "tokens_seen")


def test_deferred_rows_are_the_rows_synchronous_logging_writes(tokenizer, tmp_path):  # noqa: F811
    plain, plain_rows, plain_out, _ = _run(tokenizer, tmp_path / "sync", deferred=False)
    late, late_rows, late_out, done = _run(tokenizer, tmp_path / "late", deferred=True)
    assert done["logging"] == "deferred one step"
    assert [r["step"] for r in late_rows] == [1, 2, 3, 4]
    for a, b in zip(plain_rows, late_rows, strict=True):
        assert {k: b[k] for k in STEADY} == {k: a[k] for k in STEADY}     # bit for bit
    assert late.state.log_history[:-1] == plain.state.log_history[:-1]
    assert late_out.training_loss == plain_out.training_loss
    # Each row has its own step's token count (the sampler shuffles rows; all 8 by the end).
    tokens = [r["tokens_seen"] for r in late_rows]
    assert tokens == sorted(set(tokens)) and tokens[-1] == sum(len(r["input_ids"]) for r in ROWS)


def test_a_checkpoint_holds_every_row_up_to_its_step(tokenizer, tmp_path):  # noqa: F811
    _run(tokenizer, tmp_path, deferred=True, save_strategy="steps", save_steps=3)
    state = json.loads((tmp_path / "checkpoint-3" / "trainer_state.json").read_text())
    assert [row["step"] for row in state["log_history"] if "loss" in row] == [1, 2, 3]


def test_cpu_training_logs_synchronously_and_says_why(tokenizer, tmp_path):  # noqa: F811
    trainer = _trainer(tokenizer, tmp_path)
    before = trainer._maybe_log_save_evaluate
    done = async_log.install(trainer, StepClock())
    assert done == {"logging": "synchronous", "why": "not on CUDA: nothing runs ahead of the host"}
    assert trainer._maybe_log_save_evaluate == before
