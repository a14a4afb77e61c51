"""The benchmark's reference engines: the bare Unsloth loop and the TRL + PEFT baseline.

bench_training.py runs them (each in its own process) beside the runner's training step.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from bench_training import ALPHA, ATTN, ATTN_MLP, EXPERTS, LR, _cuda, _rate, data_dir


def run_baseline(run: dict, work: Path) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    cuda = _cuda()
    if not cuda:
        from runner.train.train_hf import install_logprob_fallback
        install_logprob_fallback()
    path = work / "models" / run["model"]
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.bfloat16 if cuda else torch.float32, attn_implementation="eager",
        device_map="cuda" if cuda else "cpu")
    lora = LoraConfig(r=run["r"], lora_alpha=ALPHA, lora_dropout=0.0, task_type="CAUSAL_LM",
                      target_modules=ATTN, target_parameters=EXPERTS)
    data = Dataset.from_list(json.loads((data_dir(run, work) / "tokens.json").read_text()))
    args = SFTConfig(output_dir=str(work / "baseline-out"), per_device_train_batch_size=run["micro"],
                     gradient_accumulation_steps=run["accum"], max_steps=run["steps"],
                     learning_rate=LR, warmup_steps=2, logging_steps=1, save_strategy="no",
                     bf16=cuda, optim="adamw_8bit" if cuda else "adamw_torch", use_cpu=not cuda,
                     gradient_checkpointing=True, max_length=run["seq"], report_to="none",
                     include_num_input_tokens_seen="non_padding", disable_tqdm=True,
                     router_aux_loss_coef=0.0, seed=3407)
    log: list[dict] = []

    class Timer(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if "loss" in (logs or {}):
                log.append({"step": state.global_step, "t": time.perf_counter(),
                            "tokens": state.num_input_tokens_seen, "loss": logs["loss"]})

    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=
                         AutoTokenizer.from_pretrained(path), peft_config=lora, callbacks=[Timer()])
    largest = _track_micro_batches(trainer)
    trainer.train()
    return {"tokens_per_s": _rate(log, "tokens", "t", run), **_peaks(),
            "step_s": [round(b["t"] - a["t"], 4) for a, b in zip(log, log[1:], strict=False)],
            "trainable": trainer.model.get_nb_trainable_parameters()[0],
            "final_loss": log[-1]["loss"], "micro_tokens": largest[0]}


def _track_micro_batches(trainer) -> list:
    largest = [0]
    original = trainer.compute_loss

    def compute_loss(model, inputs, *args, **kwargs):
        largest[0] = max(largest[0], int(inputs["input_ids"].numel()))
        return original(model, inputs, *args, **kwargs)
    trainer.compute_loss = compute_loss
    return largest


def _peaks() -> dict:
    import resource

    import torch
    if torch.cuda.is_available():
        return {"peak_gib": torch.cuda.max_memory_allocated() / 2**30,
                "reserved_gib": torch.cuda.max_memory_reserved() / 2**30}
    return {"peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "reserved_gib": None}


def run_bare_group(runs: list[dict], work: Path) -> dict:
    """The bare Unsloth loop for several runs, on one loaded model per gradient checkpointing
    setting (same LoRA for all); each model is freed before the next loads, so peaks compare."""
    os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")
    from unsloth import FastLanguageModel  # noqa: I001  (before transformers)
    import gc

    import torch

    results = {}
    settings = list(dict.fromkeys(r.get("checkpointing", "unsloth") for r in runs))
    for checkpointing in settings:
        group = [r for r in runs if r.get("checkpointing", "unsloth") == checkpointing]
        model, tokenizer = FastLanguageModel.from_pretrained(
            str(work / "models" / group[0]["model"]), max_seq_length=max(r["seq"] for r in group),
            dtype=None, load_in_4bit=False)
        model = FastLanguageModel.get_peft_model(
            model, r=group[0]["r"], lora_alpha=ALPHA, lora_dropout=0, target_modules=ATTN_MLP,
            bias="none", use_gradient_checkpointing=checkpointing, random_state=3407)
        FastLanguageModel.for_training(model)
        for run in group:
            results[run["name"]] = _bare_loop(model, tokenizer.pad_token_id or 0, run, work)
            torch.cuda.empty_cache()
        del model, tokenizer
        gc.collect()
        torch.cuda.empty_cache()
    return results


def _bare_loop(model, pad: int, run: dict, work: Path) -> dict:
    import bitsandbytes as bnb
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = bnb.optim.AdamW8bit(params, lr=LR, weight_decay=0.01)
    rows = json.loads((data_dir(run, work) / "tokens.json").read_text())
    torch.cuda.reset_peak_memory_stats()
    times, tokens, seen, largest, loss = {}, {}, 0, 0, None
    micro = iter(range(0, len(rows), run["micro"]))
    for step in range(1, run["steps"] + 1):
        for _ in range(run["accum"]):
            start = next(micro)
            batch = _collate(rows[start:start + run["micro"]], pad)
            seen += int(batch["attention_mask"].sum())
            largest = max(largest, batch["input_ids"].numel())
            batch = {k: v.to("cuda", non_blocking=True) for k, v in batch.items()}
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = model(**batch).loss / run["accum"]
            loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss = loss.item()   # a loop that reports its loss syncs every step, as the Trainer does
        times[step], tokens[step] = time.perf_counter(), seen
    del optimizer
    rate = (tokens[run["steps"]] - tokens[run["skip"]]) / (times[run["steps"]] - times[run["skip"]])
    return {"tokens_per_s": rate, **_peaks(), "trainable": sum(p.numel() for p in params),
            "final_loss": loss * run["accum"], "micro_tokens": largest,
            "step_s": [round(times[i + 1] - times[i], 4) for i in range(1, run["steps"])]}


def _collate(rows: list[dict], pad: int) -> dict:
    import torch
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        ids[i, :n], labels[i, :n], mask[i, :n] = (torch.tensor(r["input_ids"]),
                                                  torch.tensor(r["labels"]), 1)
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}
