"""Where a recipe's model comes from, and loading it with plain transformers.

`model.name` is a hub id, a local folder, or "tiny": the project's random-init model, built once
per shape by `runner.tiny_model` and cached under $RECIPE_CACHE/models (default
~/.cache/recipe/models). Unsloth loading lives with the training backend; this module is the
transformers path (CPU demo, tests, evaluation, export).
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

from runner.errors import StepError

TINY_DEFAULTS = {"family": "gpt_oss", "num_hidden_layers": 2, "hidden_size": 64,
                 "num_local_experts": 4, "vocab_size": 2048, "seed": 0}


def cache_root() -> Path:
    return Path(os.environ.get("RECIPE_CACHE") or Path.home() / ".cache" / "recipe").expanduser()


def tiny_settings(model_settings: dict) -> dict:
    """The tiny shape with schema defaults filled in (llama ignores the expert count)."""
    tiny = {**TINY_DEFAULTS, **(model_settings.get("tiny") or {})}
    if tiny["family"] == "llama":
        tiny.pop("num_local_experts", None)
    return tiny


def tiny_model_dir(model_settings: dict) -> Path:
    from runner.artifacts import hash_json
    from runner.tiny_model import FACTORY_VERSION

    tiny = tiny_settings(model_settings)
    # The tokenizer corpus is this Python's stdlib docstrings, so the version is part of the key.
    key = hash_json({"tiny": tiny, "factory": FACTORY_VERSION,
                     "python": platform.python_version()})[:12]
    return cache_root() / "models" / f"tiny-{tiny['family']}-{key}"


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or name in (".", "..")


def is_local(model_settings: dict, base_dir: str | os.PathLike | None = None) -> bool:
    name = str(model_settings.get("name", ""))
    return name == "tiny" or _looks_like_path(name) or (Path(base_dir or ".") / name).is_dir()


def resolve_model(model_settings: dict, base_dir: str | os.PathLike | None = None) -> str:
    """Hub id (returned as given), absolute local folder, or the folder of the built tiny model.

    base_dir: folder that relative local paths start from (the recipe's folder).
    """
    name = str(model_settings.get("name") or "").strip()
    if not name:
        raise StepError("model.name is empty: give a hub id (unsloth/gpt-oss-20b), a local "
                        "folder, or \"tiny\"")
    if name == "tiny":
        folder = tiny_model_dir(model_settings)
        if not (folder / "tiny_model.json").is_file():
            _build_tiny_model(folder, model_settings)
        return str(folder)
    local = (Path(base_dir or ".") / name).expanduser()
    if local.is_dir():
        return str(local.resolve())
    if _looks_like_path(name):
        raise StepError(f"model.name {name!r} looks like a local path but {local.resolve()} is not a "
                        "folder: fix the path (relative paths start at the recipe's folder)")
    return name


def _build_tiny_model(folder: Path, model_settings: dict) -> None:
    from runner.console import log
    from runner.tiny_model import build_tiny

    tiny = tiny_settings(model_settings)
    family, seed = tiny.pop("family"), tiny.pop("seed")
    log(f"building tiny {family} model {tiny} into {folder}")
    build_tiny(folder, family, seed=seed, **tiny)


def _load_error(model_settings: dict, what: str, error: Exception) -> StepError:
    name = model_settings.get("name")
    message = f"cannot load the {what} of model {name!r}: {error}"
    if _offline():
        message += ("\n    hint: HF_HUB_OFFLINE is set and the model is not in the local Hugging "
                    f"Face cache; download it where there is internet (`hf download {name}`), "
                    "point model.name at a local folder, or use model.name: tiny")
    else:
        message += ("\n    hint: check the hub id and model.revision (and HF_TOKEN for gated "
                    "models), or point model.name at a local folder")
    return StepError(message)


def _offline() -> bool:
    return any(os.environ.get(name, "").lower() in ("1", "true", "yes", "on")
               for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


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
