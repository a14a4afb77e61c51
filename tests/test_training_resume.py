"""A training run killed (SIGKILL) after a checkpoint resumes from that checkpoint when run again."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest
from training_helpers import (
    PYTHON,
    fast_training,
    make_ctx,
    read_jsonl,
    run_step_capturing_log,
    subprocess_env,
)

from runner.train.train_common import checkpoint_step, latest_checkpoint

STEPS = 60
SETTINGS = dict(max_steps=STEPS, save_steps=10, save_total_limit=2, warmup_steps=0)
CHILD = f"""
import sys
from pathlib import Path
from training_helpers import fast_training, make_ctx, run_step
run_step(make_ctx(Path(sys.argv[1]), fast_training(**{SETTINGS})))
"""



pytestmark = pytest.mark.usefixtures("one_torch_thread")

def _kill_after_first_checkpoint(tmp, root) -> str:
    child = subprocess.Popen([PYTHON, "-c", CHILD, str(tmp)], env=subprocess_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    try:
        while time.time() < deadline and child.poll() is None:
            if root.is_dir() and any(checkpoint_step(p) for p in root.glob("checkpoint-*")):
                child.send_signal(signal.SIGKILL)
                break
            time.sleep(0.02)
    finally:
        if child.poll() is None and time.time() >= deadline:
            child.kill()
        output = child.communicate()[0]
    assert child.returncode == -signal.SIGKILL, f"training was not killed mid-run:\n{output}"
    return output


def test_killed_training_resumes_from_its_latest_checkpoint(tmp_path):
    root = tmp_path / "cache" / "training" / ("k" * 16)
    _kill_after_first_checkpoint(tmp_path, root)
    latest, _ = latest_checkpoint(root)
    resumed_step = checkpoint_step(latest)
    assert 10 <= resumed_step < STEPS

    ctx = make_ctx(tmp_path, fast_training(**SETTINGS))
    metrics, log = run_step_capturing_log(ctx)
    assert f"resuming from checkpoint-{resumed_step} (step {resumed_step})" in log
    assert metrics["resumed_from_step"] == resumed_step and metrics["steps"] == STEPS
    steps = [row["step"] for row in read_jsonl(ctx.out_dir / "metrics.jsonl") if "loss" in row]
    assert steps == list(range(1, STEPS + 1))   # each step once: the killed tail was dropped
    summary_tokens = read_jsonl(ctx.out_dir / "metrics.jsonl")[-1]["tokens_seen"]
    assert summary_tokens > 0
    assert (ctx.out_dir / "adapter" / "adapter_model.safetensors").is_file()
