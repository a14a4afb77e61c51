"""The registry of model sources: `model.name` -> the kind of source that owns it.

A source kind is a module with `matches(name, base_dir)`, `resolve(settings, base_dir)` (the
folder or hub id transformers loads), `local` (whether it needs no network) and
`offline_problem(settings, base_dir)` (why it cannot load here, said before any work starts).
Kinds are asked in order; the hub is last and takes any other name.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType

from runner.errors import StepError


def cache_root() -> Path:
    return Path(os.environ.get("RECIPE_CACHE") or Path.home() / ".cache" / "recipe").expanduser()


def _kinds() -> list[ModuleType]:
    from runner.models import gguf_file, hub, local_folder, packaged, tiny
    return [tiny, packaged, gguf_file, local_folder, hub]


def source_for(model_settings: dict, base_dir: str | os.PathLike | None = None) -> ModuleType:
    name = str(model_settings.get("name") or "").strip()
    if not name:
        raise StepError("model.name is empty: give a hub id (unsloth/gpt-oss-20b), a local "
                        "folder, a .gguf file, package:IMPORT_NAME/FILE, or \"tiny\"")
    return next(kind for kind in _kinds() if kind.matches(name, Path(base_dir or ".")))


def resolve_model(model_settings: dict, base_dir: str | os.PathLike | None = None) -> str:
    """What transformers loads: a local folder (built or converted if needed) or a hub id.

    base_dir: folder that relative local paths start from (the recipe's folder).
    """
    return source_for(model_settings, base_dir).resolve(model_settings, Path(base_dir or "."))


def is_local(model_settings: dict, base_dir: str | os.PathLike | None = None) -> bool:
    return source_for(model_settings, base_dir).LOCAL


def describe_source(model_settings: dict, base_dir: str | os.PathLike | None = None) -> str:
    kind = source_for(model_settings, base_dir)
    return kind.__name__.rsplit(".", 1)[-1]


def offline_problem(model_settings: dict, base_dir: str | os.PathLike | None = None) -> str | None:
    """Why this model cannot be loaded on this machine as it is, or None."""
    try:
        kind = source_for(model_settings, base_dir)
    except StepError as error:
        return str(error)
    return kind.offline_problem(model_settings, Path(base_dir or "."))


def looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or name in (".", "..")


def ready_folder(model_settings: dict, base_dir: str | os.PathLike | None = None) -> Path | None:
    """The model's local folder if it is there already (nothing is built, converted or fetched)."""
    try:
        kind = source_for(model_settings, base_dir)
    except StepError:
        return None
    return kind.ready_folder(model_settings, Path(base_dir or "."))
