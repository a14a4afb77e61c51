"""What `recipe serve` serves: a run folder's model or a model folder; and vLLM's line for it."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from runner.errors import StepError
from runner.plan import COMPLETE

RUN_CANDIDATES = ("export/merged_16bit", "export/lora", "training/adapter")


STEP_FOLDERS = ("sources", "cleaning", "pairing", "validation", "chat_template", "training",
                "evaluation", "export")


def resolve_target(target: str | Path) -> tuple[Path, str]:
    """(model or adapter folder, served model name) for a run folder or a model path."""
    path = Path(target).expanduser().resolve()
    if _is_model(path):
        return path, path.name
    if not path.is_dir():
        raise StepError(f"{target} does not exist: pass a run folder (runs/NAME) or a model "
                        "folder (config.json or adapter_config.json)")
    if (path / "manifest.json").is_file() or any((path / s).is_dir() for s in STEP_FOLDERS):
        for candidate in RUN_CANDIDATES:
            if _is_model(path / candidate):
                return path / candidate, path.name
        raise StepError(_nothing_to_serve(path))
    raise StepError(f"{target} is neither a run folder (runs/NAME) nor a model folder "
                    "(config.json or adapter_config.json)")


def _is_model(folder: Path) -> bool:
    return (folder / "config.json").is_file() or (folder / "adapter_config.json").is_file()


def _nothing_to_serve(run: Path) -> str:
    """What a run folder lacks to be served, and the command that makes it."""
    done = [s for s in STEP_FOLDERS if (run / s / COMPLETE).is_file()]
    exported = sorted(p.name for p in (run / "export").iterdir() if p.is_dir()) \
        if (run / "export").is_dir() else []
    try:
        recipe = json.loads((run / "manifest.json").read_text())["recipe_files"][0]
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        recipe = "RECIPE"
    why = (f"its export holds only {', '.join(exported)}, which this server cannot load"
           if exported else "it has no export (export/merged_16bit or export/lora) and no "
           "trained adapter (training/adapter)")
    return (f"run folder {run} has nothing to serve: {why}; steps finished there: "
            f"{', '.join(done) or 'none'}. Run the recipe through training or export "
            f"(`recipe run {recipe}`, with `lora` or `merged_16bit` in export.targets), then "
            "serve it again")


def vllm_command(model_dir: Path, name: str, port: int = 8000) -> str:
    """The production server line: vLLM's OpenAI-compatible server for the merged model."""
    model_dir = Path(model_dir)
    if (model_dir / "adapter_config.json").is_file():
        config = json.loads((model_dir / "adapter_config.json").read_text())
        return (f"vllm serve {shlex.quote(str(config.get('base_model_name_or_path')))} "
                f"--enable-lora --lora-modules {shlex.quote(name)}={shlex.quote(str(model_dir))} "
                f"--max-lora-rank {config.get('r', 8)} --host 0.0.0.0 --port {port}")
    return (f"vllm serve {shlex.quote(str(model_dir))} --served-model-name {shlex.quote(name)} "
            f"--host 0.0.0.0 --port {port}")
