"""Training on 2 processes over gloo (accelerate launch, torchrun underneath) with the tiny GPT-OSS:
the loss curve of one process, a killed rank named and resumed from, two "machines" on 127.0.0.1.

Every run has the global batch of the 1-process reference (2 rows x 2 accumulation steps there,
2 rows x 2 processes here) and its data order, so their curves agree within LOSS_PARITY["float32"]
(relative, at every logged step; float32 on CPU).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time

import pytest
from training_helpers import (
    PYTHON,
    fast_training,
    make_ctx,
    read_jsonl,
    run_step,
    run_step_capturing_log,
    subprocess_env,
)

from runner.errors import StepError
from runner.train.distributed import free_port, launch_dir
from runner.train.distributed_layout import LOSS_PARITY
from runner.train.train_common import checkpoint_root, checkpoint_step

pytestmark = pytest.mark.usefixtures("one_torch_thread", "one_thread_per_rank")

STEPS = 8
SHAPE = dict(max_steps=STEPS, save_steps=4, warmup_steps=2)
CPU_PAIR = {"processes": 2, "device": "cpu", "timeout_s": 60}


@pytest.fixture(scope="module")
def one_thread_per_rank():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        yield


def two_ranks(**distributed) -> dict:
    return fast_training(**SHAPE, gradient_accumulation_steps=1,
                         distributed={**CPU_PAIR, **distributed})


def losses(out_dir) -> dict[int, float]:
    return {row["step"]: row["loss"] for row in read_jsonl(out_dir / "metrics.jsonl") if "loss" in row}


def assert_same_curve(got: dict[int, float], want: dict[int, float]) -> None:
    assert sorted(got) == sorted(want) == list(range(1, STEPS + 1))
    worst = max(abs(got[s] - want[s]) / abs(want[s]) for s in want)
    assert worst <= LOSS_PARITY["float32"], f"curves differ by {worst:.2e}: {got} vs {want}"


def layout(folder) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One process, 2 rows x 2 accumulation steps: the curve the 2-process runs must draw."""
    ctx = make_ctx(tmp_path_factory.mktemp("one"), fast_training(**SHAPE, gradient_accumulation_steps=2))
    run_step(ctx)
    return ctx


def _kill_rank_at_first_checkpoint(ctx, rank: int, killed: dict) -> threading.Thread:
    root, folder = checkpoint_root(ctx.cache_dir, ctx.key), launch_dir(ctx.cache_dir, ctx.key)

    def watch():
        deadline = time.time() + 300
        while time.time() < deadline:
            if any(checkpoint_step(p) for p in root.glob("checkpoint-*")):
                pid = json.loads((folder / f"rank-{rank}.json").read_text())["pid"]
                os.kill(pid, signal.SIGKILL)
                killed["pid"] = pid
                return
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    return watcher


def test_a_killed_rank_is_named_and_the_next_run_resumes_on_the_same_curve(tmp_path, reference):
    ctx = make_ctx(tmp_path, two_ranks())
    killed = {}
    watcher = _kill_rank_at_first_checkpoint(ctx, 1, killed)
    with pytest.raises(StepError) as failure:
        run_step(ctx)
    watcher.join()
    message = str(failure.value)
    assert killed and "training rank 1 of 2 was killed by SIGKILL" in message
    assert "| [training] mask verified" in message           # rank 1's own last lines
    assert "resumes from the last checkpoint" in message
    assert not (ctx.out_dir / "adapter").exists() and not (ctx.out_dir / "summary.json").exists()

    ctx = make_ctx(tmp_path, two_ranks())
    metrics, log = run_step_capturing_log(ctx)
    assert metrics["resumed_from_step"] >= 4 and metrics["steps"] == STEPS
    assert f"resuming from checkpoint-{metrics['resumed_from_step']}" in log
    assert "launching 2 processes on this machine, ddp over gloo" in log
    assert "global batch 4 rows per optimizer step" in log
    assert_same_curve(losses(ctx.out_dir), losses(reference.out_dir))
    assert layout(ctx.out_dir) == layout(reference.out_dir)
    summary = json.loads((ctx.out_dir / "summary.json").read_text())
    assert summary["mask"]["rows_per_rank"] == [4, 4] and summary["mask"]["ranks"] == 2
    assert summary["distributed"]["world_size"] == 2 and summary["distributed"]["global_batch"] == 4
    assert len(summary["distributed"]["peak_memory_per_rank"]) == 2
    assert not launch_dir(ctx.cache_dir, ctx.key).exists()          # spent, like the checkpoints
    assert not checkpoint_root(ctx.cache_dir, ctx.key).exists()


def test_a_stuck_rank_fails_the_run_after_timeout_s_instead_of_hanging(tmp_path):
    """Rank 1 stopped (SIGSTOP) after the first checkpoint: rank 0's next collective gives up
    after timeout_s, and the run ends with an error that says so."""
    ctx = make_ctx(tmp_path, two_ranks(timeout_s=10))
    root, folder = checkpoint_root(ctx.cache_dir, ctx.key), launch_dir(ctx.cache_dir, ctx.key)

    def stop_rank_1():
        while not any(checkpoint_step(p) for p in root.glob("checkpoint-*")):
            time.sleep(0.02)
        pid = json.loads((folder / "rank-1.json").read_text())["pid"]
        os.kill(pid, signal.SIGSTOP)
        stopped["at"] = time.time()
        while json.loads((folder / "rank-0.json").read_text())["state"] == "running":
            time.sleep(0.1)
        os.kill(pid, signal.SIGCONT)   # so that it can take the launcher's SIGTERM

    stopped = {}
    watcher = threading.Thread(target=stop_rank_1, daemon=True)
    watcher.start()
    with pytest.raises(StepError) as failure:
        run_step(ctx)
    waited = time.time() - stopped["at"]
    message = str(failure.value)
    assert "training rank 0 of 2 failed" in message and "waited timeout_s (10 s)" in message
    assert 10 <= waited < 50


MACHINE = """
import sys, json
from pathlib import Path
from training_helpers import fast_training, make_ctx, run_step
settings = json.loads(sys.argv[2])
print(json.dumps(run_step(make_ctx(Path(sys.argv[1]), fast_training(**settings)))))
"""


def test_two_machines_of_one_process_meet_on_localhost(tmp_path, reference):
    """The multi-node path: machine_rank, the rendezvous address and port, one run folder each."""
    port = free_port()
    settings = [two_ranks(processes=1, machines=2, machine_rank=rank, main_port=port)
                for rank in (0, 1)]
    other = subprocess.Popen([PYTHON, "-c", MACHINE, str(tmp_path / "machine1"),
                              json.dumps(settings[1])], env=subprocess_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        ctx = make_ctx(tmp_path / "machine0", settings[0])
        metrics, log = run_step_capturing_log(ctx)
    finally:
        output = other.communicate(timeout=300)[0]
    assert other.returncode == 0, output
    assert "2 processes (1 on each of 2 machines)" in log
    machine1 = next((tmp_path / "machine1").glob(".training.tmp-*"))
    for out in (ctx.out_dir, machine1):
        assert_same_curve(losses(out), losses(reference.out_dir))
        assert layout(out) == layout(reference.out_dir)
    adapter = "adapter/adapter_model.safetensors"
    assert (ctx.out_dir / adapter).read_bytes() == (machine1 / adapter).read_bytes()
    summary = json.loads((ctx.out_dir / "summary.json").read_text())
    assert summary["distributed"]["machines"] == 2 and metrics["steps"] == STEPS
