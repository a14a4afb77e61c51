"""The teacher_qa pairing strategy over real HTTP: a local faulty endpoint (500s, 429 with
Retry-After, slowness, garbage bodies, unusable answers, a refused key), a killed run, re-runs
that send no request; and its parts (answer reading, grounding, cache, retry waits)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, run_cli
from teacher_endpoint import PLANS, TeacherEndpoint

from runner.artifacts import read_json, read_jsonl
from runner.data.grounding import Grounding, support
from runner.data.teacher_cache import TeacherCache, request_key
from runner.data.teacher_client import _retry_after
from runner.data.teacher_prompts import Rejected, parse_pairs

SECTION_TEXT = ("The {word} part of the widget toolkit builds widgets from a configuration file. "
                "Each widget has a name and a size that the loader checks before use.")


def write_docs(folder: Path, words: list[str]) -> None:
    body = "\n\n".join(f"## {word} widgets\n\n{SECTION_TEXT.format(word=word)}" for word in words)
    (folder / "docs.md").write_text(f"# Widget toolkit\n\n{body}\n")


def write_recipe(folder: Path, url: str, **pairing) -> Path:
    settings = {"strategy": "teacher_qa", "endpoint": url, "section_min_chars": 50,
                "max_retries": 2, "backoff_s": 0.01, "timeout_s": 1, **pairing}
    recipe = folder / "teach.yaml"
    recipe.write_text(json.dumps({"name": "teach", "sources": [{"type": "local", "paths": ["docs.md"]}],
                                  "cleaning": {"keep_headings": True}, "pairing": settings,
                                  "validation": {}}))
    return recipe


def run(recipe: Path, *args) -> subprocess.CompletedProcess:
    done = run_cli("run", recipe, "--run-dir", recipe.parent / "runs", "--quiet", *args,
                   env={"HF_HUB_OFFLINE": "1"})
    assert "Traceback" not in done.stderr, done.stderr
    return done


def outcomes(folder: Path) -> dict[str, dict]:
    rows = read_jsonl(folder / "runs" / "teach" / "pairing" / "sections.jsonl")
    return {row["heading_path"][-1].split()[0]: row for row in rows}


def teacher_stats(folder: Path) -> dict:
    return read_json(folder / "runs" / "teach" / "pairing" / "stats.json")["teacher"]


def test_faults_are_retried_or_reported_per_reason_and_nothing_is_lost(tmp_path):
    words = ["Plain", *PLANS]
    write_docs(tmp_path, words)
    with TeacherEndpoint(slow_s=2.5) as server:
        recipe = write_recipe(tmp_path, server.url, max_failed_share=1.0, concurrency=4)
        done = run(recipe)
        assert done.returncode == 0, done.stderr
        found = outcomes(tmp_path)
        assert set(found) == set(words)                 # every section has its line
        status = {word: (row["status"], row.get("reason")) for word, row in found.items()}
        assert status == {
            "Plain": ("ok", None), "Flaky500": ("ok", None), "RateLimited": ("ok", None),
            "SlowOnce": ("ok", None), "AlwaysDown": ("failed", "http_500"),
            "GarbageBody": ("failed", "bad_response"), "NotJson": ("rejected", "not_json"),
            "WrongShape": ("rejected", "wrong_shape"), "Truncated": ("rejected", "truncated"),
            "Refusal": ("rejected", "refusal"), "Invented": ("rejected", "unsupported_identifier")}
        stats = teacher_stats(tmp_path)
        teacher = stats["teacher"]
        assert teacher["requests"] == server.requests
        assert teacher["failed_by_reason"] == {"bad_response": 1, "http_500": 1}
        assert teacher["failed_attempts_by_reason"] == {"http_500": 5, "timeout": 1, "http_429": 1,
                                                        "bad_response": 1}
        assert teacher["rejected_outputs_by_reason"] == {"not_json": 1, "wrong_shape": 1,
                                                         "truncated": 1}
        assert stats["sections"] == {"ok": 4, "rejected": 5, "failed": 2, "skipped_short": 1}
        assert found["AlwaysDown"]["attempts"] == 3
        limited = [e["time"] for e in server.log if e["fault"] == "RateLimited"]
        assert limited[1] - limited[0] >= 0.95                      # Retry-After: 1 honoured
        pairs = list(read_jsonl(tmp_path / "runs" / "teach" / "pairing" / "pairs.jsonl"))
        assert len(pairs) == 4 and all(p["provenance"]["support"] == 1.0 for p in pairs)
        report = (tmp_path / "runs" / "teach" / "validation" / "data_report.md").read_text()
        assert "teacher: failed requests | bad_response 1, http_500 1" in report

        # Again: only the sections without an answer are asked again; the rest is cached.
        before = server.requests
        done = run(recipe, "--force", "pairing")
        assert done.returncode == 0, done.stderr
        retried = [e["fault"] for e in server.log[before:]]
        assert sorted(set(retried)) == ["AlwaysDown", "GarbageBody"]
        assert teacher_stats(tmp_path)["teacher"]["cache_hits"] == 9


def test_the_judge_scores_every_pair_and_drops_those_below_the_threshold(tmp_path):
    write_docs(tmp_path, ["Plain", "LowScore"])
    with TeacherEndpoint() as server:
        done = run(write_recipe(tmp_path, server.url, judge={"enabled": True, "threshold": 4},
                                price={"input_per_million_tokens": 1.0,
                                       "output_per_million_tokens": 2.0}))
        assert done.returncode == 0, done.stderr
        assert [e["fault"] for e in server.log].count("judge") == 2
    found = outcomes(tmp_path)
    assert found["Plain"]["status"] == "ok"
    assert (found["LowScore"]["status"], found["LowScore"]["reason"]) == (
        "rejected", "judge_below_threshold")
    stats = teacher_stats(tmp_path)
    assert stats["judge"]["answers"] == 2 and stats["judge"]["model"] == "fault-teacher"
    teacher = stats["teacher"]
    assert teacher["cost"] == round((teacher["tokens_in"] + 2 * teacher["tokens_out"]) / 1e6, 6) > 0
    pairs = list(read_jsonl(tmp_path / "runs" / "teach" / "pairing" / "pairs.jsonl"))
    assert [p["provenance"]["judge_score"] for p in pairs] == [5.0]


def test_too_many_failed_sections_fail_the_step_with_the_reasons(tmp_path):
    write_docs(tmp_path, ["Plain", "AlwaysDown"])
    with TeacherEndpoint() as server:
        done = run(write_recipe(tmp_path, server.url, max_failed_share=0.2))
    assert done.returncode != 0
    assert "1 of 2 sections got no answer (http_500 x1), more than max_failed_share 20%" in done.stderr


def test_a_refused_key_stops_at_once_with_what_to_fix(tmp_path, monkeypatch):
    write_docs(tmp_path, [f"Plain{i}" for i in range(12)])
    monkeypatch.setenv("TEACHER_KEY", "sk-wrong")
    with TeacherEndpoint(status=401) as server:
        done = run(write_recipe(tmp_path, server.url, api_key="${env:TEACHER_KEY}", concurrency=2))
        assert server.requests <= 2 * 4                  # the first window, not every section
    assert done.returncode != 0
    assert "the endpoint refused the API key: check pairing.api_key" in done.stderr
    assert "sk-wrong" not in done.stderr


def test_a_bad_prompt_template_fails_before_any_request(tmp_path):
    write_docs(tmp_path, ["Plain"])
    with TeacherEndpoint() as server:
        done = run(write_recipe(tmp_path, server.url, prompt_template="{{ section.__class__ }}"))
        assert server.requests == 0
    assert done.returncode != 0 and "pairing.prompt_template" in done.stderr


def test_a_killed_run_keeps_every_answer_it_paid_for(tmp_path):
    write_docs(tmp_path, [f"Part{i}" for i in range(8)])
    cache = tmp_path / "teacher-cache"
    with TeacherEndpoint(hold_after=3) as server:
        recipe = write_recipe(tmp_path, server.url, concurrency=1, timeout_s=60,
                              cache_dir=str(cache))
        process = subprocess.Popen([sys.executable, "-m", "runner", "run", str(recipe), "--run-dir",
                                    str(tmp_path / "runs"), "--quiet"], cwd=ROOT,
                                   env={**os.environ, "PYTHONPATH": str(ROOT)},
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while server.requests < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    assert server.answered() == 3 and len(TeacherCache(cache)) == 3
    with TeacherEndpoint() as server:
        done = run(write_recipe(tmp_path, server.url, cache_dir=str(cache)))
        assert done.returncode == 0, done.stderr
        assert server.requests == 5                      # the 3 answers paid for are not asked again
        first = (tmp_path / "runs" / "teach" / "pairing" / "pairs.jsonl").read_bytes()
        done = run(write_recipe(tmp_path, server.url, cache_dir=str(cache)), "--force", "pairing")
        assert done.returncode == 0 and server.requests == 5       # a re-run: zero requests
    assert (tmp_path / "runs" / "teach" / "pairing" / "pairs.jsonl").read_bytes() == first
    assert "pairing ran, validation skipped" in done.stdout  # same pairs: nothing after re-runs


def test_answers_are_read_as_json_or_labelled_text_and_rejected_by_reason():
    assert parse_pairs('```json\n{"pairs": [{"question": "Q?", "answer": "A."}]}\n```', "stop") == [
        ("Q?", "A.")]
    assert parse_pairs('[{"question": "Q?", "answer": "A."}]', "stop") == [("Q?", "A.")]
    assert parse_pairs("Intro.\n\nQuestion: What is X?\nAnswer: X is Y.\n\nQ: Z?\nA: W.", "stop") == [
        ("What is X?", "X is Y."), ("Z?", "W.")]
    for text, finish, reason in [("", "stop", "empty"), ("Sure, here you go.", "stop", "not_json"),
                                 ('{"pairs": [{"question": "Q', "length", "truncated"),
                                 ('{"questions": []}', "stop", "wrong_shape"),
                                 ('{"pairs": [{"question": 3}]}', "stop", "wrong_shape")]:
        with pytest.raises(Rejected) as rejected:
            parse_pairs(text, finish)
        assert rejected.value.reason == reason


def test_grounding_keeps_supported_answers_and_says_why_it_drops_the_rest():
    section = ("The json.dumps() function serializes obj to a JSON formatted str. Use indent "
               "to pretty-print nested objects.")
    check = Grounding(section, min_support=0.7, check_identifiers=True)
    assert check.verdict("What does json.dumps do?",
                         "json.dumps() serializes an object to a JSON formatted str.") is None
    assert check.verdict("Q?", "") == "empty_answer"
    assert check.verdict("Q?", "I'm sorry, the section does not say.") == "refusal"
    assert check.verdict("What does json.dumps do", "json.dumps do") == "echoed_question"
    assert check.verdict("Q?", "It sends email messages through a remote mail server.") == "ungrounded"
    assert check.verdict("Q?", "Use json.dumps_pretty() to serialize nested JSON objects.") == \
        "unsupported_identifier"
    assert support("serializes nested objects", check.words) == 1.0


def test_cache_is_content_addressed_and_a_broken_file_is_a_miss(tmp_path):
    messages = [{"role": "user", "content": "hi"}]
    key = request_key("m", messages, {"temperature": 0.7})
    assert key == request_key("m", list(messages), {"temperature": 0.7})
    assert key != request_key("m", messages, {"temperature": 0.2})
    cache = TeacherCache(tmp_path)
    assert cache.get(key) is None
    cache.put(key, {"response": {"text": "ok"}})
    assert cache.get(key) == {"response": {"text": "ok"}} and len(cache) == 1
    (tmp_path / key[:2] / f"{key}.json").write_text('{"response": {"te')     # torn write
    assert cache.get(key) is None
    assert not list(tmp_path.glob("**/.tmp-*"))


def test_retry_after_in_seconds_or_as_a_date():
    assert _retry_after("3") == 3.0 and _retry_after(None) is None and _retry_after("soon") is None
    from email.utils import formatdate
    assert 8 <= _retry_after(formatdate(time.time() + 10, usegmt=True)) <= 10
