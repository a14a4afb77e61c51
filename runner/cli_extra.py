"""Commands for sharing and serving: init, diff, serve."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from runner.infer.serve_guard import API_KEY_ENV, DEFAULT_LIMITS, limits_from_env


def register(main: click.Group) -> None:
    main.add_command(init)
    main.add_command(diff)
    main.add_command(serve)


# The data half of a fine-tune on documents every machine has, so it runs as written; the
# pairing is the heading-based one (sentence -> next sentence is the original's weaker pairing).
SCAFFOLD = """\
name: {name}
description: "{name}: the data half on Python's own docstrings; point sources at your documents"
# Next: add the model half (chat_template, model, lora, training, evaluation, export), e.g.
#   copy it from recipes/smollm2_python_docs.yaml, a real fine-tune on CPU, offline.

sources:
  - type: pydoc                  # docstrings of installed Python modules: there on every machine
    modules: [json, csv, pathlib, itertools, functools, collections, dataclasses, argparse]
  # - type: local                # your own documents (Markdown, HTML, reST, text, JSONL);
  #   paths: ["{docs_glob}"]   # paths are relative to this file

cleaning:
  keep_headings: true            # heading_sections pairing reads the headings
  splitter: smart

pairing:
  strategy: heading_sections     # a heading (as a question) -> the text of its section
  response_min_chars: 60

validation:
  dedup: exact
  near_dedup: {{enabled: true, threshold: 0.9}}
"""


@click.command()
@click.argument("name")
@click.option("--from", "base", type=click.Path(exists=True, dir_okay=False),
              help="Recipe the new one extends (without it: a scaffold that runs as written).")
@click.option("--dir", "folder", default="recipes", show_default=True, help="Where to write it.")
def init(name, base, folder):
    """Write a new recipe NAME.yaml: extending a base recipe, or a scaffold that runs as written."""
    import os
    import re
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", name):
        _refuse(f"'{name}' cannot be a recipe name: use letters, digits, '.', '_' or '-'")
    target = Path(folder) / f"{name}.yaml"
    if target.exists():
        _refuse(f"{target} exists; pick another name or delete it")
    here = Path(folder).resolve()
    schema_ref = os.path.relpath(Path(__file__).resolve().parent.parent / "schemas"
                                 / "recipe.schema.json", here)
    lines = [f"# yaml-language-server: $schema={schema_ref}",
             f"# Run: {_recipe_command()} run {target}"]
    if base:
        lines += [f"name: {name}", f"extends: {os.path.relpath(Path(base).resolve(), here)}",
                  "# Override only what differs from the base, e.g.:", "# training:\n#   max_steps: 30"]
    else:
        docs_glob = os.path.relpath(Path.cwd() / "docs", here) + "/**/*.md"
        lines.append(SCAFFOLD.format(name=name, docs_glob=docs_glob).rstrip("\n"))
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("\n".join(lines) + "\n", encoding="utf-8")
    click.echo(f"wrote {target}")


def _recipe_command() -> str:
    """How this shell can start the `recipe` command, for the header of a new recipe."""
    import os
    import shutil
    import sys
    script = Path(sys.executable).parent / "recipe"
    on_path = shutil.which("recipe")
    if on_path and script.is_file() and Path(on_path).resolve() == script.resolve():
        return "recipe"
    if script.is_file():
        relative = os.path.relpath(script, Path.cwd())
        return relative if relative.startswith("..") or "/" in relative else f"./{relative}"
    return f"{sys.executable} -m runner"


def _refuse(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


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
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0: every interface; set an API key first).")
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--max-waiting", default=DEFAULT_LIMITS.max_waiting, show_default=True,
              type=click.IntRange(min=0), help="Requests queued behind the one generating; more get 503.")
@click.option("--max-body-bytes", default=DEFAULT_LIMITS.max_body_bytes, show_default=True,
              type=click.IntRange(min=1), help="Largest request body; larger gets 413.")
@click.option("--max-tokens", default=DEFAULT_LIMITS.max_tokens, show_default=True,
              type=click.IntRange(min=1), help="Largest max_tokens a request may ask; larger gets 400.")
@click.option("--api-key-env", default=API_KEY_ENV, show_default=True, metavar="NAME",
              help="Environment variable holding the API key; when it is set, requests need "
                   "`Authorization: Bearer <key>`.")
@click.option("--quiet", "-q", is_flag=True)
def serve(target, host, port, max_waiting, max_body_bytes, max_tokens, api_key_env, quiet):
    """Serve a run folder (runs/NAME) or a model path over HTTP (OpenAI-compatible)."""
    try:
        from runner.infer.serve import serve as start
    except ImportError as exc:
        click.echo(f"error: serving is unavailable: {exc}", err=True)
        sys.exit(1)
    limits = limits_from_env(max_waiting, max_body_bytes, max_tokens, api_key_env)
    start(target, host=host, port=port, quiet=quiet, limits=limits)
