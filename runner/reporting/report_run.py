"""What the run report reads: the manifest and the artifacts of each step's finished folder.

A step folder exists only once the step has finished (the executor renames it into place), but it
may come from an earlier run: when this run's attempt failed or never got to the step, the report
still shows it, saying so. Missing steps get a reason instead of a blank.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from runner.plan import COMPLETE
from runner.registry import STEP_ORDER


@dataclass
class RunFolder:
    path: Path
    manifest: dict = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> RunFolder:
        path = Path(path)
        manifest_path = path / "manifest.json"
        manifest = json.loads(manifest_path.read_text(encoding="utf-8")) if manifest_path.is_file() else {}
        return cls(path, manifest)

    @property
    def name(self) -> str:
        return (self.manifest.get("recipe") or {}).get("name") or self.path.name

    @property
    def status(self) -> str:
        return self.manifest.get("status") or "unknown"

    @property
    def recipe(self) -> dict:
        return self.manifest.get("recipe") or {}

    @property
    def steps(self) -> dict:
        return self.manifest.get("steps") or {}

    def step(self, name: str) -> dict:
        return self.steps.get(name) or {}

    def folder(self, name: str) -> Path | None:
        folder = self.path / name
        return folder if (folder / COMPLETE).is_file() else None

    def file(self, name: str, filename: str) -> Path | None:
        folder = self.folder(name)
        return folder / filename if folder and (folder / filename).exists() else None

    def json(self, name: str, filename: str):
        path = self.file(name, filename)
        return json.loads(path.read_text(encoding="utf-8")) if path else None

    def rows(self, name: str, filename: str, limit: int | None = None) -> list[dict] | None:
        path = self.file(name, filename)
        if path is None:
            return None
        rows = []
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    rows.append(json.loads(line))
                    if limit is not None and len(rows) >= limit:
                        break
        return rows

    def metrics(self, name: str) -> dict:
        """The step's metrics: from this run's manifest, else from its completion record."""
        metrics = self.step(name).get("metrics")
        if metrics:
            return metrics
        record = self.json(name, COMPLETE) or {}
        return record.get("metrics") or {}

    def failed_step(self) -> str | None:
        return next((n for n, s in self.steps.items() if s.get("status") == "failed"), None)

    def stale(self, name: str) -> str | None:
        """Why the folder shown is not this run's output, or None when it is."""
        if self.folder(name) is None or not self.manifest:
            return None
        info = self.step(name)
        if not info:
            return "these artifacts are from an earlier run: this run did not get to this step"
        if info.get("status") == "failed":
            return "these artifacts are from an earlier run: this run's attempt failed"
        record = self.json(name, COMPLETE) or {}
        if info.get("key") and record.get("key") and info["key"] != record["key"]:
            return "these artifacts are from an earlier run with other settings"
        return None

    def absence(self, name: str) -> str:
        """Why the step has no artifacts to show."""
        if not self.manifest:
            return f"no manifest.json and no finished {name}/ folder in {self.path}"
        if name not in self.recipe:
            return f"the recipe has no `{name}` section"
        info = self.step(name)
        if info.get("status") == "failed":
            return f"the {name} step failed: {info.get('error') or 'no error message'}"
        if info:
            return f"the {name} step is marked {info.get('status')} but {self.path / name} is missing"
        failed = self.failed_step()
        if failed:
            return f"not run: the run stopped when the {failed} step failed"
        if self.status == "running":
            return "not run: the run was interrupted (or is still going) before this step"
        return "not run: the run stopped before this step (`--until`?)"

    def planned_steps(self) -> list[str]:
        """Steps of this run in pipeline order: the manifest's, then recipe sections it lacks."""
        names = list(self.steps)
        names += [n for n in STEP_ORDER if n in self.recipe and n not in names]
        if not self.manifest:
            names = [n for n in STEP_ORDER if self.folder(n)]
        return names
