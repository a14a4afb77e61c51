"""Loading: extends chains, --set overrides, env references, Jinja, origins, defaults, speed."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import pytest
from conftest import ROOT, run_cli

from runner.errors import RecipeError
from runner.validate import load_and_validate


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def chain(tmp_path):
    write(tmp_path / "base" / "base.yaml", """\
        name: base
        sources: [{type: local, paths: ["docs/*.md"]}]
        cleaning:
          splitter: original
          drop_sentences_containing: [a, b]
        pairing: {}
        validation: {}
        chat_template: {}
        training:
          max_steps: 60
          learning_rate: 0.0002
        """)
    write(tmp_path / "mid.yaml", """\
        extends: base/base.yaml
        name: mid
        cleaning:
          drop_sentences_containing: [c]
        """)
    return write(tmp_path / "child.yaml", """\
        extends: mid.yaml
        name: child
        description: "run {{ name }} for {{ training.max_steps }} steps"
        training:
          max_steps: 30
        """)


def test_extends_chain_merges_mappings_and_replaces_lists(chain):
    loaded = load_and_validate(chain)
    data = loaded.data
    assert data["name"] == "child"
    assert data["cleaning"]["splitter"] == "original"            # from the base
    assert data["cleaning"]["drop_sentences_containing"] == ["c"]  # list replaced by mid
    assert data["training"] == {**data["training"], "max_steps": 30, "learning_rate": 0.0002}
    assert data["description"] == "run child for 30 steps"
    assert "extends" not in data
    assert [p.name for p in loaded.files] == ["child.yaml", "mid.yaml", "base.yaml"]


def test_origins_point_at_the_file_that_set_each_value(chain):
    loaded = load_and_validate(chain)
    assert loaded.origin(("training", "max_steps")).file.endswith("child.yaml")
    assert loaded.origin(("training", "learning_rate")).file.endswith("base.yaml")
    assert loaded.origin(("cleaning", "drop_sentences_containing")).file.endswith("mid.yaml")


def test_set_overrides_are_typed_and_located(chain):
    loaded = load_and_validate(chain, ["training.max_steps=10", "lora.r=16", "training.fp16=true",
                                       "sources.0.paths=[a.md, b.md]"])
    assert loaded.data["training"]["max_steps"] == 10
    assert loaded.data["training"]["fp16"] is True
    assert loaded.data["sources"][0]["paths"] == ["a.md", "b.md"]
    assert str(loaded.origin(("training", "max_steps"))) == "--set"
    with pytest.raises(RecipeError) as info:
        load_and_validate(chain, ["training.max_steps=ten"])
    assert "--set: $.training.max_steps: expected integer" in str(info.value)


def test_defaults_are_filled_but_absent_sections_stay_absent(chain):
    data = load_and_validate(chain).data
    assert data["training"]["gradient_accumulation_steps"] == 4
    assert data["cleaning"]["rules"][0] == {"rule": "strip_html"}
    assert "evaluation" not in data and "export" not in data
    assert data["model"]["name"] == "unsloth/gpt-oss-20b"  # read by training: implied with defaults


def test_secrets_stay_references_in_show(tmp_path, monkeypatch):
    monkeypatch.setenv("RECIPE_TEST_SECRET", "s3cr3t-value")
    recipe = write(tmp_path / "r.yaml", """\
        name: secret
        sources: [{type: local, paths: ["*.md"]}]
        export:
          hub: {repo_id: "${env:RECIPE_TEST_SECRET}"}
        cleaning: {}
        pairing: {}
        validation: {}
        chat_template: {}
        training: {}
        """)
    result = run_cli("show", recipe, env={"RECIPE_TEST_SECRET": "s3cr3t-value"})
    assert result.returncode == 0, result.stderr
    assert "${env:RECIPE_TEST_SECRET}" in result.stdout
    assert "s3cr3t-value" not in result.stdout + result.stderr
    assert "# default" in result.stdout and "r.yaml:4" in result.stdout


def test_validate_is_fast_and_never_imports_torch():
    recipes = sorted(str(p) for p in (ROOT / "recipes").glob("*.yaml")) or [
        str(ROOT / "tests" / "broken" / "bases" / "with_error.yaml")]
    code = textwrap.dedent(f"""
        import sys, time
        start = time.process_time()  # CPU time: what validate costs, whatever else the machine runs
        from runner.cli import main
        try:
            main(["validate", *{recipes!r}], standalone_mode=False)
        except SystemExit:
            pass
        elapsed = time.process_time() - start
        heavy = [m for m in ("torch", "transformers", "trl", "datasets", "brightdata") if m in sys.modules]
        print("RESULT", elapsed, heavy)
        """)
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    wall = time.perf_counter() - start
    result = [line for line in out.stdout.splitlines() if line.startswith("RESULT")]
    assert result, out.stdout + out.stderr
    _, elapsed, heavy = result[0].split(" ", 2)
    assert heavy.strip() == "[]", out.stdout + out.stderr
    assert float(elapsed) < 0.5 and wall < 2.0, (elapsed, wall)


def test_schema_command_prints_the_schema():
    result = run_cli("schema")
    assert json.loads(result.stdout)["$schema"].endswith("2020-12/schema")


def test_every_schema_property_has_description_and_default():
    schema = json.loads((ROOT / "schemas" / "recipe.schema.json").read_text())
    missing = []

    def walk(node, path):
        if not isinstance(node, dict):
            return
        for key, sub in node.get("properties", {}).items():
            if "$ref" not in sub and not ("const" in sub and key in ("type", "rule", "strategy")):
                required = key in node.get("required", [])
                if "description" not in sub or ("default" not in sub and not required):
                    missing.append(f"{path}.{key}")
            walk(sub, f"{path}.{key}")
        for key in ("items", "then", "else"):
            walk(node.get(key), path)
        for branch in node.get("allOf", []) + node.get("anyOf", []):
            walk(branch, path)
        if node.get("type") == "object" and "properties" in node and "additionalProperties" not in node \
                and not node.get("allOf"):
            missing.append(f"{path} (additionalProperties)")
    walk(schema, "$")
    for name, node in schema["$defs"].items():
        walk(node, f"$defs.{name}")
    assert not missing, missing


def test_switching_a_sections_strategy_replaces_the_base_settings(tmp_path):
    write(tmp_path / "base.yaml", """\
        name: base
        sources: [{type: local, paths: ["*.md"]}]
        cleaning: {}
        pairing:
          strategy: consecutive_sentences
          instruction_max_chars: 150
        """)
    child = write(tmp_path / "child.yaml", """\
        extends: base.yaml
        pairing:
          strategy: heading_sections
          response_max_chars: 900
        """)
    loaded = load_and_validate(child)
    assert loaded.data["pairing"]["response_max_chars"] == 900
    assert "instruction_max_chars" not in loaded.data["pairing"]
    assert loaded.origin(("pairing", "strategy")).file.endswith("child.yaml")
    assert loaded.origin(("cleaning",)).file.endswith("base.yaml")
