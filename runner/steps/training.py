"""training: LoRA / QLoRA supervised fine-tuning of the model on the chat_template dataset.

Backends: `unsloth` (Unsloth on a CUDA GPU, the hand-run workflow), `hf` (transformers + PEFT +
TRL, runs on CPU too) and `auto` (unsloth when a CUDA GPU and unsloth are present, else hf).
Checkpoints are kept in the step's cache and a crashed run resumes from the latest one.
"""

from __future__ import annotations

from runner.registry import StepContext, step

INPUTS = ["chat_template"]
USES = ("model", "lora", "chat_template")
OUTPUTS = ["adapter", "metrics.jsonl", "summary.json", "eval.jsonl"]
# Timings, throughput and memory peaks differ every run (the loss curve beside them does not,
# and the adapter it leads to is hashed): left out of the content hash.
VOLATILE = ["metrics.jsonl", "summary.json", "tensorboard"]


@step("training", "hf", inputs=INPUTS, uses=USES, outputs=OUTPUTS, volatile=VOLATILE)
def train_hf(ctx: StepContext) -> dict:
    """transformers + PEFT + TRL SFTTrainer; CPU or one GPU."""
    from runner.train.train_run import run_training
    return run_training(ctx, "hf")


@step("training", "unsloth", inputs=INPUTS, uses=USES, outputs=OUTPUTS, volatile=VOLATILE)
def train_unsloth(ctx: StepContext) -> dict:
    """Unsloth FastLanguageModel + TRL SFTTrainer + train_on_responses_only; one CUDA GPU."""
    from runner.train.train_run import run_training
    return run_training(ctx, "unsloth")


@step("training", "auto", inputs=INPUTS, uses=USES, outputs=OUTPUTS, volatile=VOLATILE)
def train_auto(ctx: StepContext) -> dict:
    """unsloth when a CUDA GPU and unsloth are present, else hf; says which it chose."""
    from runner.train.train_common import choose_backend
    from runner.train.train_run import run_training

    backend, reason = choose_backend(ctx.settings)
    ctx.log(f"backend auto: using {backend} ({reason})")
    return run_training(ctx, backend)
