"""Safe YAML reading that remembers where every value came from.

PyYAML's safe loader still accepts duplicate keys (the last wins) and expands aliases without
limit. Recipes are shared between teams, so here a duplicate key is an error, only plain data
tags are allowed, and alias expansion is capped (a billion-laughs file fails fast).
"""

from __future__ import annotations

from dataclasses import dataclass

import yaml
import yaml.constructor

from runner.errors import Problem

MAX_VALUES = 100_000
_PLAIN_TAGS = {f"tag:yaml.org,2002:{t}" for t in
               ("str", "int", "float", "bool", "null", "timestamp", "seq", "map", "merge")}


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
        self.constructor = yaml.constructor.SafeConstructor()

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
        if node.tag.endswith(":timestamp"):
            return node.value  # dates stay strings: the schema says which keys take dates
        return self.constructor.construct_object(node)

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
        node = yaml.compose(text, Loader=yaml.SafeLoader)
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
