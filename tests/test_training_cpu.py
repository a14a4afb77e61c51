"""The training step on CPU with the tiny GPT-OSS: transformers + PEFT + TRL, for real."""

from __future__ import annotations

import json

import pytest
from training_helpers import (
    chat_settings,
    fast_training,
    make_ctx,
    read_jsonl,
    run_step,
    run_step_capturing_log,
    tiny_model,
    write_dataset,
)

from runner.chat.loss_mask import IGNORE, response_only_labels, tokenize_row
from runner.errors import StepError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One auto-backend run with an eval split, shared by the assertions below."""
    tmp = tmp_path_factory.mktemp("train")
    ctx = make_ctx(tmp, fast_training(backend="auto", eval_fraction=0.125, eval_steps=4))
    metrics, log = run_step_capturing_log(ctx)
    return ctx, metrics, log


def test_auto_chooses_hf_on_cpu_and_says_so(trained):
    ctx, metrics, log = trained
    assert metrics["backend"] == "hf"
    assert "backend auto: using hf (no CUDA GPU)" in log
    assert "adamw_8bit needs a CUDA GPU; using adamw_torch" in log


def test_loss_falls_and_the_curve_is_recorded(trained):
    ctx, metrics, _ = trained
    rows = read_jsonl(ctx.out_dir / "metrics.jsonl")
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 12 and metrics["steps"] == 12
    assert metrics["final_loss"] < metrics["first_loss"] - 0.2
    assert [r["step"] for r in rows if "eval_loss" in r] == [4, 8, 12]
    last = [r for r in rows if "loss" in r][-1]
    assert last["tokens_per_s"] > 0 and last["steps_per_s"] > 0 and last["peak_rss_gib"] > 0
    assert last["tokens_seen"] > 0


def test_summary_reports_throughput_memory_and_mask(trained):
    ctx, metrics, log = trained
    summary = json.loads((ctx.out_dir / "summary.json").read_text())
    assert summary["device"] == "CPU" and summary["optim"] == "adamw_torch"
    assert summary["train_rows"] == 21 and summary["eval_rows"] == 3
    assert 0 < summary["trainable_params"] < summary["total_params"]
    assert summary["tokens_per_s"] > 0 and summary["peak_rss_gib"] > 0
    assert summary["eval_loss"] == metrics["eval_loss"] is not None
    assert summary["mask"] == {"checked": True, "batches": 2, "rows": 4}
    assert "mask verified on 4 rows" in log
    assert summary["resumed_from_step"] is None


def test_eval_rows_are_held_out(trained):
    ctx, _, _ = trained
    held = read_jsonl(ctx.out_dir / "eval.jsonl")
    everything = read_jsonl(ctx.inputs["chat_template"] / "dataset.jsonl")
    assert len(held) == 3 and all(row in everything for row in held)


def test_adapter_loads_on_the_base_model_and_covers_the_experts(trained):
    import torch
    from peft import PeftModel

    from runner.models import load_model

    ctx, _, _ = trained
    adapter = ctx.out_dir / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert set(config["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert set(config["target_parameters"]) == {"mlp.experts.gate_up_proj", "mlp.experts.down_proj"}
    assert (adapter / "tokenizer_config.json").is_file()
    model = PeftModel.from_pretrained(load_model(tiny_model()), str(adapter))
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and any(torch.count_nonzero(p) for p in lora_b)   # trained away from init


def test_checkpoints_are_removed_once_the_adapter_is_saved(trained):
    ctx, _, _ = trained
    assert not (ctx.cache_dir / ctx.key[:16]).exists()


def test_padding_free_batches_are_verified_and_train(tmp_path):
    ctx = make_ctx(tmp_path, fast_training(padding_free=True, max_steps=3))
    metrics = run_step(ctx)
    summary = json.loads((ctx.out_dir / "summary.json").read_text())
    assert metrics["steps"] == 3 and summary["mask"]["rows"] == 4


def test_template_mask_rows_train_their_spans(tmp_path):
    ctx = make_ctx(tmp_path, fast_training(max_steps=2), chat=chat_settings(mask="template"))
    assert "trained_spans" in read_jsonl(ctx.inputs["chat_template"] / "dataset.jsonl")[0]
    assert run_step(ctx)["steps"] == 2
    assert json.loads((ctx.out_dir / "summary.json").read_text())["mask"]["rows"] == 4


def test_a_response_marker_that_never_occurs_stops_before_training(tmp_path):
    chat = chat_settings(response_part="<|start|>assistant<|message|>")
    ctx = make_ctx(tmp_path, fast_training(), chat=chat)
    with pytest.raises(StepError, match="response_part"):
        run_step(ctx)
    assert not (ctx.out_dir / "adapter").exists()


def test_batch_check_rejects_a_mask_that_trains_the_question(tmp_path):
    import torch

    from runner.chat.resolved import read_chat
    from runner.models import load_tokenizer
    from runner.train.train_mask import BatchChecker

    rows = write_dataset(tmp_path, tiny_model(), chat_settings())
    chat = read_chat(tmp_path)  # the markers in effect, as the chat_template step resolved them
    tokenizer = load_tokenizer(tiny_model())
    ids = tokenize_row(tokenizer, rows[0]["text"])
    good = response_only_labels(ids, tokenizer, chat["instruction_part"], chat["response_part"])
    checker = BatchChecker(tokenizer, chat, rows, limit=256)

    def batch(labels):
        return {"input_ids": torch.tensor([ids]), "labels": torch.tensor([labels]),
                "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}

    checker.check(batch(good))
    # Unsloth's GPT-OSS tokenizer pads on the left: padding is found by the attention mask.
    checker.check({"input_ids": torch.tensor([[0, 0] + ids]),
                   "labels": torch.tensor([[IGNORE, IGNORE] + good]),
                   "attention_mask": torch.tensor([[0, 0] + [1] * len(ids)])})
    with pytest.raises(StepError, match="trains padding"):
        checker.check({"input_ids": torch.tensor([[0] + ids]), "labels": torch.tensor([[0] + good]),
                       "attention_mask": torch.tensor([[0] + [1] * len(ids)])})
    leaky = list(good)
    first = next(i for i, label in enumerate(good) if label != IGNORE)
    leaky[first - 3:first] = ids[first - 3:first]
    with pytest.raises(StepError, match="differs from the verified one"):
        checker.check(batch(leaky))


def test_full_finetuning_saves_the_whole_model(tmp_path):
    ctx = make_ctx(tmp_path, fast_training(max_steps=2, eval_fraction=0.0),
                   model=tiny_model(full_finetuning=True))
    run_step(ctx)
    summary = json.loads((ctx.out_dir / "summary.json").read_text())
    assert summary["full_finetuning"] and summary["trainable_params"] == summary["total_params"]
    assert (ctx.out_dir / "adapter" / "model.safetensors").is_file()
    assert read_jsonl(ctx.out_dir / "eval.jsonl") == []
