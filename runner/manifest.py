"""`runs/<name>/manifest.json`: what ran, with which recipe, package versions, keys and metrics.

Rewritten (atomically) after every step, so even a crashed run leaves an honest record.
Secrets never appear: the recipe keeps `${env:NAME}` references, never their values.
"""

from __future__ import annotations

import platform
import sys
import time
from importlib import metadata
from pathlib import Path

from runner import __version__
from runner.artifacts import write_json

PACKAGES = ("pyyaml", "jsonschema", "jinja2", "click", "torch", "transformers", "trl", "peft",
            "datasets", "accelerate", "unsloth", "bitsandbytes", "brightdata-sdk", "trafilatura")


def package_versions(names=PACKAGES) -> dict[str, str | None]:
    """Installed versions by distribution name (None where absent), read without importing."""
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


class Manifest:
    def __init__(self, run_dir: Path, loaded):
        self.path = run_dir / "manifest.json"
        self._clock = time.monotonic()  # the timestamps below are whole seconds: too coarse for wall time
        self.data = {
            "recipe": loaded.data,
            "recipe_files": [str(p) for p in loaded.files],
            "status": "running",
            "started_at": _now(),
            "finished_at": None,
            "runner_version": __version__,
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "packages": package_versions(),
            "steps": {},
        }
        self._write()

    def step(self, item, key: str, status: str, record: dict | None = None) -> None:
        record = record or {}
        self.data["steps"][item.name] = {
            "kind": item.spec.kind, "key": key, "status": status,
            "duration_s": record.get("duration_s"), "finished_at": record.get("finished_at"),
            "metrics": record.get("metrics", {}), **({"error": record["error"]} if "error" in record else {}),
        }
        self._write()

    def finish(self, status: str) -> None:
        self.data["status"] = status
        self.data["finished_at"] = _now()
        self.data["wall_s"] = round(time.monotonic() - self._clock, 3)
        self._write()

    def _write(self) -> None:
        write_json(self.path, self.data)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
