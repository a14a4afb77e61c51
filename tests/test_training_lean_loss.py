"""The unsloth backend's lean training loss (runner.train.lean_loss), on CPU with TRL's trainer
and the tiny GPT-OSS: the same objective as TRL's compute_loss, the same token count, no
per-micro-batch host reads."""

from __future__ import annotations

import pytest
from training_helpers import tiny_model

from runner.train import lean_loss
from runner.train.contract import first_step_callback, loss_check_wrapper

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Rows of different lengths, so padding, the token count and the normalisation across
# gradient accumulation all matter.
ROWS = [{"input_ids": list(range(3, 30 + 7 * i)), "labels": [-100] * (5 + i) + list(range(8 + i, 30 + 7 * i))}
        for i in range(8)]


@pytest.fixture(scope="module")
def tokenizer():
    from runner.models import load_tokenizer
    return load_tokenizer(tiny_model())


def _trainer(tokenizer, tmp_path, **config):
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from runner.tiny_model import model_config
    from runner.train.train_hf import install_logprob_fallback

    install_logprob_fallback()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(model_config("gpt_oss", tokenizer))
    settings = dict(output_dir=str(tmp_path), per_device_train_batch_size=2,
                    gradient_accumulation_steps=2, max_steps=2, learning_rate=1e-3,
                    report_to="none", use_cpu=True, disable_tqdm=True, save_strategy="no",
                    logging_steps=1, seed=1, router_aux_loss_coef=0.0,
                    include_num_input_tokens_seen="non_padding", logging_nan_inf_filter=False)
    return SFTTrainer(model=model, args=SFTConfig(**{**settings, **config}),
                      train_dataset=Dataset.from_list(ROWS), processing_class=tokenizer)


def _losses(trainer) -> list[float]:
    return [row["loss"] for row in trainer.state.log_history if "loss" in row]


def test_the_lean_loss_trains_the_objective_trl_trains_and_counts_the_same_tokens(tokenizer,
                                                                                  tmp_path):
    trl = _trainer(tokenizer, tmp_path / "trl")
    trl.train()
    lean = _trainer(tokenizer, tmp_path / "lean")
    installed = lean_loss.install(lean, 0.0)
    record: dict = {}
    loss_check_wrapper(lean, record, 0.0)
    lean.add_callback(first_step_callback({}, record))
    lean.train()
    assert installed["loss"] == "model"
    assert record["loss_check"]["relative_difference"] < 1e-4
    assert _losses(lean) == pytest.approx(_losses(trl), rel=1e-4)
    assert len(_losses(lean)) == 2
    # Two optimizer steps of 2 x 2 rows: every row once; TRL pads, padding is not counted.
    assert lean.state.num_input_tokens_seen == trl.state.num_input_tokens_seen
    assert lean.state.num_input_tokens_seen == sum(len(row["input_ids"]) for row in ROWS)
    assert "mean_token_accuracy" in trl.state.log_history[0]
    assert "mean_token_accuracy" not in lean.state.log_history[0]


def test_the_token_count_reaches_the_state_only_when_it_is_read(tokenizer, tmp_path):
    trainer = _trainer(tokenizer, tmp_path, logging_steps=2)
    lean_loss.install(trainer, 0.0)
    seen = []

    from transformers import TrainerCallback

    class Watch(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            seen.append(state.num_input_tokens_seen)

    trainer.add_callback(Watch())
    trainer.train()
    # Step 1 logs nothing, so the device sum is not read; the last step reads all 8 rows.
    assert seen == [0, sum(len(row["input_ids"]) for row in ROWS)]


@pytest.mark.parametrize("config, coefficient, why", [
    ({"loss_type": "dft"}, 0.0, "loss_type dft"),
    ({}, 0.05, "router auxiliary loss"),
])
def test_trls_loss_stays_where_the_models_loss_would_differ(tokenizer, tmp_path, config,
                                                            coefficient, why):
    trainer = _trainer(tokenizer, tmp_path, **config)
    before = trainer.compute_loss
    installed = lean_loss.install(trainer, coefficient)
    assert installed["loss"] == "trl" and why in installed["why"]
    assert trainer.compute_loss == before
    assert trainer.args.include_num_input_tokens_seen == "non_padding"
