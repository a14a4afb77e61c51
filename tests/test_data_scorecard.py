"""The data-quality scorecard: its definitions on crafted responses, and the validation step
writing it into stats.json, data_report.md/json and report.html."""

from __future__ import annotations

import pytest
from test_data_steps import doc, run_data_steps

from runner.artifacts import read_json
from runner.data.scorecard import (
    FLAG_CODE,
    FLAG_COLON_END,
    FLAG_MID_SENTENCE,
    FLAG_URL,
    RESIDUE_FLAGS,
    ending,
    instruction_prefix,
    response_flags,
)


@pytest.mark.parametrize("response, expected", [
    ("A whole sentence.", "sentence"),
    ("Is it? (Yes.)", "sentence"),
    ("It says *this*.", "sentence"),
    ("Then it stops in the middle of", "mid_sentence"),
    ("An example follows:", "colon"),
    ("Some text:\n\n```python\nx = 1\n```", "code"),
    ("Items:\n\n- first item\n- second item", "list"),
    ("| a | b |\n|---|---|\n| 1 | 2 |", "table"),
    ("", "mid_sentence"),
])
def test_how_a_response_ends(response, expected):
    assert ending(response) == expected


@pytest.mark.parametrize("text, kind", [
    ("See <b>this</b> page.", "html_tag"),
    ("See [the guide](https://x.org) now.", "markdown_link"),
    (":mod:json exposes an API.", "rest_role"),
    ("Call SPI\\_execute\\_plan first.", "markdown_escape"),
    ("It is a subset of JavaScript [1] anyway.", "footnote_marker"),
    ("Text.\n\nNote\n\nMore text.", "furniture_line"),
    ("Text.\n\nFootnotes", "furniture_line"),
    ("term\n:   its definition.", "definition_marker"),
    ("Heading¶ text.", "pilcrow"),
])
def test_each_kind_of_residue_is_found_in_prose(text, kind):
    assert response_flags(text) & RESIDUE_FLAGS[kind]


@pytest.mark.parametrize("text", [
    "Use `a\\_b` or `<b>` in code: `x[1]`.",
    "Code:\n\n```\nprint('\\_')  # <b> [1] :mod:x\n```",
    "Notes:\n\n1. A list introduced by a colon line is content, not furniture.",
    "The list a[1] and f(x)[0] are indexing, not footnotes.",
])
def test_code_and_ordinary_text_are_not_residue(text):
    assert not response_flags(text) & sum(RESIDUE_FLAGS.values())


def test_flags_for_urls_code_and_endings():
    assert response_flags("See https://docs.python.org for more.") & FLAG_URL
    assert response_flags("See www.python.org for more.") & FLAG_URL
    assert response_flags("Example:\n\n```python\nurl = 'https://x.org'\n```") == FLAG_CODE
    assert response_flags("Cut in the middle") == FLAG_MID_SENTENCE
    assert response_flags("Introduces:") == FLAG_COLON_END
    assert instruction_prefix("What does the Python docs say?") == "what does the python"


RESIDUE_DOC = """# Widgets

## Cut off

A widget holds state. It is built by the factory and lives as long as its parent window does
in every toolkit that we know of and also some that we do not know of yet at this time or ever

## With code

The factory makes widgets:

```python
w = make()
```

## Link residue

Read [the guide](https://example.org/guide) and see https://example.org for <b>more</b>.
"""


def test_validation_writes_the_scorecard_everywhere(tmp_path):
    root = run_data_steps(tmp_path, [doc(RESIDUE_DOC), doc(RESIDUE_DOC, "d2")], {
        "cleaning": {"keep_headings": True, "rules": [{"rule": "collapse_whitespace"}]},
        "pairing": {"strategy": "heading_sections", "response_min_chars": 10},
        "validation": {"dedup": "none"}})
    card = read_json(root / "validation" / "stats.json")["scorecard"]
    assert card["pairs"] == 6
    # "Cut off" has no sentence end after its first sentence: the response is cut there.
    assert card["ends_mid_sentence"] == {"count": 0, "share": 0.0}
    assert card["with_code_block"] == {"count": 2, "share": round(2 / 6, 4)}
    assert card["markup_residue"]["count"] == 2 and card["urls"]["count"] == 2
    assert set(card["residue_by_kind"]) == {"markdown_link", "html_tag"}
    assert card["instructions_from_template"]["share"] == 1.0
    assert card["exact_duplicates"] == {"count": 3, "share": 0.5}   # counted, dedup is off
    assert card["near_duplicates"] is None
    report = read_json(root / "validation" / "data_report.json")
    assert report["scorecard"] == card
    markdown = (root / "validation" / "data_report.md").read_text()
    assert "## Data-quality scorecard" in markdown
    assert "| responses with a fenced code block | 33.3% | 2 |" in markdown


def test_report_html_shows_the_scorecard(tmp_path, cli):
    (tmp_path / "widgets.md").write_text(RESIDUE_DOC)
    (tmp_path / "r.yaml").write_text(
        "name: card\nsources: [{type: local, paths: [widgets.md]}]\n"
        "cleaning: {keep_headings: true}\n"
        "pairing: {strategy: heading_sections, response_min_chars: 10}\nvalidation: {}\n")
    done = cli("run", tmp_path / "r.yaml", "--run-dir", tmp_path / "runs", "--quiet")
    assert done.returncode == 0, done.stderr
    page = (tmp_path / "runs" / "card" / "report.html").read_text()
    assert "Data-quality scorecard (3 kept pairs)" in page
    assert "responses ending mid-sentence" in page
