"""What the README and docs tell a user to type works as written: every command line (after
`make install`: `.venv/bin/recipe`, never a bare `recipe`), every recipe snippet, and the scaffold
`recipe init NAME` writes."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
from conftest import ROOT, run_cli

from runner.cli import main
from runner.validate import _deref, load_and_validate, schema
from runner.yamlsafe import parse_yaml

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Ran as written, in order, in a scratch copy of the checkout; a `run` line ran only when it
# stops in the data half (seconds). The others - whole trainings and the blocking `serve` - are
# parsed exactly as click will parse them: CI runs the main job's line itself, and the serve and
# pipeline tests run those commands in full.
CHEAP_RUN = re.compile(r"--until (sources|cleaning|pairing|validation)\b")
NOT_RUN_HERE = {"install", "test", "serve"}
# Code spans that look like `key: value` but are no recipe's: an OpenAI request body field.
NOT_RECIPE = {"response_format: {type: json_object}"}


def sh_lines(path: Path) -> list[str]:
    """The command lines of every ```sh block, without comments."""
    lines, inside = [], False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            inside = line.strip() == "```sh"
            continue
        command = re.sub(r"(^|\s)#.*$", "", line).strip() if inside else ""
        if command:
            lines.append(command)
    return lines


def readme_commands() -> list[str]:
    return sh_lines(ROOT / "README.md")


def test_readme_never_uses_a_bare_recipe_command():
    commands = readme_commands()
    assert len(commands) >= 10
    bare = [c for c in commands if c.split()[0] == "recipe"]
    assert not bare, f"`recipe` is not on PATH after `make install`: write .venv/bin/recipe in {bare}"
    assert {c.split()[0] for c in commands} <= {".venv/bin/recipe", "make"}


def test_make_install_provides_what_the_readme_calls():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["recipe"] == "runner.cli:main"
    dry = subprocess.run(["make", "-n", "install", "test"], cwd=ROOT, capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr
    assert "-m venv .venv" in dry.stdout and '.venv/bin/pip install -q -e ".[dev]"' in dry.stdout
    for command in readme_commands():
        if command.startswith("make "):
            assert subprocess.run(["make", "-n", *command.split()[1:]], cwd=ROOT,
                                  capture_output=True).returncode == 0, command


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A checkout as a user has it after `make install`: .venv, recipes/ (copied: init writes there)."""
    folder = tmp_path_factory.mktemp("readme")
    (folder / ".venv").symlink_to(ROOT / ".venv")
    shutil.copytree(ROOT / "recipes", folder / "recipes")
    return folder


def _parses(command: str) -> None:
    """Parse the line exactly as click will, without running it (UsageError if it cannot)."""
    import click
    name, *rest = shlex.split(command)[1:]
    sub = main.get_command(click.Context(main), name)
    assert sub is not None, f"no command {name!r}: {command}"
    with sub.make_context(name, rest):
        pass


def test_readme_commands_work_as_written(workdir, monkeypatch):
    monkeypatch.chdir(workdir)  # what the lines name (files, folders) is relative to the checkout
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RECIPE_CACHE": str(workdir / "cache")}
    env.pop("PYTHONPATH", None)  # as a user's shell has it: the installed command finds the package
    ran = []
    for command in readme_commands():
        if command.startswith("make "):
            continue
        subcommand = shlex.split(command)[1]
        if subcommand in NOT_RUN_HERE or (subcommand == "run" and not CHEAP_RUN.search(command)):
            _parses(command)
            continue
        done = subprocess.run(["bash", "-c", command], cwd=workdir, env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
        assert "Traceback" not in done.stderr
        ran.append(subcommand)
    assert {"validate", "plan", "run", "show", "steps", "schema", "init", "diff"} <= set(ran)


def test_init_without_base_writes_a_scaffold_that_runs_as_written(workdir):
    made = run_cli("init", "my_scaffold", cwd=workdir)
    assert made.returncode == 0, made.stderr
    recipe = workdir / "recipes" / "my_scaffold.yaml"
    header = recipe.read_text().splitlines()[1]
    assert header.startswith("# Run: ") and header.endswith("run recipes/my_scaffold.yaml")
    data = load_and_validate(recipe).data
    assert data["pairing"]["strategy"] == "heading_sections"  # not the weak sentence pairing
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(["bash", "-c", header.removeprefix("# Run: ")], cwd=workdir,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    pairs = (workdir / "runs" / "my_scaffold" / "validation" / "pairs.jsonl").read_text().splitlines()
    assert len(pairs) >= 20
    # its commented-out local source, uncommented, points at the checkout's docs/, not recipes/docs/
    local = re.search(r'#   paths: \["([^"]+)"\]', recipe.read_text()).group(1)
    assert (recipe.parent / local).resolve() == (workdir / "docs" / "**" / "*.md").resolve()
    assert run_cli("init", "bad name!", cwd=workdir).returncode == 2


def code_spans(path: Path) -> list[tuple[str, str]]:
    """(file, `key: value`) for every inline code span that sets a recipe key, and ```yaml blocks."""
    text = path.read_text()
    found = [(path.name, block) for block in re.findall(r"```yaml\n(.*?)```", text, re.S)]
    prose = re.sub(r"```(sh|yaml)\n.*?```", "", text, flags=re.S)  # the README tree's spans count
    for span in re.findall(r"`([^`\n]+)`", prose):
        if re.match(r"^[a-z_][a-z0-9_.]*: \S", span) and span not in NOT_RECIPE:
            found.append((path.name, span))
    return found


SNIPPETS = list(dict.fromkeys(snippet for doc in DOCS for snippet in code_spans(doc)))
BASE = {"name": "snippet", "sources": [{"type": "local", "paths": ["*.md"]}]}


def _subschemas(node: dict, key: str):
    """Every schema node that a property named `key` can have, anywhere in the recipe schema."""
    node = _deref(node)
    for name, sub in node.get("properties", {}).items():
        if name == key:
            yield _deref(sub)
    for child in [*node.get("properties", {}).values(), node.get("items"), node.get("then"),
                  node.get("else"), *node.get("allOf", []), *node.get("anyOf", [])]:
        if isinstance(child, dict):
            yield from _subschemas(child, key)


def _valid_somewhere(dotted: str, value) -> bool:
    from jsonschema import Draft202012Validator
    first, *rest = dotted.split(".")
    for node in _subschemas(schema(), first):
        for part in rest:
            node = _deref(node.get("properties", {}).get(part, {}))
        if node and Draft202012Validator({**node, "$defs": schema()["$defs"]}).is_valid(value):
            return True
    return False


def test_the_docs_have_recipe_snippets():
    assert len(SNIPPETS) >= 8 and any("{{" in s for _, s in SNIPPETS)


@pytest.mark.parametrize("where,snippet", SNIPPETS, ids=[f"{w}:{s[:40]}" for w, s in SNIPPETS])
def test_every_recipe_snippet_in_the_docs_validates(where, snippet, tmp_path):
    value, _, problems = parse_yaml(snippet, where)
    assert not problems and isinstance(value, dict), problems
    for key, setting in value.items():
        if key in schema()["properties"] and "." not in key:
            # a top-level key: load it in a whole recipe, templates and extends included
            (tmp_path / "base.yaml").write_text(json.dumps(BASE))  # for `extends: base.yaml`
            recipe = tmp_path / "r.yaml"
            recipe.write_text(json.dumps({**BASE, key: setting}))
            load_and_validate(recipe)
        else:
            assert _valid_somewhere(key, setting), f"{where}: `{snippet}` sets no valid recipe key"
