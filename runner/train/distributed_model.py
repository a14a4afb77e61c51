"""Loading the base model on one rank of a launched run (hf backend).

DDP: a full copy on the rank's own device. FSDP2: the weights are read in their training dtype on
CPU (accelerate's cpu_ram_efficient_loading gives ranks other than 0 empty weights and broadcasts
rank 0's when it shards), or, for QLoRA, quantized on the rank's GPU with the 4-bit weights
stored in the compute dtype (bnb_4bit_quant_storage), which FSDP needs to shard them like the rest.
"""

from __future__ import annotations

from runner.train.train_common import model_dtype_name


def load_for_rank(job):
    from runner.models import load_model

    world, settings = job.world, job.model
    if not world.sharded:
        return load_model(settings, device=world.device, base_dir=job.recipe_dir)
    import torch
    bf16 = job.plan.device == "cuda" and torch.cuda.is_bf16_supported()
    dtype = model_dtype_name(settings, job.plan.device, bf16_supported=bf16)
    if settings["load_in_4bit"]:
        return _quantized_for_sharding(settings, world.device, dtype, job.recipe_dir)
    return load_model(settings, device="cpu", dtype=dtype, base_dir=job.recipe_dir)


def _quantized_for_sharding(settings: dict, device: str, dtype_name: str, base_dir):
    import torch
    from transformers import AutoModelForCausalLM

    from runner.models.loading import (
        _hub_kwargs,
        _load_error,
        attention_for,
        load_config,
        quantization_for,
    )
    from runner.models.sources import resolve_model

    dtype = getattr(torch, dtype_name)
    quantization = quantization_for(settings, device, dtype)
    quantization.bnb_4bit_quant_storage = dtype
    config = load_config(settings, base_dir)
    try:
        return AutoModelForCausalLM.from_pretrained(
            resolve_model(settings, base_dir), dtype=dtype, device_map=device,
            quantization_config=quantization,
            attn_implementation=attention_for(config.model_type, settings.get("attn_implementation")),
            **_hub_kwargs(settings, base_dir))
    except (OSError, ValueError) as error:
        raise _load_error(settings, "weights", error) from error

