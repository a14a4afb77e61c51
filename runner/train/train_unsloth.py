"""The `unsloth` training backend: what the hand-run notebook does, on one CUDA GPU.

FastLanguageModel.from_pretrained -> FastLanguageModel.get_peft_model -> TRL's SFTTrainer (as
patched by Unsloth) -> unsloth's train_on_responses_only. Unsloth patches transformers and trl
when it is imported, so it is imported here before either.
"""

from __future__ import annotations

import os

from runner.errors import StepError


def _import_unsloth():
    os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        import unsloth  # noqa: F401  (must come before trl/transformers use)
        from unsloth import FastLanguageModel
    except ImportError as error:
        raise StepError(f"training.backend is unsloth but unsloth cannot be imported ({error}): "
                        "install it (`pip install unsloth`) or set training.backend: hf") from error
    return FastLanguageModel


def _dtype(name: str):
    import torch
    return None if name in (None, "auto") else getattr(torch, name)


def load(job):
    """(model, tokenizer) with LoRA attached, exactly as the notebook calls Unsloth."""
    from runner.models import is_local, resolve_model

    FastLanguageModel = _import_unsloth()
    settings, lora = job.model, job.lora
    path = resolve_model(settings, job.recipe_dir)
    hub = {} if is_local(settings, job.recipe_dir) else {"revision": settings.get("revision")}
    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=path, max_seq_length=settings["max_seq_length"],
        dtype=_dtype(settings["dtype"]), load_in_4bit=settings["load_in_4bit"],
        full_finetuning=settings["full_finetuning"], **hub, **job.placement)
    if settings["full_finetuning"]:
        return model, tokenizer
    extra = {"target_parameters": lora["target_parameters"]} if lora.get("target_parameters") else {}
    model = FastLanguageModel.get_peft_model(
        model, r=lora["r"], target_modules=lora["target_modules"], lora_alpha=lora["alpha"],
        lora_dropout=lora["dropout"], bias=lora["bias"],
        use_gradient_checkpointing=lora["use_gradient_checkpointing"],
        random_state=lora["random_state"], use_rslora=lora["use_rslora"],
        loftq_config=lora["loftq_config"], **extra)
    return model, tokenizer


def _unsloth_overrides(job) -> dict:
    """get_peft_model already set up the checkpointing lora.use_gradient_checkpointing asks for
    (Unsloth's own, offloading to host memory, as a bare Unsloth loop has it) and Unsloth's
    trainer restores it; the Trainer's gradient_checkpointing would re-enable transformers'
    checkpointing over it at train()."""
    if job.model["full_finetuning"]:
        return {}
    return {"gradient_checkpointing": False, "gradient_checkpointing_kwargs": None}


def build_trainer(job):
    """SFTTrainer over the rendered text, then Unsloth's response-only masking."""
    model, tokenizer = load(job)
    from trl import SFTConfig, SFTTrainer

    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # mask markers: the notebook's path (text rows, then train_on_responses_only); mask
    # template: rows arrive tokenized with the template's spans as labels.
    # Packed batches take tokenized rows too (labels by the same markers rule); given our
    # collator, Unsloth leaves its own packing (which it refuses for GPT-OSS) off.
    markers = (job.chat["mask"] == "markers" and job.training["train_on_responses_only"]
               and not job.packed)
    train_ds, eval_ds = job.text_datasets() if markers else job.datasets(tokenizer)
    try:
        trainer = SFTTrainer(model=model, processing_class=tokenizer,
                             train_dataset=train_ds, eval_dataset=eval_ds,
                             args=SFTConfig(**{**job.sft_kwargs(), **_unsloth_overrides(job)}),
                             data_collator=job.collator(tokenizer))
    except ValueError as error:
        raise StepError(f"the trainer rejected the training settings: {error}") from error
    if markers:
        from unsloth.chat_templates import train_on_responses_only
        trainer = train_on_responses_only(trainer, instruction_part=job.chat["instruction_part"],
                                          response_part=job.chat["response_part"])
    # Unsloth loads GPT-OSS tokenizers padding on the left (for generation); batches for
    # training are padded on the right, as TRL does.
    tokenizer.padding_side = "right"
    return trainer, tokenizer
