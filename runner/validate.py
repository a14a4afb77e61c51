"""Schema validation with located, fixable messages, and filling in the schema's defaults."""

from __future__ import annotations

import difflib
import functools
import json
from pathlib import Path

from runner.errors import Problem, RecipeError, quoted
from runner.loader import Loaded, load_recipe
from runner.yamlsafe import render_path

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schemas" / "recipe.schema.json"
YAML_11_BOOLEANS = {"yes", "no", "on", "off", "y", "n"}  # booleans to PyYAML, strings to YAML 1.2


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
    errors = list(_validator().iter_errors(loaded.data))
    # a bad selector value fails both its enum and the const of a conditional branch: say it once
    enum_paths = {tuple(e.absolute_path) for e in errors if e.validator == "enum"}
    errors = [e for e in errors if not (e.validator == "const" and tuple(e.absolute_path) in enum_paths)]
    return _in_order([_problem(loaded, error) for error in errors])


def _in_order(problems: list[Problem]) -> list[Problem]:
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
        return loaded.problem(path, f"{quoted(value)} is not one of: {', '.join(options)}",
                              _suggest(str(value), options, ""))
    if kind == "const":
        return loaded.problem(path, f"{quoted(value)} must be {error.validator_value!r}")
    if kind == "type":
        wanted = error.validator_value
        wanted = " or ".join(wanted) if isinstance(wanted, list) else wanted
        hint = _description(error.schema)
        if "boolean" in wanted and str(value).lower() in YAML_11_BOOLEANS:
            hint = f"YAML 1.2 reads {value} as a string: write true or false"
        return loaded.problem(path, f"expected {wanted}, got {type(value).__name__} {quoted(value)}", hint)
    if kind == "required":
        missing = error.message.split("'")[1] if "'" in error.message else "?"
        where = loaded.origin(path)
        return Problem(where.file, where.line, where.col, render_path(path + (missing,)),
                       f"missing required key '{missing}'",
                              _description(_deref(error.schema).get("properties", {}).get(missing, {})))
    if kind in ("anyOf", "oneOf") and error.context:
        from jsonschema.exceptions import best_match
        return _problem(loaded, best_match(error.context))
    # jsonschema's own messages start with the whole value's repr: quote it cut instead
    message = error.message.replace(repr(value), quoted(value), 1)
    return loaded.problem(path, message, _description(error.schema))


def _suggest(word: str, options: list[str], fallback: str) -> str:
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else fallback


def _description(node: dict) -> str:
    text = node.get("description", "") if isinstance(node, dict) else ""
    return f"this key: {text}" if text else ""


def fill_defaults(instance, node: dict, top: bool = True):
    """Insert the schema's defaults for absent keys (absent top-level sections stay absent), and
    make whole numbers of integer keys ints (YAML 1.2 reads `1e5` as a float; steps want ints)."""
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
                instance[key] = _declared_integer(instance[key], sub)
                fill_defaults(instance[key], sub, top=False)
    elif isinstance(instance, list) and isinstance(node.get("items"), dict):
        for index, item in enumerate(instance):
            instance[index] = _declared_integer(item, _deref(node["items"]))
            fill_defaults(instance[index], node["items"], top=False)
    return instance


def _declared_integer(value, node: dict):
    kinds = node.get("type")
    kinds = kinds if isinstance(kinds, list) else [kinds]
    whole = isinstance(value, float) and value.is_integer()
    return int(value) if whole and "integer" in kinds and "number" not in kinds else value


def load_and_validate(path, overrides=()) -> Loaded:
    """Load a recipe, validate it against the schema and the step registry, fill defaults."""
    loaded = load_recipe(path, overrides, raw_paths(), keep_problems=True)
    seen = {p.path for p in loaded.problems}
    # a value already reported by the loader (a failed template, say) is not reported twice
    problems = loaded.problems + [p for p in check(loaded) if p.path not in seen]
    if problems:
        raise RecipeError(_in_order(problems))
    fill_defaults(loaded.data, schema())
    from runner.plan import check_sections, settings_sections_used
    problems = check_sections(loaded)
    if problems:
        raise RecipeError(problems)
    for section in sorted(settings_sections_used(loaded.data)):
        # a step reads settings of a section the recipe omits: it takes the defaults
        loaded.data[section] = fill_defaults({}, schema()["properties"][section], top=False)
    return loaded
