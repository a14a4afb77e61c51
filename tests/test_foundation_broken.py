"""Every broken recipe in tests/broken/ exits 2 with file:line and the key path, no traceback,
and nothing written under the run folder."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import ROOT, run_cli

BROKEN = ROOT / "tests" / "broken"
CASES = sorted(BROKEN.glob("*.yaml"))


def expectation(path: Path) -> tuple[str, int, str]:
    header = path.read_text().splitlines()[0]
    match = re.match(r"# expect: (?:(\S+\.yaml) )?line (\d+) (\S+)", header)
    assert match, f"{path.name} needs an '# expect:' header"
    return match.group(1) or path.name, int(match.group(2)), match.group(3)


def test_corpus_is_large_enough():
    assert len(CASES) >= 25


@pytest.mark.parametrize("recipe", CASES, ids=lambda p: p.stem)
def test_broken_recipe_is_reported_precisely(recipe: Path, tmp_path):
    file, line, key_path = expectation(recipe)
    result = run_cli("validate", recipe)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    located = [ln for ln in result.stderr.splitlines() if re.search(rf"{re.escape(file)}:{line}(:\d+)?: ", ln)]
    assert located, f"no '{file}:{line}' in:\n{result.stderr}"
    assert any(f": {key_path}" in ln for ln in located), f"no {key_path} in:\n{result.stderr}"


@pytest.mark.parametrize("recipe", CASES, ids=lambda p: p.stem)
def test_broken_recipe_run_writes_nothing(recipe: Path, tmp_path):
    run_dir = tmp_path / "runs"
    result = run_cli("run", recipe, "--run-dir", run_dir)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert not run_dir.exists() or not any(run_dir.rglob("*"))


def test_python_tag_is_never_executed():
    marker = Path("/tmp/recipe-pwned")
    marker.unlink(missing_ok=True)
    run_cli("validate", BROKEN / "python_tag.yaml")
    assert not marker.exists()
