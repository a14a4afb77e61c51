"""`type: pydoc`: docstrings of installed modules as markdown documents (the offline source)."""

from __future__ import annotations

import sys

import pytest
from sources_support import make_ctx, run_sources

from runner.errors import StepError
from runner.steps.sources import fingerprint


def test_module_docstrings_become_headed_sections(tmp_path):
    metrics, docs, outcomes = run_sources(make_ctx(tmp_path, [{"type": "pydoc",
                                                               "modules": ["json", "textwrap"]}]))
    assert metrics["modules"] == 2 and metrics["documents"] == 2 and outcomes == []
    json_doc = docs[0]
    assert (json_doc["source"], json_doc["title"], json_doc["url"]) == ("pydoc", "json", None)
    markdown = json_doc["markdown"]
    assert markdown.startswith("# json\n\nJSON (JavaScript Object Notation)")
    lines = markdown.splitlines()
    assert "## dumps()" in lines and "## class JSONDecoder" in lines
    assert "### JSONDecoder.decode()" in lines
    # reST literals and roles become inline code (":mod:`json`" would be residue in a pair).
    assert "Serialize `obj` to a JSON formatted `str`." in markdown
    assert "`json` exposes an API familiar to users of the standard library" in markdown
    assert ":mod:" not in markdown
    assert any(line.startswith("`dumps(obj, *, skipkeys=False") for line in lines)
    assert json_doc["metadata"]["python"] == sys.version.split()[0]


def test_only_own_members_and_own_docstrings(tmp_path):
    _, docs, _ = run_sources(make_ctx(tmp_path, [{"type": "pydoc", "modules": ["textwrap"]}]))
    lines = docs[0]["markdown"].splitlines()
    assert "## class TextWrapper" in lines and "## dedent()" in lines
    assert "## re()" not in lines          # imported modules and names are not documented


def test_unknown_module_is_a_clear_error(tmp_path):
    with pytest.raises(StepError, match="cannot import module 'no_such_module_here'"):
        run_sources(make_ctx(tmp_path, [{"type": "pydoc", "modules": ["no_such_module_here"]}]))


def test_fingerprint_names_module_files_without_importing_them(tmp_path):
    settings = make_ctx(tmp_path, [{"type": "pydoc", "modules": ["json.decoder", "torch.nn"]}]).settings
    already = "torch" in sys.modules
    found = fingerprint(settings, tmp_path)[0]
    assert found[0] == sys.version and found[1][0] == "json.decoder" and len(found[1][1]) == 64
    assert ("torch" in sys.modules) == already
