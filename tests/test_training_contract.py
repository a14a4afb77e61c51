"""The MoE training contract refuses, clearly, before or at the first step: a LoRA target that
matches nothing, expert LoRA that gets no gradient, a loss that is not the masked cross-entropy,
a router auxiliary-loss coefficient other than the recipe's (and what TRL 1.15 does with it)."""

from __future__ import annotations

import json

import pytest
from training_helpers import fast_training, make_ctx, run_step, tiny_lora, tiny_model

from runner.errors import StepError
from runner.train.contract import (
    first_step_callback,
    loss_check_wrapper,
    router_aux_in_effect,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_a_lora_target_that_matches_nothing_stops_before_training(tmp_path):
    ctx = make_ctx(tmp_path, fast_training(max_steps=2),
                   lora=tiny_lora(target_modules=["q_proj", "qkv_proj"]))
    with pytest.raises(StepError, match=r"\['qkv_proj'\] match no module") as error:
        run_step(ctx)
    assert "q_proj" in str(error.value)          # says where the adapters did go
    assert not (ctx.out_dir / "adapter").exists() and not (ctx.out_dir / "summary.json").exists()


def test_expert_lora_that_the_forward_bypasses_stops_after_the_first_step(tmp_path, monkeypatch):
    """unsloth#3405's trap: the MoE forward calls the experts under PEFT's wrapper, so the expert
    LoRA is attached (and counted) but never used."""
    from transformers.models.gpt_oss.modeling_gpt_oss import GptOssMLP

    def bypassing_forward(self, hidden_states):
        batch, length, width = hidden_states.shape
        flat = hidden_states.reshape(-1, width)
        _, scores, indices = self.router(flat)
        experts = self.experts.get_base_layer() if hasattr(self.experts, "get_base_layer") \
            else self.experts
        return experts(flat, indices, scores).reshape(batch, length, width), scores

    monkeypatch.setattr(GptOssMLP, "forward", bypassing_forward)
    # the library's forward (the runner's grouped one reads the LoRA factors itself)
    ctx = make_ctx(tmp_path, fast_training(max_steps=3, moe_forward="library"))
    with pytest.raises(StepError, match="have no gradient") as error:
        run_step(ctx)
    message = str(error.value)
    assert all(name in message for name in ("gate_proj", "up_proj", "down_proj"))
    assert "q_proj" not in message


def test_the_router_aux_coefficient_in_effect_is_recorded_and_in_the_checked_loss(tmp_path):
    ctx = make_ctx(tmp_path, fast_training(max_steps=1, router_aux_loss_coef=0.05))
    metrics = run_step(ctx)          # the step's metrics are what manifest.json records
    assert metrics["router_aux_loss_coef"] == 0.05
    contract = json.loads((ctx.out_dir / "summary.json").read_text())["contract"]
    assert contract["router_aux_loss_coef"] == 0.05
    check = contract["loss_check"]
    assert check["aux_added"] > 0 and check["relative_difference"] < 1e-4
    assert contract["targets"]["gate_proj"] == 2 and contract["first_step_max_grad"]["down_proj"] > 0


# --- TRL 1.15 and router_aux_loss_coef ---------------------------------------------------------

def _trainer(model, tokenizer, tmp_path, **config):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from runner.train.train_hf import install_logprob_fallback

    install_logprob_fallback()
    rows = [{"input_ids": list(range(3, 40 + i)), "labels": [-100] * 10 + list(range(13, 40 + i))}
            for i in range(4)]
    args = SFTConfig(output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=1,
                     report_to="none", use_cpu=True, disable_tqdm=True, save_strategy="no",
                     logging_steps=1, **config)
    return SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                      processing_class=tokenizer)


@pytest.fixture(scope="module")
def tokenizer():
    from runner.models import load_tokenizer
    return load_tokenizer(tiny_model())


def _tiny(tokenizer, family="gpt_oss", **config):
    import torch
    from transformers import AutoModelForCausalLM

    from runner.tiny_model import model_config

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(model_config(family, tokenizer, **config))


def test_trl_falls_back_to_the_model_configs_coefficient_and_we_refuse_it(tokenizer, tmp_path):
    """TRL 1.15 (SFTTrainer.__init__): router_aux_loss_coef=None takes the model config's value
    (gpt-oss-20b ships 0.9) and switches output_router_logits on whenever it is not 0."""
    model = _tiny(tokenizer, router_aux_loss_coef=0.9)
    trainer = _trainer(model, tokenizer, tmp_path, router_aux_loss_coef=None)
    assert trainer.aux_loss_enabled and trainer.router_aux_loss_coef == 0.9
    assert model.config.output_router_logits is True
    with pytest.raises(StepError, match="weight the router auxiliary loss by 0.9"):
        router_aux_in_effect(trainer, {"router_aux_loss_coef": 0.0})


def test_trl_turns_the_aux_loss_off_for_an_explicit_zero(tokenizer, tmp_path):
    model = _tiny(tokenizer, router_aux_loss_coef=0.9, output_router_logits=True)
    trainer = _trainer(model, tokenizer, tmp_path, router_aux_loss_coef=0.0)
    assert not trainer.aux_loss_enabled and model.config.output_router_logits is False
    assert model.config.router_aux_loss_coef == 0.0
    assert router_aux_in_effect(trainer, {"router_aux_loss_coef": 0.0}) == 0.0


def test_trl_refuses_an_aux_coefficient_for_a_dense_model(tokenizer, tmp_path):
    model = _tiny(tokenizer, "llama")
    with pytest.raises(ValueError, match="not a Mixture-of-Experts"):
        _trainer(model, tokenizer, tmp_path, router_aux_loss_coef=0.05)
    assert router_aux_in_effect(_trainer(model, tokenizer, tmp_path, router_aux_loss_coef=0.0),
                                {"router_aux_loss_coef": 0.0}) == 0.0


def test_a_trainer_loss_that_is_not_the_masked_cross_entropy_stops_the_first_step(tokenizer,
                                                                                   tmp_path):
    """TRL's DFT loss reweights every token by its probability: a real objective, not ours."""
    trainer = _trainer(_tiny(tokenizer), tokenizer, tmp_path, loss_type="dft",
                       router_aux_loss_coef=0.0)
    record: dict = {}
    loss_check_wrapper(trainer, record, 0.0)
    trainer.add_callback(first_step_callback({}, record))
    with pytest.raises(StepError, match="not the masked cross-entropy"):
        trainer.train()
    same = _trainer(_tiny(tokenizer), tokenizer, tmp_path, router_aux_loss_coef=0.0)
    record = {}
    loss_check_wrapper(same, record, 0.0)
    same.train()
    assert record["loss_check"]["relative_difference"] < 1e-4
