"""The `hf` training backend: transformers + PEFT + TRL's SFTTrainer; runs on CPU or one GPU.

TRL 1.15 computes the SFT loss with a fused LM head whose kernel is written in Triton, which
only ships with CUDA builds of torch; on CPU `install_logprob_fallback` puts a plain-torch
version of the same function in its place.
"""

from __future__ import annotations

from runner.errors import StepError
from runner.train.train_common import gradient_checkpointing, lora_targets


class TorchLogProbHead:
    """Plain-torch stand-in for trl.kernels.ChunkedLogProbFunction (same arguments and outputs).

    It builds the full [tokens, vocab] logits in float32, which the Triton kernel avoids; fine
    for the CPU models this backend is for.
    """

    @staticmethod
    def apply(hidden, weight, bias, targets, temperature, chunk_size,
              final_logit_softcapping=None, logit_scale=1.0, outputs=("log_probs",)):
        import torch
        import torch.nn.functional as F

        logits = F.linear(hidden, weight, bias).float() * logit_scale
        if final_logit_softcapping is not None:
            logits = final_logit_softcapping * torch.tanh(logits / final_logit_softcapping)
        logits = logits / temperature
        log_z = torch.logsumexp(logits, dim=-1)
        log_probs = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - log_z
        entropy = log_sum_sq = mean_logits = is_top1 = None
        if "entropy" in outputs:
            entropy = log_z - (torch.softmax(logits, dim=-1) * logits).sum(-1)
        with torch.no_grad():
            if "log_sum_sq_probs" in outputs:
                log_sum_sq = torch.logsumexp(2 * logits, dim=-1) - 2 * log_z
            if "mean_logits" in outputs:
                mean_logits = logits.mean(-1)
            if "is_top1" in outputs:
                is_top1 = logits.argmax(-1) == targets
        return log_probs, entropy, log_sum_sq, mean_logits, is_top1


def install_logprob_fallback() -> bool:
    """Give TRL's fused LM head a plain-torch kernel when Triton is missing; True if installed."""
    import trl.trainer.utils as trl_utils

    if getattr(trl_utils, "_ChunkedLogProbFunction", None) is not None:
        return False
    trl_utils._ChunkedLogProbFunction = TorchLogProbHead
    return True


def lora_config(lora: dict, model_type: str, notes: list[str]):
    from peft import LoftQConfig, LoraConfig

    modules, parameters, note = lora_targets(lora, model_type)
    if note:
        notes.append(note)
    extra = {}
    if lora.get("loftq_config"):
        extra = {"init_lora_weights": "loftq", "loftq_config": LoftQConfig(**lora["loftq_config"])}
    return LoraConfig(task_type="CAUSAL_LM", r=lora["r"], lora_alpha=lora["alpha"],
                      lora_dropout=lora["dropout"], bias=lora["bias"],
                      use_rslora=lora["use_rslora"], target_modules=modules or None,
                      target_parameters=parameters or None, **extra)


def load(job):
    """(model, tokenizer, peft_config) for the job, on its device."""
    import torch

    from runner.models import load_tokenizer

    model_settings, lora = job.model, job.lora
    if lora.get("loftq_config") and model_settings["load_in_4bit"]:
        raise StepError("lora.loftq_config quantizes the base weights itself: set "
                        "model.load_in_4bit: false to use LoftQ with the hf backend")
    tokenizer = load_tokenizer(model_settings, job.recipe_dir)
    model = job.load_base_model()
    torch.manual_seed(lora["random_state"])
    # FSDP2 shards the 4-bit weights as stored (bnb_4bit_quant_storage): no fp32 upcast there.
    if model_settings["load_in_4bit"] and not (job.world and job.world.sharded):
        from peft import prepare_model_for_kbit_training
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=gradient_checkpointing(lora),
            gradient_checkpointing_kwargs={"use_reentrant": False})
    if model_settings["full_finetuning"]:
        return model, tokenizer, None
    return model, tokenizer, lora_config(lora, model.config.model_type, job.plan.notes)


def build_trainer(job):
    """An SFTTrainer over the job's pre-tokenized rows (labels already masked)."""
    import os

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from trl import SFTConfig, SFTTrainer

    if job.plan.device == "cpu" and install_logprob_fallback():
        job.plan.notes.append("no Triton on this machine: TRL's fused loss uses a plain-torch "
                              "fallback")
    model, tokenizer, peft_config = load(job)
    train_ds, eval_ds = job.datasets(tokenizer)
    try:
        trainer = SFTTrainer(model=model, args=SFTConfig(**job.sft_kwargs()),
                             train_dataset=train_ds, eval_dataset=eval_ds,
                             processing_class=tokenizer, peft_config=peft_config,
                             data_collator=job.collator(tokenizer))
    except ValueError as error:
        raise StepError(f"the trainer rejected the training settings: {error}") from error
    return trainer, tokenizer
