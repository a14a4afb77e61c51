"""The interpreter on real steps: caching by content hash, partial re-runs, --from/--until/--force,
atomic step folders under SIGKILL, the manifest."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from conftest import ROOT, run_cli

SENTENCES = [f"Sentence number {i} explains how Python lists keep items in insertion order." for i in range(40)]


@pytest.fixture
def project(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    for n in range(3):
        (docs / f"page{n}.md").write_text(f"# Page {n}\n\n" + " ".join(SENTENCES[n::3]) + "\n")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(textwrap.dedent("""\
        name: interp
        sources:
          - type: local
            paths: ["docs/*.md"]
        cleaning: {}
        pairing: {}
        validation:
          min_response_chars: 20
        """))
    return tmp_path, recipe


def statuses(run_dir):
    manifest = json.loads((run_dir / "manifest.json").read_text())
    return {name: info["status"] for name, info in manifest["steps"].items()}


def run(project, *args):
    tmp_path, recipe = project
    result = run_cli("run", recipe, "--run-dir", tmp_path / "runs", "--quiet", *args)
    assert result.returncode == 0, result.stderr
    return result, statuses(tmp_path / "runs" / "interp")


def test_unchanged_recipe_reexecutes_nothing(project):
    _, first = run(project)
    assert set(first.values()) == {"ran"}
    result, second = run(project)
    assert set(second.values()) == {"skipped"}
    assert "sources: didn't change, skipping" in result.stderr


def test_changing_one_value_reruns_that_step_and_later_only(project):
    run(project)
    _, after = run(project, "--set", "validation.min_response_chars=25")
    assert after == {"sources": "skipped", "cleaning": "skipped", "pairing": "skipped",
                     "validation": "ran"}
    _, after = run(project, "--set", "cleaning.drop_sentences_containing=[number 1]")
    assert after["sources"] == "skipped" and after["cleaning"] == "ran"
    assert after["pairing"] == "ran" and after["validation"] == "ran"


def test_a_rerun_step_with_identical_output_does_not_rerun_later_steps(project):
    run(project)
    # every sentence is longer than 10 characters: cleaning re-runs, its output is the same bytes
    _, after = run(project, "--set", "cleaning.min_sentence_chars=10")
    assert after["cleaning"] == "ran"
    assert after["pairing"] == "skipped" and after["validation"] == "skipped"


def test_editing_a_local_file_reruns_from_sources(project):
    tmp_path, _ = project
    run(project)
    (tmp_path / "docs" / "page0.md").write_text("# Changed\n\n" + " ".join(SENTENCES) + "\n")
    _, after = run(project)
    assert after["sources"] == "ran" and after["validation"] == "ran"


def test_from_until_and_force(project):
    run(project)
    _, after = run(project, "--force", "pairing", "--until", "pairing")
    assert after["pairing"] == "ran" and after["cleaning"] == "skipped"
    assert "validation" not in after or after["validation"] != "ran"
    _, after = run(project, "--from", "validation", "--force")
    assert after["sources"] == "reused" and after["validation"] == "ran"
    tmp_path, recipe = project
    bad = run_cli("run", recipe, "--run-dir", tmp_path / "runs", "--from", "nope")
    assert bad.returncode == 2 and "no step named 'nope'" in bad.stderr


def test_plan_says_what_would_run_and_why(project):
    tmp_path, recipe = project
    plan = run_cli("plan", recipe, "--run-dir", tmp_path / "runs")
    assert plan.returncode == 0 and plan.stdout.count("never ran") == 4
    run(project)
    plan = run_cli("plan", recipe, "--run-dir", tmp_path / "runs", "--set", "pairing.response_max_chars=250")
    lines = dict(line.split(None, 1) for line in plan.stdout.splitlines())
    assert lines["sources"].split()[1] == "skip" and lines["pairing"].split()[1] == "run"


def test_manifest_records_recipe_versions_keys_and_metrics(project):
    tmp_path, _ = project
    run(project)
    manifest = json.loads((tmp_path / "runs" / "interp" / "manifest.json").read_text())
    assert manifest["status"] == "succeeded"
    assert manifest["recipe"]["name"] == "interp"
    assert manifest["packages"]["pyyaml"]
    for info in manifest["steps"].values():
        assert len(info["key"]) == 32 and info["duration_s"] is not None
    assert manifest["steps"]["sources"]["metrics"]


def test_sigkill_mid_step_leaves_nothing_taken_as_complete(project):
    tmp_path, recipe = project
    docs = tmp_path / "docs"
    body = " ".join(SENTENCES) * 3
    for n in range(400):  # enough work for the sources step to be caught mid-way
        (docs / f"bulk{n:04d}.md").write_text(f"# Bulk {n}\n\n{body}\n")
    run_dir = tmp_path / "runs" / "interp"
    proc = subprocess.Popen([sys.executable, "-m", "runner", "run", str(recipe), "--run-dir",
                             str(tmp_path / "runs"), "--quiet"], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and not list(run_dir.glob(".sources.tmp-*")):
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "sources" / ".complete.json").exists()
    plan = run_cli("plan", recipe, "--run-dir", tmp_path / "runs")
    assert "sources" in plan.stdout and "never ran" in plan.stdout.splitlines()[0]
    _, after = run(project)
    assert after["sources"] == "ran"
    assert not list(run_dir.glob(".*.tmp-*"))
