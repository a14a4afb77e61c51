"""Training settings without a model: SFTConfig mapping, device decisions, split, checkpoints,
the plain-torch loss kernel."""

from __future__ import annotations

import json

import pytest
from training_helpers import fast_training, section, tiny_lora, tiny_model

from runner.errors import StepError
from runner.train.train_common import (
    GPT_OSS_EXPERT_PARAMETERS,
    choose_backend,
    latest_checkpoint,
    lora_targets,
    plan_for,
    prepare_checkpoints,
    sft_config_kwargs,
    split_rows,
)
from runner.train.train_metrics import tensorboard_ready, trim_metrics

NOTEBOOK = dict(per_device_train_batch_size=2, gradient_accumulation_steps=4, warmup_steps=5,
                max_steps=60, learning_rate=2e-4, lr_scheduler_type="linear", optim="adamw_8bit",
                weight_decay=0.01, logging_steps=1, save_steps=20, seed=3407, fp16=True,
                report_to="none")


def test_notebook_settings_become_a_valid_sft_config(tmp_path):
    from trl import SFTConfig

    training = section("training", **NOTEBOOK)
    plan = plan_for(training, tiny_model(), "cpu")
    config = SFTConfig(**sft_config_kwargs(training, tiny_model(max_seq_length=1024), tiny_lora(),
                                           plan, output_dir=tmp_path, has_eval=False))
    for key in ("per_device_train_batch_size", "gradient_accumulation_steps", "max_steps",
                "learning_rate", "weight_decay", "logging_steps", "save_steps", "seed"):
        assert getattr(config, key) == NOTEBOOK[key], key
    assert config.warmup_steps == 5 and config.lr_scheduler_type.value == "linear"
    assert config.max_length == 1024 and config.router_aux_loss_coef == 0.0
    assert config.optim.value == "adamw_torch" and not config.fp16 and not config.bf16
    assert config.gradient_checkpointing and config.save_total_limit == 3
    assert config.eval_strategy.value == "no" and config.report_to == []
    assert any("adamw_8bit" in note for note in plan.notes)
    assert any("fp16: true ignored on CPU" in note for note in plan.notes)


def test_eval_split_and_padding_free_reach_the_config(tmp_path):
    training = fast_training(eval_fraction=0.2, eval_steps=7, padding_free=True)
    kwargs = sft_config_kwargs(training, tiny_model(), tiny_lora(use_gradient_checkpointing=False),
                               plan_for(training, tiny_model(), "cpu"), output_dir=tmp_path,
                               has_eval=True)
    assert kwargs["eval_strategy"] == "steps" and kwargs["eval_steps"] == 7
    # Our collator packs; TRL's own packing / padding-free (contaminated for GPT-OSS) stay off.
    assert not kwargs["padding_free"] and not kwargs["packing"] and kwargs["max_length"] == 256
    assert kwargs["gradient_checkpointing"] is False


def test_gpu_batches_are_pinned_and_copied_without_blocking(tmp_path):
    """A blocking copy of the next batch would wait for the GPU to finish the step before."""
    from trl import SFTConfig

    training = fast_training(optim="adamw_8bit")
    plan = plan_for(training, tiny_model(), "cuda", bf16_supported=True)
    kwargs = sft_config_kwargs(training, tiny_model(), tiny_lora(), plan, output_dir=tmp_path,
                               has_eval=False)
    assert kwargs["accelerator_config"] == {"non_blocking": True}
    assert kwargs["dataloader_pin_memory"] and kwargs["dataloader_num_workers"] > 0
    cpu = sft_config_kwargs(training, tiny_model(), tiny_lora(),
                            plan_for(training, tiny_model(), "cpu"), output_dir=tmp_path,
                            has_eval=False)
    assert "accelerator_config" not in cpu
    config = SFTConfig(**{**kwargs, "use_cpu": True, "bf16": False, "optim": "adamw_torch"})
    assert config.accelerator_config.non_blocking


@pytest.mark.parametrize("fp16, bf16, bf16_gpu, dtype, want, noted", [
    (None, None, True, "auto", "bf16", False),      # H100: bfloat16 weights, bf16 autocast
    (None, None, False, "auto", "fp16", False),     # T4: float16 weights
    (True, None, True, "auto", "bf16", True),       # the notebook's fp16 on a bf16 GPU
    (True, None, False, "auto", "fp16", False),     # the notebook on a T4, as written
    (None, True, True, "float16", "fp16", True),    # float16 weights cannot autocast to bf16
    (False, True, True, "float32", "bf16", False),
])
def test_gpu_mixed_precision_follows_the_weights(fp16, bf16, bf16_gpu, dtype, want, noted):
    plan = plan_for(fast_training(fp16=fp16, bf16=bf16, optim="adamw_8bit"),
                    tiny_model(dtype=dtype), "cuda", bf16_supported=bf16_gpu)
    assert (plan.fp16, plan.bf16) == (want == "fp16", want == "bf16")
    assert plan.optim == "adamw_8bit" and bool(plan.notes) == noted


