"""The run report's wall time is measured, not read off whole-second timestamps: a run under a
second, and a failed run, show their real time (never `0.00 s`)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from conftest import run_cli

from runner.reporting.report_html import duration

DATA_HALF = """\
name: {name}
sources: [{{type: local, paths: ["{paths}"]}}]
cleaning: {{}}
pairing: {{}}
validation: {{min_response_chars: 10}}
"""


def run_recipe(tmp_path: Path, name: str, paths: str):
    recipe = tmp_path / f"{name}.yaml"
    recipe.write_text(DATA_HALF.format(name=name, paths=paths))
    result = run_cli("run", recipe, "--run-dir", tmp_path / "runs", "-q")
    run_dir = tmp_path / "runs" / name
    manifest = json.loads((run_dir / "manifest.json").read_text())
    shown = re.search(r"<th>wall time</th><td>([^<]*)</td>", (run_dir / "report.html").read_text())
    return result, manifest, shown.group(1) if shown else None


def test_a_short_run_shows_its_measured_wall_time(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text(
        "# Lists\n\n" + " ".join(f"Python lists keep their items in order, says rule {i}." for i in range(20)))
    result, manifest, shown = run_recipe(tmp_path, "short", "docs/*.md")
    assert result.returncode == 0, result.stderr
    steps = sum(step["duration_s"] for step in manifest["steps"].values())
    assert manifest["wall_s"] >= steps > 0
    assert shown == duration(manifest["wall_s"]) and shown != "0.00 s"


def test_a_failed_run_shows_its_measured_wall_time(tmp_path):
    result, manifest, shown = run_recipe(tmp_path, "broken", "missing/*.md")  # no file matches
    assert result.returncode == 1 and manifest["status"] == "failed"
    failed = manifest["steps"]["sources"]
    assert failed["status"] == "failed" and failed["duration_s"] >= 0
    assert manifest["wall_s"] >= failed["duration_s"]
    assert shown == duration(manifest["wall_s"]) and shown != "0.00 s"
