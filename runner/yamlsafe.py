"""Safe YAML reading that remembers where every value came from.

PyYAML's safe loader still accepts duplicate keys (the last wins) and expands aliases without
limit. Recipes are shared between teams, so here a duplicate key is an error, only plain data
tags are allowed, and alias expansion is capped (a billion-laughs file fails fast).

Plain scalars are typed by the YAML 1.2 core schema, not PyYAML's YAML 1.1 rules: `2e-4` and
`1e5` are numbers (1.1 reads them as strings), `010` is ten, and `yes`/`on` stay strings.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import yaml

from runner.errors import Problem, quoted

MAX_VALUES = 100_000
_TAG = "tag:yaml.org,2002:"
_PLAIN_TAGS = {_TAG + t for t in
               ("str", "int", "float", "bool", "null", "timestamp", "seq", "map", "merge")}

# The YAML 1.2 core schema (https://yaml.org/spec/1.2.2/#1032-tag-resolution), plus the `<<`
# merge key, which recipes may use and which YAML 1.2 dropped.
CORE_RESOLVERS = (
    ("bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
    ("null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
    ("int", r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", "-+0123456789"),
    ("float", r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
              r"|[-+]?\.(?:inf|Inf|INF)|\.nan|\.NaN|\.NAN)$", "-+0123456789."),
    ("merge", r"^<<$", "<"),
)


# libyaml's parser when PyYAML was built with it: composing is most of `recipe validate`'s time,
# and the C parser is several times faster than the pure-Python one (same nodes, same marks).
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class CoreLoader(_SAFE_LOADER):
    """SafeLoader whose plain scalars resolve by the YAML 1.2 core schema."""


CoreLoader.yaml_implicit_resolvers = {}
for _name, _pattern, _first in CORE_RESOLVERS:
    CoreLoader.add_implicit_resolver(_TAG + _name, re.compile(_pattern), list(_first))


class CoreDumper(yaml.SafeDumper):
    """SafeDumper that quotes a string a YAML 1.1 or a YAML 1.2 reader would take for a number,
    boolean or null, so what it writes reads back the same everywhere."""


CoreDumper.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeDumper.yaml_implicit_resolvers.items()}
for _name, _pattern, _first in CORE_RESOLVERS:
    CoreDumper.add_implicit_resolver(_TAG + _name, re.compile(_pattern), list(_first))


def dump(data, **options) -> str:
    """YAML text of plain data, readable back unchanged by parse_yaml (and any YAML reader)."""
    return yaml.dump(data, Dumper=CoreDumper, sort_keys=False, allow_unicode=True, **options)


def core_scalar(tag: str, text: str):
    """The value of a scalar of a plain-data tag, as the YAML 1.2 core schema reads it."""
    kind = tag.removeprefix(_TAG)
    if kind == "null":
        return None
    if kind == "bool":
        if text.lower() not in ("true", "false"):
            raise ValueError(f"{text!r} is not true or false")
        return text.lower() == "true"
    if kind == "int":
        body = text.lstrip("+-")
        sign = -1 if text.startswith("-") else 1
        if body[:2] in ("0o", "0x"):
            return sign * int(body[2:], 8 if body[1] == "o" else 16)
        return sign * int(body, 10)
    if kind == "float":
        special = text.lstrip("+-").lower()
        if special in (".inf", ".nan"):
            value = math.inf if special == ".inf" else math.nan
            return -value if text.startswith("-") else value
        return float(text)
    return text  # str, and timestamps: the schema says which keys take dates


@dataclass(frozen=True)
class Origin:
    file: str
    line: int | None
    col: int | None

    def __str__(self) -> str:
        return self.file if self.line is None else f"{self.file}:{self.line}:{self.col}"


class _Builder:
    def __init__(self, file: str):
        self.file = file
        self.origins: dict[tuple, Origin] = {}
        self.problems: list[Problem] = []
        self.count = 0

    def origin(self, node) -> Origin:
        mark = node.start_mark
        return Origin(self.file, mark.line + 1, mark.column + 1)

    def problem(self, node, path, message, hint=""):
        o = self.origin(node)
        self.problems.append(Problem(self.file, o.line, o.col, render_path(path), message, hint))

    def build(self, node, path: tuple):
        self.count += 1
        if self.count > MAX_VALUES:
            raise _TooLarge(node)
        if node.tag not in _PLAIN_TAGS:
            self.problem(node, path, f"the tag {node.tag.replace('tag:yaml.org,2002:', '!!')} is not allowed",
                         "a recipe holds plain data only (strings, numbers, booleans, lists, mappings); "
                         "remove the tag")
            return None
        if isinstance(node, yaml.MappingNode):
            return self.build_mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            items = []
            for index, child in enumerate(node.value):
                self.origins[path + (index,)] = self.origin(child)
                items.append(self.build(child, path + (index,)))
            return items
        try:
            return core_scalar(node.tag, node.value)
        except ValueError:
            self.problem(node, path, f"{quoted(node.value)} cannot be read as "
                         f"{node.tag.replace(_TAG, '!!')}", "fix the value or remove the tag")
            return None

    def build_mapping(self, node, path: tuple) -> dict:
        result: dict = {}
        first_seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag.endswith(":merge"):
                merged = self.build(value_node, path)
                for part in merged if isinstance(merged, list) else [merged]:
                    for k, v in (part or {}).items():
                        result.setdefault(k, v)
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                self.problem(key_node, path, "a key must be a plain string")
                continue
            key = key_node.value
            if key in first_seen:
                self.problem(key_node, path + (key,), f"duplicate key '{key}' "
                             f"(first set on line {first_seen[key]})",
                             "keep one of them: YAML would silently use the last")
                continue
            first_seen[key] = key_node.start_mark.line + 1
            self.origins[path + (key,)] = self.origin(key_node)
            result[key] = self.build(value_node, path + (key,))
        return result


class _TooLarge(Exception):
    def __init__(self, node):
        self.node = node


def parse_yaml(text: str, file: str, root_path: tuple = ()) -> tuple[object, dict, list[Problem]]:
    """Parse one YAML document into (data, origins by path, problems)."""
    builder = _Builder(file)
    try:
        node = yaml.compose(text, Loader=CoreLoader)
    except yaml.MarkedYAMLError as exc:
        return None, {}, [_syntax_problem(exc, file, text)]
    if node is None:
        return {}, {}, []
    builder.origins[root_path] = builder.origin(node)
    try:
        data = builder.build(node, root_path)
    except _TooLarge as exc:
        o = builder.origin(exc.node)
        return None, {}, [Problem(file, o.line, o.col, render_path(root_path),
                                  f"aliases expand to more than {MAX_VALUES:,} values",
                                  "a recipe never needs this many; this looks like an alias bomb "
                                  "(billion laughs): remove the nested aliases")]
    return data, builder.origins, builder.problems


def _syntax_problem(exc: yaml.MarkedYAMLError, file: str, text: str) -> Problem:
    mark = exc.problem_mark or exc.context_mark
    line, col = (mark.line + 1, mark.column + 1) if mark else (None, None)
    message = f"YAML syntax error: {exc.problem or exc.context}"
    hint = "check the indentation and quoting around this line"
    source_line = text.splitlines()[line - 1] if line and line <= len(text.splitlines()) else ""
    if "\t" in (exc.problem or "") or "\t" in source_line[: (col or 1)]:
        hint = "YAML does not allow tabs for indentation: indent with spaces"
    return Problem(file, line, col, "$", message, hint)


def render_path(path: tuple) -> str:
    text = "$"
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text