def test_impossible_precision_is_an_error():
    with pytest.raises(StepError, match="both true"):
        plan_for(fast_training(fp16=True, bf16=True), tiny_model(), "cuda", bf16_supported=True)
    with pytest.raises(StepError, match="no bfloat16 support"):
        plan_for(fast_training(bf16=True), tiny_model(), "cuda", bf16_supported=False)


def test_split_is_seeded_disjoint_and_keeps_a_train_row():
    rows = [{"text": str(i)} for i in range(40)]
    train, held = split_rows(rows, 0.1, seed=3407)
    assert len(held) == 4 and len(train) == 36
    assert {r["text"] for r in train}.isdisjoint(r["text"] for r in held)
    assert split_rows(rows, 0.1, seed=3407) == (train, held)
    assert split_rows(rows, 0.1, seed=1)[1] != held
    assert split_rows(rows, 0.0, seed=1) == (rows, [])
    assert split_rows(rows[:2], 0.5, seed=1)[0] and split_rows(rows[:1], 0.5, seed=1)[1] == []


def test_gpt_oss_mlp_names_map_to_expert_parameters():
    lora = tiny_lora()
    modules, params, note = lora_targets(lora, "gpt_oss")
    assert modules == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert params == GPT_OSS_EXPERT_PARAMETERS and "fused" in note
    assert lora_targets(lora, "llama") == (lora["target_modules"], [], None)
    explicit = tiny_lora(target_parameters=["mlp.experts.down_proj"])
    assert lora_targets(explicit, "gpt_oss")[1] == ["mlp.experts.down_proj"]


def _checkpoint(root, step, complete=True):
    folder = root / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "adapter_model.safetensors").write_bytes(b"x")
    if complete:
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return folder


def test_resume_picks_the_latest_complete_checkpoint(tmp_path):
    root = tmp_path / "ckpt"
    _checkpoint(root, 4)
    latest = _checkpoint(root, 12)
    broken = _checkpoint(root, 16, complete=False)   # killed while saving
    assert latest_checkpoint(root) == (latest, [broken])
    logs = []
    assert prepare_checkpoints(root, resume=True, force=False, log=logs.append) == latest
    assert not broken.exists() and any("incomplete" in line for line in logs)
    assert prepare_checkpoints(root, resume=False, force=False, log=logs.append) is None
    assert not any(root.iterdir())
    _checkpoint(root, 4)
    assert prepare_checkpoints(root, resume=True, force=True, log=logs.append) is None


def test_metrics_of_a_resumed_run_keep_each_step_once(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(1, 9)))
    trim_metrics(path, 4)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3, 4]


def test_auto_picks_hf_without_a_gpu():
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert choose_backend() == ("hf", "no CUDA GPU")


def test_tensorboard_missing_is_a_clear_error():
    assert tensorboard_ready("none") is False
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(StepError, match="pip install tensorboard"):
            tensorboard_ready("tensorboard")
    else:
        assert tensorboard_ready("tensorboard") is True


@pytest.mark.parametrize("softcap", [None, 3.0])
def test_plain_torch_loss_head_matches_full_logits(softcap):
    import torch

    from runner.train.train_hf import TorchLogProbHead

    torch.manual_seed(0)
    hidden = torch.randn(7, 16, requires_grad=True)
    weight = torch.randn(50, 16, requires_grad=True)
    targets = torch.randint(0, 50, (7,))
    log_probs, entropy, _, mean, top1 = TorchLogProbHead.apply(
        hidden, weight, None, targets, 1.0, 4096, softcap, 1.0,
        ("log_probs", "entropy", "mean_logits", "is_top1"))
    logits = hidden @ weight.T
    if softcap:
        logits = softcap * torch.tanh(logits / softcap)
    reference = -torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    torch.testing.assert_close(log_probs, reference)
    probs = logits.softmax(-1)
    torch.testing.assert_close(entropy, -(probs * probs.log()).sum(-1))
    torch.testing.assert_close(mean, logits.mean(-1).detach())
    assert torch.equal(top1, logits.argmax(-1) == targets)
    (grad,) = torch.autograd.grad(log_probs.sum(), hidden)
    (want,) = torch.autograd.grad(reference.sum(), hidden)
    torch.testing.assert_close(grad, want)
