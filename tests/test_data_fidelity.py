"""Fidelity: with the original's settings, our steps give the hand-run workflow's pairs exactly.

The reference is bench/hand_run.py (the original functions, re-implemented straight). The corpus
is generated from a fixed seed, plus the local Python tutorial when python3.11-doc is installed.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest
from test_data_steps import run_data_steps

from runner.artifacts import read_jsonl
from runner.data.dedup import normalize

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import hand_run  # noqa: E402

TUTORIAL = Path("/usr/share/doc/python3.11/html/tutorial")
ORIGINAL_SETTINGS = {"cleaning": {"splitter": "original"},
                     "pairing": {"strategy": "consecutive_sentences"},
                     "validation": {"charset_filter": True}}

SNIPPETS = [
    "A list is a mutable sequence, e.g. `[1, 2]`, and it grows as needed.",
    "See [the tutorial](https://docs.python.org/3/tutorial/) for an introduction to lists.",
    "![diagram](img/diagram.png) The diagram shows how references point at objects.",
    "<div class=\"note\">Note: <b>tuples</b> are immutable</div> which makes them hashable.",
    "Version 3.11 added `tomllib`; read pyproject.toml files with it, i.e. without extras.",
    "```python\nfor x in range(3):\n    print(x)\n```",
    "Use \\*args to accept any number of positional arguments in a function definition!",
    "Visit https://example.org/a?b=c or http://x.y for more. Really? Yes.",
    "## Dictionaries\n\nA dictionary maps keys to values; the keys must be hashable objects.",
    "| key | value |\n|---|---|\n| a | 1 |",
    "Navigation: previous topic, next topic, index of modules and the table of contents.",
    "Copyright 2001-2024 Python Software Foundation. Click here to download or share.",
    "Les chaînes Unicode sont prises en charge partout, même dans les identifiants.",
    "> A quoted remark ~~struck~~ with *emphasis* and __strong__ text inside it, done.",
    "Short one. Another short. A slightly longer sentence that passes the length limit.",
]


def fixed_corpus(count: int = 40, seed: int = 3407) -> list[dict]:
    rng = random.Random(seed)
    documents = []
    for number in range(count):
        parts = [f"# Page {number}"] + [rng.choice(SNIPPETS) for _ in range(rng.randint(3, 12))]
        documents.append({"id": f"p{number}", "source": "local", "url": None, "path": None,
                          "title": f"Page {number}", "markdown": "\n\n".join(parts),
                          "metadata": {}})
    return documents


def tutorial_corpus() -> list[dict]:
    from runner.sources.html_markdown import html_to_markdown

    documents = []
    for path in sorted(TUTORIAL.glob("*.html")):
        title, markdown = html_to_markdown(path.read_text(encoding="utf-8"))
        documents.append({"id": path.stem, "source": "local", "url": None, "path": str(path),
                          "title": title, "markdown": markdown, "metadata": {}})
    return documents


def corpora():
    yield pytest.param(fixed_corpus, id="generated")
    yield pytest.param(tutorial_corpus, id="python-tutorial", marks=pytest.mark.skipif(
        not TUTORIAL.is_dir(), reason="python3.11-doc is not installed"))


def _as_tuples(pairs) -> list[tuple[str, str]]:
    return [(p["instruction"], p["response"]) for p in pairs]


@pytest.mark.parametrize("make_corpus", list(corpora()))
def test_consecutive_sentences_equal_the_originals(tmp_path, make_corpus):
    documents = make_corpus()
    root = run_data_steps(tmp_path, documents, ORIGINAL_SETTINGS)
    expected = [pair for d in documents for pair in hand_run.process_single_result(d["markdown"])]
    assert len(expected) > 50
    assert _as_tuples(read_jsonl(root / "pairing" / "pairs.jsonl")) == _as_tuples(expected)


@pytest.mark.parametrize("make_corpus", list(corpora()))
def test_validation_equals_the_original_up_to_normalized_duplicates(tmp_path, make_corpus):
    documents = make_corpus()
    root = run_data_steps(tmp_path, documents, ORIGINAL_SETTINGS)
    original = hand_run.final_validation(
        [pair for d in documents for pair in hand_run.process_single_result(d["markdown"])])
    # We also count "a  b" / "A b" as repeats of "a b"; everything else is the original's.
    seen, expected = set(), []
    for pair in original:
        key = normalize(pair["instruction"])
        if key not in seen:
            seen.add(key)
            expected.append(pair)
    assert _as_tuples(read_jsonl(root / "validation" / "pairs.jsonl")) == _as_tuples(expected)
