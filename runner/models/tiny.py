"""`model.name: tiny`: the project's random-init GPT-OSS or Llama, built once per shape into the cache."""

from __future__ import annotations

import platform
from pathlib import Path

LOCAL = True
TINY_DEFAULTS = {"family": "gpt_oss", "num_hidden_layers": 2, "hidden_size": 64,
                 "num_local_experts": 4, "vocab_size": 2048, "seed": 0}


def matches(name: str, base_dir: Path) -> bool:
    return name == "tiny"


def tiny_settings(model_settings: dict) -> dict:
    """The tiny shape with schema defaults filled in (llama ignores the expert count)."""
    tiny = {**TINY_DEFAULTS, **(model_settings.get("tiny") or {})}
    if tiny["family"] == "llama":
        tiny.pop("num_local_experts", None)
    return tiny


def tiny_model_dir(model_settings: dict) -> Path:
    from runner.artifacts import hash_json
    from runner.models.sources import cache_root
    from runner.tiny_model import FACTORY_VERSION

    tiny = tiny_settings(model_settings)
    # The tokenizer corpus is this Python's stdlib docstrings, so the version is part of the key.
    key = hash_json({"tiny": tiny, "factory": FACTORY_VERSION,
                     "python": platform.python_version()})[:12]
    return cache_root() / "models" / f"tiny-{tiny['family']}-{key}"


def resolve(model_settings: dict, base_dir: Path) -> str:
    folder = tiny_model_dir(model_settings)
    if not (folder / "tiny_model.json").is_file():
        _build(folder, model_settings)
    return str(folder)


def offline_problem(model_settings: dict, base_dir: Path) -> str | None:
    return None  # built locally from this Python's own docstrings


def _build(folder: Path, model_settings: dict) -> None:
    from runner.console import log
    from runner.tiny_model import build_tiny

    tiny = tiny_settings(model_settings)
    family, seed = tiny.pop("family"), tiny.pop("seed")
    log(f"building tiny {family} model {tiny} into {folder}")
    build_tiny(folder, family, seed=seed, **tiny)


def ready_folder(model_settings: dict, base_dir: Path) -> Path | None:
    folder = tiny_model_dir(model_settings)
    return folder if (folder / "tiny_model.json").is_file() else None
