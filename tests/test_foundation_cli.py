"""Recipe reading and the command line, as a new user meets them: YAML 1.2 numbers (files and
--set), a --set typo located at --set, --force checked like --from, every problem reported at
once, quoted values cut short, and a range for every numeric key."""

from __future__ import annotations

import json
import textwrap

import pytest
from conftest import ROOT, run_cli

from runner.errors import RecipeError
from runner.validate import load_and_validate
from runner.yamlsafe import dump, parse_yaml

DATA_HALF = """\
name: cli
sources: [{type: local, paths: ["docs/*.md"]}]
cleaning: {}
pairing: {}
validation: {min_response_chars: 10}
"""


def write(path, text):
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def recipe(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text(
        "# Lists\n\n" + " ".join(f"Python lists keep their items in order, says rule {i}." for i in range(20)))
    return write(tmp_path / "cli.yaml", DATA_HALF + "chat_template: {}\ntraining: {}\n")


def test_numbers_read_as_yaml_1_2(tmp_path, recipe):
    text = recipe.read_text().replace("training: {}", "training:\n  learning_rate: 2e-4\n  max_steps: 1e2\n"
                                      "  warmup_steps: 010\n  weight_decay: .5e-1")
    data = load_and_validate(write(tmp_path / "numbers.yaml", text)).data["training"]
    assert data["learning_rate"] == 0.0002 and isinstance(data["learning_rate"], float)
    assert data["max_steps"] == 100 and isinstance(data["max_steps"], int)  # integer key: an int
    assert data["warmup_steps"] == 10 and data["weight_decay"] == 0.05     # 010 is ten, not octal 8
    values, _, problems = parse_yaml("a: yes\nb: on\nc: 1_000\nd: 0x1F\ne: 0o17\nf: -.inf\ng: 1e5", "x")
    assert not problems
    assert values == {"a": "yes", "b": "on", "c": "1_000", "d": 31, "e": 15, "f": float("-inf"), "g": 1e5}


def test_set_values_are_yaml_1_2_too(recipe):
    loaded = load_and_validate(recipe, ["training.learning_rate=1e-5", "training.max_steps=2E1"])
    assert loaded.data["training"]["learning_rate"] == 1e-5
    assert loaded.data["training"]["max_steps"] == 20
    shown = run_cli("show", recipe, "--set", "training.learning_rate=1e-5", "--set", "description='1e5'")
    assert shown.returncode == 0, shown.stderr
    assert "learning_rate: 1.0e-05  # --set" in shown.stdout
    assert "description: '1e5'  # --set" in shown.stdout  # a string stays one when read back


def test_what_is_written_reads_back_the_same():
    values = {"a": "1e5", "b": "yes", "c": "010", "d": 2e-4, "e": "0o17", "f": "plain", "g": True}
    assert parse_yaml(dump(values), "x")[0] == values


def test_set_typo_is_located_at_set(recipe):
    result = run_cli("validate", recipe, "--set", "trainig.max_steps=5")
    assert result.returncode == 2
    first = result.stderr.splitlines()[0]
    assert first.startswith("--set: $.trainig: unknown key 'trainig'"), result.stderr
    assert "did you mean 'training'?" in result.stderr and "cli.yaml:1" not in result.stderr


@pytest.mark.parametrize("command", ["run", "plan"])
def test_force_names_a_step_like_from_and_until(recipe, tmp_path, command):
    runs = tmp_path / "runs"
    result = run_cli(command, recipe, "--run-dir", runs, "--force", "bogus")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "--force bogus: no step named 'bogus'" in result.stderr and "sources, cleaning" in result.stderr
    assert not runs.exists() or not any(runs.rglob("*"))


def test_force_of_a_real_step_still_reruns_it(recipe, tmp_path):
    runs = ["--run-dir", tmp_path / "runs", "-q", "--until", "pairing"]
    assert run_cli("run", recipe, *runs).returncode == 0
    again = run_cli("run", recipe, *runs, "--force", "cleaning")
    assert again.returncode == 0, again.stderr
    manifest = json.loads((tmp_path / "runs" / "cli" / "manifest.json").read_text())
    assert manifest["steps"]["sources"]["status"] == "skipped"
    assert manifest["steps"]["cleaning"]["status"] == "ran"


def test_missing_env_var_does_not_hide_schema_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("RECIPE_TEST_UNSET", raising=False)
    recipe = write(tmp_path / "env.yaml", """\
        name: env
        sources: [{type: local, paths: ["*.md"]}]
        cleaning: {splitter: fancy}
        pairing: {}
        validation: {min_response_chars: -5}
        export:
          targets: [hub]
          hub: {repo_id: "${env:RECIPE_TEST_UNSET}"}
        """)
    with pytest.raises(RecipeError) as info:
        load_and_validate(recipe)
    found = {(p.line, p.path) for p in info.value.problems}
    assert found == {(3, "$.cleaning.splitter"), (5, "$.validation.min_response_chars"),
                     (8, "$.export.hub.repo_id")}, info.value
    result = run_cli("validate", recipe)
    assert result.returncode == 2 and "3 problem(s)" in result.stderr


def test_failed_template_is_reported_once_with_the_rest(tmp_path):
    recipe = write(tmp_path / "jinja.yaml", """\
        name: jinja
        description: "{{ nmae }}"
        sources: [{type: local, paths: ["*.md"]}]
        cleaning: {splitter: fancy}
        """)
    with pytest.raises(RecipeError) as info:
        load_and_validate(recipe)
    assert [p.path for p in info.value.problems] == ["$.description", "$.cleaning.splitter"]


def test_quoted_values_are_cut_to_a_readable_length(tmp_path):
    urls = [f"https://docs.python.org/3/library/module_number_{i}.html" for i in range(200)]
    recipe = write(tmp_path / "long.yaml", f"""\
        name: long
        sources:
          - type: http
            urls: {json.dumps(urls)}
            timeout: {json.dumps(urls)}
        cleaning: {{}}
        pairing: {{strategy: {json.dumps(urls)}}}
        validation: {{min_response_chars: "{'x' * 5000}"}}
        """)
    result = run_cli("validate", recipe)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len([ln for ln in lines if "(200 items)" in ln]) == 2, result.stderr
    assert "characters)" in result.stderr  # the 5,000-character string, cut
    assert max(len(ln) for ln in lines) < 300, max(lines, key=len)


def test_an_absurd_number_is_out_of_range(tmp_path):
    recipe = write(tmp_path / "huge.yaml", DATA_HALF.replace(
        "cleaning: {}", "cleaning: {min_sentence_chars: 1000000000000000000000000000000}"))
    result = run_cli("validate", recipe)
    assert result.returncode == 2
    assert "huge.yaml:3:12: $.cleaning.min_sentence_chars: 1000000000000000000000000000000 is greater " \
           "than the maximum of 100000" in result.stderr


def _numeric_keys(node, path=""):
    if isinstance(node, dict):
        kinds = node.get("type")  # under "properties", a key may itself be named "type"
        kinds = [kinds] if isinstance(kinds, str) else kinds if isinstance(kinds, list) else []
        if {"integer", "number"} & set(kinds):
            yield path, node
        for key, sub in node.items():
            yield from _numeric_keys(sub, f"{path}/{key}")
    elif isinstance(node, list):
        for index, sub in enumerate(node):
            yield from _numeric_keys(sub, f"{path}/{index}")


def test_every_numeric_key_has_a_range_that_holds_its_default():
    schema = json.loads((ROOT / "schemas" / "recipe.schema.json").read_text())
    unbounded, bad_default = [], []
    for path, node in _numeric_keys(schema):
        if path.endswith("extra_body/additionalProperties"):
            continue  # passed through to the teacher's API as written; the API sets its limits
        low = node.get("minimum", node.get("exclusiveMinimum"))
        high = node.get("maximum", node.get("exclusiveMaximum"))
        if low is None or high is None:
            unbounded.append(path)
        elif isinstance(node.get("default"), (int, float)) and not low <= node["default"] <= high:
            bad_default.append(path)
    assert not unbounded, f"give these numeric keys a minimum and a maximum: {unbounded}"
    assert not bad_default, f"these defaults are outside their own range: {bad_default}"
