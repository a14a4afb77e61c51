"""Running the sources step by hand in tests (a StepContext with the schema's defaults filled),
and a Sphinx-shaped HTML page for the http and local tests."""

from __future__ import annotations

import copy
import itertools
import json
from pathlib import Path

from runner.registry import StepContext

_runs = itertools.count()
PYTHON_DOCS = Path("/usr/share/doc/python3.11/html")      # Debian's python3.11-doc, if installed


def make_ctx(tmp_path: Path, entries: list[dict], *, force: bool = False,
             recipe_dir: Path | None = None) -> StepContext:
    from runner.validate import fill_defaults, schema

    filled = fill_defaults(copy.deepcopy(entries), schema()["properties"]["sources"], top=False)
    run_dir = tmp_path / "runs" / "test"
    return StepContext(recipe_name="test", step="sources", key="test", settings={"entries": filled},
                       sections={}, inputs={}, out_dir=run_dir / "unused", run_dir=run_dir,
                       cache_dir=run_dir / "cache" / "sources",
                       recipe_dir=recipe_dir or tmp_path, force=force, quiet=True)


def run_sources(ctx: StepContext) -> tuple[dict, list[dict], list[dict]]:
    """Run the step into a fresh output folder, as the executor does: (metrics, docs, outcomes)."""
    from runner.registry import lookup

    ctx.out_dir = ctx.run_dir / f".sources.tmp-{next(_runs)}"
    ctx.out_dir.mkdir(parents=True)
    ctx.cache_dir.mkdir(parents=True, exist_ok=True)
    metrics = lookup("sources", ctx.settings).func(ctx)
    json.dumps(metrics)                       # metrics must be JSON-able
    return metrics, read_rows(ctx.out_dir / "documents.jsonl"), read_rows(ctx.out_dir / "outcomes.jsonl")


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def sphinx_page(title: str, number: int) -> str:
    """A page shaped like Sphinx's output: navigation, main body, sidebar, footer."""
    return f"""<!DOCTYPE html><html><head><title>{title} &#8212; Python 3.11 documentation</title>
<script>var x = 1;</script></head><body>
<div class="related" role="navigation"><h3>Navigation</h3><ul><li><a href="../genindex.html">index</a></li>
<li><a href="next.html">next</a> |</li></ul></div>
<div class="document"><div class="documentwrapper"><div class="bodywrapper">
<div class="body" role="main"><section id="s{number}">
<h1>{number}. {title}<a class="headerlink" href="#s{number}" title="Permalink">¶</a></h1>
<p>This chapter about {title.lower()} explains the topic with several plain sentences.</p>
<section id="s{number}-1"><h2>{number}.1. First part of {title.lower()}<a class="headerlink" href="#s{number}-1">¶</a></h2>
<p>The first part shows an example of the feature in the interactive interpreter.</p>
<div class="highlight-python3"><div class="highlight"><pre><span class="gp">&gt;&gt;&gt; </span>x = {number}
<span class="gp">&gt;&gt;&gt; </span>print(x)
{number}</pre></div></div></section></section></div></div></div>
<div class="sphinxsidebar" role="navigation"><h3><a href="../contents.html">Table of Contents</a></h3>
<h4>Previous topic</h4><p>earlier chapter</p><h3>This Page</h3></div></div>
<div class="footer">&#169; Copyright 2001-2023, Python Software Foundation.</div></body></html>"""
