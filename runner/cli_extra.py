"""Commands for sharing and serving: init, diff, serve."""

from __future__ import annotations

import sys
from pathlib import Path

import click


def register(main: click.Group) -> None:
    main.add_command(init)
    main.add_command(diff)
    main.add_command(serve)


@click.command()
@click.argument("name")
@click.option("--from", "base", type=click.Path(exists=True, dir_okay=False),
              help="Recipe the new one extends.")
@click.option("--dir", "folder", default="recipes", show_default=True, help="Where to write it.")
def init(name, base, folder):
    """Write a new recipe NAME.yaml that extends a base recipe."""
    import os
    target = Path(folder) / f"{name}.yaml"
    if target.exists():
        click.echo(f"error: {target} exists; pick another name or delete it", err=True)
        sys.exit(2)
    schema_ref = os.path.relpath(Path(__file__).resolve().parent.parent / "schemas"
                                 / "recipe.schema.json", Path(folder).resolve())
    lines = [f"# yaml-language-server: $schema={schema_ref}",
             f"# Run: recipe run {target}", f"name: {name}"]
    if base:
        lines.append(f"extends: {os.path.relpath(Path(base).resolve(), Path(folder).resolve())}")
        lines.append("# Override only what differs from the base, e.g.:")
        lines.append("# training:\n#   max_steps: 30")
    else:
        lines += ["sources:", "  - type: local", "    paths: [\"docs/**/*.md\"]",
                  "cleaning: {}", "pairing: {}", "validation: {}"]
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("\n".join(lines) + "\n", encoding="utf-8")
    click.echo(f"wrote {target}")


@click.command()
@click.argument("a", type=click.Path(dir_okay=False))
@click.argument("b", type=click.Path(dir_okay=False))
def diff(a, b):
    """Show the differences between two resolved recipes (defaults filled in)."""
    from runner.cli import _load
    left, right = _load(a).data, _load(b).data
    changes = list(_differences(left, right, ()))
    for path, old, new in changes:
        where = ".".join(str(p) for p in path)
        click.echo(f"{where}: {_fmt(old)} -> {_fmt(new)}")
    if not changes:
        click.echo("no differences")


_MISSING = object()


def _differences(left, right, path):
    if isinstance(left, dict) and isinstance(right, dict):
        for key in list(left) + [k for k in right if k not in left]:
            yield from _differences(left.get(key, _MISSING), right.get(key, _MISSING), path + (key,))
    elif left != right:
        yield path, left, right


def _fmt(value) -> str:
    return "(absent)" if value is _MISSING else repr(value)


@click.command()
@click.argument("target")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--quiet", "-q", is_flag=True)
def serve(target, host, port, quiet):
    """Serve a run folder (runs/NAME) or a model path over HTTP (OpenAI-compatible)."""
    try:
        from runner.infer.serve import serve as start
    except ImportError as exc:
        click.echo(f"error: serving is unavailable: {exc}", err=True)
        sys.exit(1)
    start(target, host=host, port=port, quiet=quiet)
