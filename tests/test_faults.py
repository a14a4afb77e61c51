"""Faults, through the real CLI on the short demo: a disk that fills up in the middle of a step
(RLIMIT_FSIZE in the child) gives a clear error and no folder that looks complete, and the next
run completes; SIGKILL in a step and after a training checkpoint, and the re-runs end with the
uninterrupted run's artifacts. The full campaign (>= 20 kills) is bench/fault_kill.py."""

from __future__ import annotations

import json
import resource
import signal

from demo_runs import STEPS, content_hashes, hash_report, reference_run, run_demo, start_demo
from fault_kill import CHECKPOINT, Kill, campaign

FILE_LIMIT = 100_000   # above sources' documents.jsonl (about 56 KB), below cleaning's (119 KB)


def _file_size_limit():
    # Ignoring SIGXFSZ makes a write past the limit fail with EFBIG instead of killing the
    # process (CPython ignores it at start-up too; said here so the test does not rely on that).
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_LIMIT, FILE_LIMIT))


def test_a_full_disk_mid_step_is_a_clear_error_and_the_next_run_completes(tmp_path):
    process = start_demo(tmp_path, "--until", "validation", preexec_fn=_file_size_limit)
    output = process.communicate(timeout=180)[0]
    assert process.returncode == 1, output[-3000:]
    assert ("error: step cleaning: disk full: a file grew past the file-size limit writing "
            "cleaning/documents.jsonl (File too large)") in output
    assert "free space where" in output and "ulimit -f" in output and "Traceback" not in output
    run = tmp_path / "demo"
    assert (run / "sources" / ".complete.json").is_file()
    assert not (run / "cleaning").exists() and not list(run.glob(".cleaning.*"))
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "disk full" in manifest["steps"]["cleaning"]["error"]
    again = run_demo(tmp_path, "--until", "validation")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "sources: didn't change, skipping" in again.stderr and "cleaning: running" in again.stderr
    reference, hashes = content_hashes(reference_run()), content_hashes(run)
    assert all(hashes[step] == reference[step] for step in STEPS[:4]), hash_report(reference_run(), run)


def test_killed_in_a_step_and_after_a_checkpoint_the_reruns_match_an_uninterrupted_run(tmp_path):
    reference = content_hashes(reference_run())
    kills = [Kill("validation", 0.3), Kill(CHECKPOINT, 0.2)]
    result = campaign(tmp_path, kills, reference)     # also: no wrong folder looks complete
    assert result["kills"][1] == "training", [k.output[-5:] for k in kills]
    assert result["resumed"], "the re-run did not resume from the checkpoint"
    assert result["differ"] == [], hash_report(reference_run(), tmp_path / "demo")
