"""Schema validation with located, fixable messages, and filling in the schema's defaults."""

from __future__ import annotations

import difflib
import functools
import json
from pathlib import Path

from runner.errors import Problem, RecipeError
from runner.loader import Loaded, load_recipe
from runner.yamlsafe import render_path

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schemas" / "recipe.schema.json"


@functools.lru_cache(maxsize=1)
def schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


@functools.lru_cache(maxsize=1)
def _validator():
    from jsonschema import Draft202012Validator
    return Draft202012Validator(schema())


def _deref(node: dict) -> dict:
    while "$ref" in node:
        node = schema()["$defs"][node["$ref"].rsplit("/", 1)[-1]]
    return node


def raw_paths() -> frozenset:
    """Paths (list indices as '*') of strings the loader must not render: step-time templates."""
    found = set()

    def walk(node, path, depth=0):
        node = _deref(node)
        if node.get("x-recipe-raw"):
            found.add(path)
        for key, sub in node.get("properties", {}).items():
            walk(sub, path + (key,), depth)
        if isinstance(node.get("items"), dict):
            walk(node["items"], path + ("*",), depth)
        for branch in node.get("allOf", []) + node.get("anyOf", []) + node.get("oneOf", []):
            for part in ("then", "else"):
                if part in branch:
                    walk(branch[part], path, depth)
            walk(branch, path, depth)
    walk(schema(), ())
    return frozenset(found)


def check(loaded: Loaded) -> list[Problem]:
    """Every schema violation, located in the file (or --set) that set the value."""
    problems = [_problem(loaded, error) for error in _validator().iter_errors(loaded.data)]
    return sorted(problems, key=lambda p: (p.file, p.line or 0, p.col or 0, p.path))


def _problem(loaded: Loaded, error) -> Problem:
    path = tuple(error.absolute_path)
    kind, value = error.validator, error.instance
    if kind in ("additionalProperties", "unevaluatedProperties"):
        allowed = sorted(error.schema.get("properties", {}))
        extra = [k for k in value if k not in allowed] if isinstance(value, dict) else []
        key = extra[0] if extra else "?"
        return loaded.problem(path + (key,), f"unknown key '{key}'",
                              _suggest(key, allowed, "allowed keys: " + ", ".join(allowed)))
    if kind == "enum":
        options = [str(o) for o in error.validator_value]
        return loaded.problem(path, f"{value!r} is not one of: {', '.join(options)}",
                              _suggest(str(value), options, ""))
    if kind == "const":
        return loaded.problem(path, f"{value!r} must be {error.validator_value!r}")
    if kind == "type":
        wanted = error.validator_value
        wanted = " or ".join(wanted) if isinstance(wanted, list) else wanted
        return loaded.problem(path, f"expected {wanted}, got {type(value).__name__} {value!r}",
                              _description(error.schema))
    if kind == "required":
        missing = error.message.split("'")[1] if "'" in error.message else "?"
        where = loaded.origin(path)
        return Problem(where.file, where.line, where.col, render_path(path + (missing,)),
                       f"missing required key '{missing}'",
                              _description(_deref(error.schema).get("properties", {}).get(missing, {})))
    if kind in ("anyOf", "oneOf") and error.context:
        from jsonschema.exceptions import best_match
        return _problem(loaded, best_match(error.context))
    return loaded.problem(path, error.message, _description(error.schema))


def _suggest(word: str, options: list[str], fallback: str) -> str:
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else fallback


def _description(node: dict) -> str:
    text = node.get("description", "") if isinstance(node, dict) else ""
    return f"this key: {text}" if text else ""


def fill_defaults(instance, node: dict, top: bool = True):
    """Insert the schema's defaults for absent keys (absent top-level sections stay absent)."""
    from jsonschema import Draft202012Validator
    node = _deref(node)
    if isinstance(instance, dict):
        props = dict(node.get("properties", {}))
        for branch in node.get("allOf", []):
            if "if" in branch:
                chosen = "then" if Draft202012Validator(branch["if"]).is_valid(instance) else "else"
                props.update(_deref(branch.get(chosen, {})).get("properties", {}))
        for key, sub in props.items():
            sub = _deref(sub)
            skip = top and (sub.get("type") == "object" or key in ("extends", "$schema"))
            if key not in instance and "default" in sub and not skip:
                instance[key] = json.loads(json.dumps(sub["default"]))
            if key in instance:
                fill_defaults(instance[key], sub, top=False)
    elif isinstance(instance, list) and isinstance(node.get("items"), dict):
        for item in instance:
            fill_defaults(item, node["items"], top=False)
    return instance


def load_and_validate(path, overrides=()) -> Loaded:
    """Load a recipe, validate it against the schema and the step registry, fill defaults."""
    loaded = load_recipe(path, overrides, raw_paths())
    problems = check(loaded)
    if problems:
        raise RecipeError(problems)
    fill_defaults(loaded.data, schema())
    from runner.plan import check_sections, settings_sections_used
    problems = check_sections(loaded)
    if problems:
        raise RecipeError(problems)
    for section in sorted(settings_sections_used(loaded.data)):
        # a step reads settings of a section the recipe omits: it takes the defaults
        loaded.data[section] = fill_defaults({}, schema()["properties"][section], top=False)
    return loaded
