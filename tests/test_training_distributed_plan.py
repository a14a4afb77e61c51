"""training.distributed without training: the layout, the refusals `recipe plan` prints, the
accelerate config and command a launch uses, and how a failed launch is explained."""

from __future__ import annotations

import json

import yaml
from conftest import ROOT
from training_helpers import fast_training

from runner.train.distributed import accelerate_config, failure, launch_command
from runner.train.distributed_layout import Layout, layout_of, layout_problems

DEMO = ROOT / "recipes" / "demo.yaml"


def problems(gpus=0, **settings) -> dict[tuple, str]:
    training = fast_training(**settings)
    found = layout_problems(training, layout_of(training, gpus), gpus)
    return {path: message for path, message, _ in found}


def test_auto_takes_one_process_per_gpu_and_the_global_batch_counts_them():
    training = fast_training(per_device_train_batch_size=2, gradient_accumulation_steps=4,
                             distributed={"processes": "auto"})
    assert layout_of(training, gpus=8).world_size == 8
    assert layout_of(training, gpus=0).processes == 1 and not layout_of(training, gpus=0).launched
    cpu = fast_training(distributed={"processes": "auto", "device": "cpu"})
    assert layout_of(cpu, gpus=8).processes == 1
    nodes = fast_training(distributed={"processes": 4, "machines": 2, "main_port": 29500})
    assert layout_of(nodes).world_size == 8 and layout_of(nodes).launched


def test_refusals_name_the_setting_that_cannot_work_here():
    assert "has 0 visible CUDA GPUs" in problems(distributed={"processes": 2})[("distributed", "processes")]
    assert "has 1 visible CUDA GPU" in problems(gpus=1, distributed={"processes": 2})[("distributed", "processes")]
    assert problems(gpus=2, distributed={"processes": 2}) == {}
    assert problems(distributed={"processes": 2, "device": "cpu"}) == {}
    assert "no FSDP on CPU" in problems(distributed={"strategy": "fsdp2", "device": "cpu"})[
        ("distributed", "strategy")]
    assert "full copy of the model per GPU" in problems(
        gpus=2, backend="unsloth", distributed={"processes": 2, "strategy": "fsdp2"})[
        ("distributed", "strategy")]
    assert "needs CUDA GPUs" in problems(backend="unsloth", distributed={
        "processes": 2, "device": "cpu"})[("distributed", "device")]
    nodes = problems(gpus=1, distributed={"machines": 2, "machine_rank": 2})
    assert "must all know the rendezvous port" in nodes[("distributed", "main_port")]
    assert "is not below machines (2)" in nodes[("distributed", "machine_rank")]


def test_plan_prints_processes_and_batches_and_refuses_missing_gpus(cli, tmp_path):
    asked = ("--set", "training.distributed.processes=2")
    refused = cli("plan", DEMO, "--run-dir", tmp_path, *asked, env={"CUDA_VISIBLE_DEVICES": ""})
    assert refused.returncode == 2
    assert "training: 2 processes on this machine, ddp over nccl" in refused.stdout
    assert "per-device batch 4 x gradient accumulation 1 x 2 processes = global batch 8" in refused.stdout
    assert "$.training.distributed.processes: 2 processes asked for on this machine" in refused.stderr
    assert "0 visible CUDA GPUs" in refused.stderr
    on_cpu = cli("plan", DEMO, "--run-dir", tmp_path, *asked, "--set",
                 "training.distributed.device=cpu")
    assert on_cpu.returncode == 0, on_cpu.stderr
    assert "ddp over gloo, CPU processes" in on_cpu.stdout
    plain = cli("plan", DEMO, "--run-dir", tmp_path)
    assert plain.returncode == 0 and "training:" not in plain.stdout


def test_accelerate_config_for_ddp_fsdp2_and_two_machines(tmp_path):
    ddp = accelerate_config(Layout(processes=2), port=29511)
    assert ddp["distributed_type"] == "MULTI_GPU" and ddp["num_processes"] == 2
    assert "fsdp_config" not in ddp and ddp["main_process_port"] == 29511
    fsdp = accelerate_config(Layout(processes=8, strategy="fsdp2"), port=1)
    assert fsdp["distributed_type"] == "FSDP" and fsdp["fsdp_config"]["fsdp_version"] == 2
    assert fsdp["fsdp_config"]["fsdp_cpu_ram_efficient_loading"] is True
    nodes = accelerate_config(Layout(processes=4, machines=2, machine_rank=1,
                                     main_address="10.0.0.1", main_port=29500), port=29500)
    assert (nodes["num_processes"], nodes["num_machines"], nodes["machine_rank"]) == (8, 2, 1)
    assert nodes["main_process_ip"] == "10.0.0.1"
    path = tmp_path / "accelerate_config.yaml"
    path.write_text(yaml.safe_dump(nodes))
    from accelerate.commands.config.config_args import load_config_from_file
    assert load_config_from_file(str(path)).num_machines == 2   # accelerate reads it back
    command = launch_command(path, tmp_path / "job.json")
    assert command[1:4] == ["-m", "accelerate.commands.launch", "--config_file"]
    assert command[-3:] == ["-m", "runner.train.distributed_worker", str(tmp_path / "job.json")]


def _status(folder, rank, state, **extra):
    (folder / f"rank-{rank}.json").write_text(json.dumps({"state": state, **extra}))
    (folder / f"rank-{rank}.log").write_text(f"rank {rank} line one\nrank {rank} last words\n")


TORCHRUN_TABLE = """Root Cause (first observed failure):
[0]:
  time      : 2025-01-01_00:00:00
  host      : box
  rank      : 1 (local_rank: 1)
  exitcode  : -9 (pid: 4242)
"""


def test_failure_blames_the_rank_that_caused_it(tmp_path):
    two = Layout(processes=2, device="cpu")
    _status(tmp_path, 0, "terminated")
    _status(tmp_path, 1, "running")
    (tmp_path / "launcher.log").write_text(TORCHRUN_TABLE)
    killed = str(failure(tmp_path, two, 1))
    assert "training rank 1 of 2 was killed by SIGKILL" in killed
    assert "| rank 1 last words" in killed and "rank 0" not in killed

    _status(tmp_path, 0, "error", at=2.0, message="RuntimeError: Connection reset by peer")
    _status(tmp_path, 1, "error", at=1.0, message="RuntimeError: Timed out waiting 5000ms")
    timed_out = str(failure(tmp_path, two, 1))
    assert "training rank 1 of 2 failed: RuntimeError: Timed out" in timed_out
    assert "waited timeout_s (600 s)" in timed_out

    _status(tmp_path, 0, "error", at=3.0, user_error=True, message="the trainer's loss mask is wrong")
    assert str(failure(tmp_path, two, 1)) == ("training rank 0 of 2 stopped: "
                                               "the trainer's loss mask is wrong")

    for rank in (0, 1):
        (tmp_path / f"rank-{rank}.json").unlink()
    (tmp_path / "launcher.log").write_text("ConnectionError: Tried to launch on port 29500\n")
    early = str(failure(tmp_path, two, 1))
    assert "before any rank started training" in early and "port 29500" in early
