"""Acceptance: the offline Python docs (tutorial + library) with `heading_sections` give at least
1,000 pairs, none with an HTML tag, markdown link or URL, each instruction naming its topic."""

from __future__ import annotations

import hashlib
import re
from multiprocessing import get_context
from pathlib import Path

import pytest
from test_data_steps import run_data_steps

from runner.artifacts import read_json, read_jsonl, write_jsonl

DOCS = Path("/usr/share/doc/python3.11/html")

# The data half of an offline Python docs recipe: keep code names (unwrap inline code instead of
# deleting it), no file-path rule (it eats "e.g." and version numbers), headings kept.
PYTHON_DOCS_SECTIONS = {
    "cleaning": {"keep_headings": True, "workers": 2, "rules": [
        {"rule": "strip_html"}, {"rule": "remove_md_images"}, {"rule": "unwrap_md_links"},
        {"rule": "remove_code_blocks"}, {"rule": "unwrap_inline_code"}, {"rule": "remove_urls"},
        {"rule": "regex_replace", "pattern": r"\bwww\.[^\s]+", "replacement": ""},
        {"rule": "regex_replace", "pattern": r"\*\*?([^*\n]+)\*\*?", "replacement": r"\1"},
        {"rule": "collapse_whitespace"}]},
    "pairing": {"strategy": "heading_sections"},
    "validation": {"near_dedup": {"enabled": True}},
}

HTML_TAG = re.compile(r"<[^>\n]+>")
MD_LINK = re.compile(r"\[[^\]\n]*\]\([^)\n]*\)")
URL = re.compile(r"\b(?:https?|ftps?|file)://|\bwww\.\S")


def _convert(path: Path) -> dict:
    from runner.sources.html_markdown import html_to_markdown

    title, markdown = html_to_markdown(path.read_text(encoding="utf-8"))
    return {"id": hashlib.sha1(str(path).encode()).hexdigest()[:16], "source": "local",
            "url": None, "path": str(path), "title": title, "markdown": markdown,
            "metadata": {}}


@pytest.fixture(scope="module")
def python_docs(tmp_path_factory) -> Path:
    if not DOCS.is_dir():
        pytest.skip("python3.11-doc is not installed")
    pages = sorted([*DOCS.glob("tutorial/*.html"), *DOCS.glob("library/*.html")])
    target = tmp_path_factory.mktemp("pydocs") / "documents.jsonl"
    with get_context("fork").Pool(2) as pool:
        write_jsonl(target, pool.imap(_convert, pages, chunksize=4))
    return target


def test_python_docs_heading_sections_meet_the_acceptance_bar(tmp_path, python_docs):
    root = run_data_steps(tmp_path, python_docs, PYTHON_DOCS_SECTIONS)
    pairs = list(read_jsonl(root / "validation" / "pairs.jsonl"))
    assert len(pairs) >= 1000
    for pair in pairs:
        for text in (pair["instruction"], pair["response"]):
            assert not HTML_TAG.search(text), text
            assert not MD_LINK.search(text), text
            assert not URL.search(text), text
        topic = (pair["provenance"]["heading_path"] or [None])[-1]
        assert topic and topic in pair["instruction"], pair
    report = read_json(root / "validation" / "data_report.json")
    assert report["stages"][-1]["out"] == len(pairs)
    assert (root / "validation" / "data_report.md").stat().st_size > 1000
