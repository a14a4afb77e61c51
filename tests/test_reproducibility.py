"""Two clean runs of the demo in different run folders write the same artifacts in every step
(content hashes of the completion records; declared volatile files - timings - aside), and a
step's key covers only what changes its output."""

from __future__ import annotations

import json
import shutil

from conftest import run_cli
from demo_runs import DEMO, SHORT, content_hashes, hash_report, reference_run, run_demo

from runner.artifacts import read_jsonl


def test_two_clean_runs_in_different_folders_are_identical(tmp_path):
    first = reference_run()
    done = run_demo(tmp_path / "elsewhere")
    assert done.returncode == 0, done.stderr[-3000:]
    second = tmp_path / "elsewhere" / "demo"
    assert all(content_hashes(first).values())
    assert content_hashes(first) == content_hashes(second), hash_report(first, second)
    # The known culprits, each by name: memory addresses, set order, timings.
    documents = (second / "sources" / "documents.jsonl").read_text()
    assert " at 0x" not in documents and "_w=<built-in method match of re.Pattern object>" in documents
    config = json.loads((second / "training" / "adapter" / "adapter_config.json").read_text())
    assert config["target_modules"] == sorted(config["target_modules"])
    answers = list(read_jsonl(second / "evaluation" / "answers.jsonl"))
    timings = list(read_jsonl(second / "evaluation" / "timings.jsonl"))
    assert answers and not any("seconds" in row for row in answers)
    assert len(timings) == len(answers) and all(row["seconds"] > 0 for row in timings)


def test_chat_template_reruns_only_for_the_model_settings_it_reads(tmp_path):
    shutil.copytree(reference_run(), tmp_path / "demo")           # the reference stays as it is
    four_bit = run_demo(tmp_path, "--set", "model.load_in_4bit=true", "--until", "chat_template")
    assert four_bit.returncode == 0, four_bit.stderr[-2000:]
    assert "chat_template: didn't change, skipping" in four_bit.stderr
    plan = run_cli("plan", DEMO, "--run-dir", tmp_path, *SHORT, "--set", "model.load_in_4bit=true")
    rows = {line.split()[0]: line.split()[2] for line in plan.stdout.splitlines() if "(" in line}
    assert rows["chat_template"] == "skip" and rows["training"] == "run", plan.stdout
    plan = run_cli("plan", DEMO, "--run-dir", tmp_path, *SHORT, "--set", "model.max_seq_length=320")
    rows = {line.split()[0]: line.split()[2] for line in plan.stdout.splitlines() if "(" in line}
    assert rows["chat_template"] == "run" and rows["validation"] == "skip", plan.stdout
    assert content_hashes(tmp_path / "demo") == content_hashes(reference_run())
