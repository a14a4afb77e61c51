"""The shipped recipe library: every recipe validates, plans, starts with its schema line and the
command that runs it, has a make target; the generated reference is current."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import ROOT, run_cli

from runner.reference import render

RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
REQUIRED = {"python_docs", "python_docs_120b", "python_docs_qlora", "python_docs_better",
            "python_docs_offline", "demo", "gpu_smoke"}


def test_the_library_is_complete():
    assert REQUIRED <= {p.stem for p in RECIPES}


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipe_validates_and_plans(recipe: Path, tmp_path):
    assert run_cli("validate", recipe).returncode == 0
    plan = run_cli("plan", recipe, "--run-dir", tmp_path)
    # A recipe that cannot run on this machine (a hub model offline, ...) still plans, and its
    # pre-flight problems are listed, located, with a non-zero exit.
    assert plan.returncode == 0 or (plan.returncode == 2 and "pre-flight:" in plan.stderr
                                    and ".yaml:" in plan.stderr), plan.stderr
    steps = [line.split()[0] for line in plan.stdout.splitlines()]
    assert steps[0] == "sources" and len(steps) >= 4


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipe_header_names_schema_and_command(recipe: Path):
    lines = recipe.read_text().splitlines()
    assert lines[0] == "# yaml-language-server: $schema=../schemas/recipe.schema.json"
    assert lines[1].startswith(f"# Run: recipe run recipes/{recipe.name}")


def test_make_has_a_target_for_every_recipe():
    dry = subprocess.run(["make", "-n", *[p.stem.replace("_", "-") for p in RECIPES]], cwd=ROOT,
                         capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr
    for recipe in RECIPES:
        assert f"recipes/{recipe.name}" in dry.stdout


def test_reference_is_generated_from_the_current_schema():
    current = (ROOT / "docs" / "recipe-reference.md").read_text()
    assert current == render(), "docs/recipe-reference.md is stale: run `make docs`"


def test_variants_extend_the_hand_run_recipe():
    for name in ("python_docs_120b", "python_docs_qlora", "python_docs_better"):
        assert "extends: python_docs.yaml" in (ROOT / "recipes" / f"{name}.yaml").read_text()


def test_diff_and_init_share_recipes(tmp_path):
    diff = run_cli("diff", ROOT / "recipes" / "python_docs.yaml", ROOT / "recipes" / "python_docs_120b.yaml")
    assert diff.returncode == 0
    assert "model.name: 'unsloth/gpt-oss-20b' -> 'unsloth/gpt-oss-120b'" in diff.stdout
    made = run_cli("init", "mine", "--from", ROOT / "recipes" / "python_docs.yaml", "--dir", tmp_path)
    assert made.returncode == 0, made.stderr
    assert run_cli("validate", tmp_path / "mine.yaml").returncode == 0
    assert run_cli("init", "mine", "--dir", tmp_path).returncode == 2  # never overwrites


def test_readme_tree_lists_every_file():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    readme = (ROOT / "README.md").read_text()
    missing = [f for f in tracked if not f.startswith("tests/broken/") and f"\n{f} " not in readme]
    assert not missing, f"add these to the README tree: {missing}"
