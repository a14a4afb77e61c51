"""Render a resolved recipe as YAML with the origin of every value as a comment."""

from __future__ import annotations

import yaml


def _scalar(value) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6, allow_unicode=True)
    return text.strip().removesuffix("...").strip()


def render(loaded) -> str:
    lines: list[str] = [f"# resolved from {', '.join(str(p) for p in loaded.files)}"]

    def origin(path) -> str:
        found = loaded.origins.get(path)
        return f"  # {found}" if found else "  # default"

    def walk(value, path, indent):
        pad = "  " * indent
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, child in items:
            head = f"{pad}{key}:" if isinstance(value, dict) else f"{pad}-"
            sub = path + (key,)
            if isinstance(child, (dict, list)) and child:
                lines.append(head + origin(sub))
                walk(child, sub, indent + 1)
            else:
                lines.append(f"{head} {_scalar(child)}{origin(sub)}")

    walk(loaded.data, (), 0)
    return "\n".join(lines) + "\n"
