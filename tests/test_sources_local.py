"""`type: local`: files and globs of HTML, Markdown, reST, text and JSONL, relative to the recipe."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from sources_support import PYTHON_DOCS, make_ctx, run_sources, sphinx_page

from runner.errors import StepError
from runner.sources.html_markdown import html_to_markdown
from runner.steps.sources import fingerprint

RST = """Install Guide
=============

Run the installer with ``--user``; see :func:`~site.main`.

Options
-------

Pass options like this::

    install --prefix /opt
"""


def make_tree(root: Path) -> Path:
    (root / "docs" / "deep").mkdir(parents=True)
    (root / "docs" / "page.html").write_text(sphinx_page("Generators", 9))
    (root / "docs" / "deep" / "guide.md").write_text("Intro line\n\n# The Guide\n\n## Part\n\nBody.\n")
    (root / "docs" / "deep" / "skip.draft.md").write_text("# Draft\n\nnot ready\n")
    (root / "docs" / "install.rst").write_text(RST)
    (root / "docs" / "logo.png").write_bytes(b"\x89PNG")
    (root / "extra").mkdir()
    (root / "extra" / "readme.txt").write_text("Plain text, no headings at all.\n")
    return root


def local(**settings) -> dict:
    return {"type": "local", **settings}


def test_every_format_is_read_with_globs_exclude_and_relative_paths(tmp_path):
    recipe_dir = make_tree(tmp_path / "project")
    entry = local(paths=["docs/**/*", "extra/readme.txt"], exclude=["*.draft.md"])
    metrics, docs, _ = run_sources(make_ctx(tmp_path, [entry], recipe_dir=recipe_dir))
    by_path = {d["path"]: d for d in docs}
    assert list(by_path) == ["docs/deep/guide.md", "docs/install.rst", "docs/page.html",
                             "extra/readme.txt"]
    assert metrics["files_by_format"] == {"markdown": 1, "rst": 1, "html": 1, "text": 1}
    assert metrics["unknown_type_skipped"] == 1 and metrics["documents"] == 4
    html = by_path["docs/page.html"]
    assert html["title"] == "9. Generators" and html["markdown"].startswith("# 9. Generators\n")
    assert "Table of Contents" not in html["markdown"]
    assert by_path["docs/deep/guide.md"]["title"] == "The Guide"
    rst = by_path["docs/install.rst"]["markdown"]
    assert rst.startswith("# Install Guide\n") and "## Options" in rst
    assert "`--user`" in rst and "`site.main`" in rst and "```\ninstall --prefix /opt\n```" in rst
    assert by_path["extra/readme.txt"]["title"] == "readme"
    assert all(d["source"] == "local" and d["url"] is None and len(d["id"]) == 16 for d in docs)


def test_ids_are_stable_across_runs_and_folders(tmp_path):
    first = make_tree(tmp_path / "a")
    second = make_tree(tmp_path / "b")
    _, docs_a, _ = run_sources(make_ctx(tmp_path / "ra", [local(paths=["docs"])], recipe_dir=first))
    _, docs_b, _ = run_sources(make_ctx(tmp_path / "rb", [local(paths=["docs"])], recipe_dir=second))
    assert [d["id"] for d in docs_a] == [d["id"] for d in docs_b]
    assert docs_a == docs_b


def test_editing_a_file_changes_the_fingerprint(tmp_path):
    recipe_dir = make_tree(tmp_path)
    settings = make_ctx(tmp_path, [local(paths=["docs/**/*.md"])]).settings   # defaults filled
    before = fingerprint(settings, recipe_dir)
    assert before == fingerprint(settings, recipe_dir)
    (recipe_dir / "docs" / "deep" / "guide.md").write_text("# The Guide\n\nEdited.\n")
    assert fingerprint(settings, recipe_dir) != before
    (recipe_dir / "docs" / "new.md").write_text("# New\n")
    assert len(fingerprint(settings, recipe_dir)[0]) == 3


def test_missing_paths_name_the_pattern_and_the_recipe_folder(tmp_path):
    with pytest.raises(StepError) as caught:
        run_sources(make_ctx(tmp_path, [local(paths=["nowhere/*.html", "gone.md"])]))
    message = str(caught.value)
    assert "'nowhere/*.html'" in message and "'gone.md'" in message and str(tmp_path) in message


def test_jsonl_field_mapping_with_qa_and_messages(tmp_path):
    rows = [{"key": "a1", "name": "First", "body": "Some text.", "q": "What?", "a": "That.",
             "lang": "en"},
            {"key": "a2", "body": "Other text.", "chat": [{"role": "user", "content": "hi"},
                                                          {"role": "assistant", "content": "yo"}]}]
    (tmp_path / "data.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    fields = {"id": "key", "title": "name", "text": "body", "question": "q", "answer": "a",
              "messages": "chat"}
    _, docs, _ = run_sources(make_ctx(tmp_path, [local(paths=["data.jsonl"], fields=fields)]))
    assert [d["title"] for d in docs] == ["First", "data 2"]
    assert docs[0]["qa"] == {"question": "What?", "answer": "That."} and "messages" not in docs[0]
    assert docs[1]["messages"][1]["content"] == "yo" and "qa" not in docs[1]
    assert docs[0]["markdown"] == "Some text." and docs[0]["metadata"] == {"format": "jsonl",
                                                                           "line": 1, "lang": "en"}
    (tmp_path / "data.jsonl").write_text(json.dumps(rows[1]) + "\n" + json.dumps(rows[0]) + "\n")
    _, again, _ = run_sources(make_ctx(tmp_path, [local(paths=["data.jsonl"], fields=fields)]))
    assert {d["id"] for d in again} == {d["id"] for d in docs}      # ids follow the id field


def test_a_broken_jsonl_line_is_located(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"text": oops}\n')
    with pytest.raises(StepError, match=r"bad\.jsonl:2: not a JSON object"):
        run_sources(make_ctx(tmp_path, [local(paths=["*.jsonl"])]))


def test_max_files_and_declared_format(tmp_path):
    for number in range(5):
        (tmp_path / f"log{number}.log").write_text(f"# Log {number}\n\nline\n")
    metrics, docs, _ = run_sources(make_ctx(tmp_path, [local(paths=["*.log"], format="markdown",
                                                              max_files=3)]))
    assert metrics["files"] == 3 and [d["title"] for d in docs] == ["Log 0", "Log 1", "Log 2"]


def test_many_html_files_convert_on_a_process_pool_in_order(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    titles = [f"Chapter {n}" for n in range(24)]
    for number, title in enumerate(titles):
        (site / f"c{number:02d}.html").write_text(sphinx_page(title, number))
    started = time.monotonic()
    metrics, docs, _ = run_sources(make_ctx(tmp_path, [local(paths=["site/*.html"])]))
    assert time.monotonic() - started < 20
    assert [d["title"] for d in docs] == [f"{n}. {t}" for n, t in enumerate(titles)]
    expected = html_to_markdown(sphinx_page(titles[7], 7))[1]
    assert docs[7]["markdown"] == expected


@pytest.mark.skipif(not (PYTHON_DOCS / "tutorial").is_dir(), reason="python3.11-doc not installed")
def test_python_tutorial_from_the_installed_docs(tmp_path):
    entry = local(paths=[str(PYTHON_DOCS / "tutorial" / "*.html")])
    metrics, docs, _ = run_sources(make_ctx(tmp_path, [entry]))
    assert metrics["documents"] >= 15
    control_flow = next(d for d in docs if d["path"].endswith("controlflow.html"))
    assert control_flow["title"] == "4. More Control Flow Tools"
    assert "\n## 4.1. `if` Statements\n" in control_flow["markdown"]
