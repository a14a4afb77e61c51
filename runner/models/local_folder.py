"""`model.name: ./path/to/folder`: a model folder on disk (config.json and weights), used as it is."""

from __future__ import annotations

from pathlib import Path

from runner.errors import StepError

LOCAL = True


def matches(name: str, base_dir: Path) -> bool:
    from runner.models.sources import looks_like_path
    return looks_like_path(name) or (base_dir / name).expanduser().is_dir()


def _folder(model_settings: dict, base_dir: Path) -> Path:
    return (base_dir / str(model_settings["name"]).strip()).expanduser()


def resolve(model_settings: dict, base_dir: Path) -> str:
    folder = _folder(model_settings, base_dir)
    problem = offline_problem(model_settings, base_dir)
    if problem:
        raise StepError(problem)
    return str(folder.resolve())


def offline_problem(model_settings: dict, base_dir: Path) -> str | None:
    folder = _folder(model_settings, base_dir)
    name = model_settings["name"]
    if not folder.is_dir():
        return (f"model.name {name!r} looks like a local path but {folder.resolve()} is not a "
                "folder: fix the path (relative paths start at the recipe's folder), or name a "
                ".gguf file")
    if not (folder / "config.json").is_file():
        return (f"model.name {name!r}: {folder.resolve()} has no config.json, so it is not a "
                "transformers model folder (save one with save_pretrained, or name a .gguf file)")
    return None


def ready_folder(model_settings: dict, base_dir: Path) -> Path | None:
    return None if offline_problem(model_settings, base_dir) else _folder(model_settings, base_dir)
