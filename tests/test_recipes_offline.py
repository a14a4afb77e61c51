"""Acceptance through the shipped recipe itself: `recipes/python_docs_offline.yaml` (local Python
docs HTML, heading_sections) yields >= 1,000 clean pairs, each instruction naming its section."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import ROOT, run_cli

from runner.artifacts import read_json, read_jsonl

DOCS = Path("/usr/share/doc/python3.11/html")
HTML_TAG = re.compile(r"<[^>\n]+>")
MD_LINK = re.compile(r"\[[^\]\n]*\]\([^)\n]*\)")
URL = re.compile(r"\b(?:https?|ftps?|file)://|\bwww\.\S")


@pytest.mark.skipif(not DOCS.is_dir(), reason="python3.11-doc is not installed")
def test_offline_recipe_data_half_meets_the_bar(tmp_path):
    result = run_cli("run", ROOT / "recipes" / "python_docs_offline.yaml", "--until", "validation",
                     "--run-dir", tmp_path, "--quiet", env={"HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    pairs = list(read_jsonl(tmp_path / "python_docs_offline" / "validation" / "pairs.jsonl"))
    assert len(pairs) >= 1000
    for pair in pairs:
        text = pair["instruction"] + "\n" + pair["response"]
        assert not HTML_TAG.search(text), text[:300]
        assert not MD_LINK.search(text), text[:300]
        assert not URL.search(text), text[:300]
        heading = pair["provenance"]["heading_path"][-1]
        assert heading and heading in pair["instruction"]
        assert pair["provenance"]["document_id"]
    tutorial_topics = [p for p in pairs if "tutorial" in p["instruction"].lower()]
    assert tutorial_topics, "the tutorial pages contribute pairs too"
    report = read_json(tmp_path / "python_docs_offline" / "validation" / "data_report.json")
    assert report["stages"][-1]["out"] == len(pairs)
