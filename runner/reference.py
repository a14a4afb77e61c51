"""Generate docs/recipe-reference.md from the JSON Schema (`make docs`; a test keeps it current)."""

from __future__ import annotations

import json

from runner.validate import _deref, schema

SECTIONS_INTRO = ("Every key of a recipe, generated from `schemas/recipe.schema.json` "
                  "(do not edit by hand: run `make docs`).")


def _type(node: dict) -> str:
    node = _deref(node)
    if "enum" in node:
        return " \\| ".join(f"`{json.dumps(v)}`" for v in node["enum"])
    if "const" in node:
        return f"`{json.dumps(node['const'])}`"
    kind = node.get("type", "any")
    kind = " or ".join(kind) if isinstance(kind, list) else kind
    if kind == "array" and isinstance(node.get("items"), dict):
        return f"list of {_type(node['items'])}"
    if "anyOf" in node:
        return " or ".join(_type(branch) for branch in node["anyOf"])
    return kind


def _limits(node: dict) -> str:
    parts = []
    for key, label in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="),
                       ("exclusiveMaximum", "<"), ("minItems", "items >="), ("pattern", "matches")):
        if key in node:
            parts.append(f"{label} `{node[key]}`")
    return ", ".join(parts)


def _rows(node: dict, prefix: str, rows: list) -> None:
    node = _deref(node)
    props = dict(node.get("properties", {}))
    variants = []
    for branch in node.get("allOf", []):
        cond = branch.get("if", {}).get("properties", {})
        label = ", ".join(f"{k}={v.get('const', 'other')}" for k, v in cond.items())
        then = _deref(branch.get("then", {}))
        variants.append((label, then.get("properties", {})))
    for key, sub in props.items():
        _row(prefix + key, sub, rows, "")
    for label, branch_props in variants:
        for key, sub in branch_props.items():
            if key not in props:
                _row(prefix + key, sub, rows, f" (when {label})")


def _row(path: str, sub: dict, rows: list, when: str) -> None:
    sub = _deref(sub)
    default = json.dumps(sub["default"]) if "default" in sub else "required"
    if len(default) > 60:
        default = default[:57] + "..."
    desc = sub.get("description", "").replace("|", "\\|").replace("\n", " ")
    limits = _limits(sub)
    rows.append(f"| `{path}`{when} | {_type(sub)} | `{default}` | {desc}"
                f"{' (' + limits + ')' if limits else ''} |")
    if sub.get("type") == "object" and "properties" in sub:
        _rows(sub, path + ".", rows)
    items = sub.get("items")
    if isinstance(items, dict) and (_deref(items).get("properties") or _deref(items).get("allOf")):
        _rows(items, path + "[].", rows)


def render() -> str:
    root = schema()
    lines = ["# Recipe reference", "", SECTIONS_INTRO, ""]
    for section, sub in root["properties"].items():
        if section == "$schema":
            continue
        node = _deref(sub)
        lines += [f"## `{section}`", "", node.get("description", ""), "",
                  "| key | type | default | meaning |", "| --- | --- | --- | --- |"]
        rows: list[str] = []
        _row(section, sub, rows, "")
        lines += rows + [""]
    return "\n".join(lines)


if __name__ == "__main__":
    print(render(), end="")
