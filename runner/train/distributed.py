"""Training on several processes: the step launches its workers with `accelerate launch` (torchrun
underneath), shows rank 0's output as it comes, and turns a failed rank into one StepError that
names the rank, says how it ended and quotes its last lines.

The launch folder (in the step's cache, next to the checkpoints) holds the accelerate config, the
job every rank reads, and one log and one status file per rank. The workers never write into the
step's folder except rank 0 (each machine's local rank 0 when there are several machines).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from runner.errors import StepError
from runner.train.distributed_layout import Layout, batch_line

LAUNCH_SUFFIX = ".launch"
TAIL_LINES = 15
WORKER_MODULE = "runner.train.distributed_worker"
# FSDP2 as accelerate documents it for transformers models: one shard group per decoder layer,
# weights read once on rank 0 and broadcast, sharded checkpoints (each rank saves its shard).
FSDP2_CONFIG = {"fsdp_version": 2, "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
                "fsdp_cpu_ram_efficient_loading": True, "fsdp_sync_module_states": True,
                "fsdp_reshard_after_forward": True, "fsdp_offload_params": False,
                "fsdp_state_dict_type": "SHARDED_STATE_DICT", "fsdp_activation_checkpointing": False}
CONTEXT_FIELDS = ("recipe_name", "step", "key", "settings", "sections", "inputs", "out_dir",
                  "run_dir", "cache_dir", "recipe_dir", "force", "quiet")


def launch_dir(cache_dir: Path, key: str) -> Path:
    return Path(cache_dir) / f"{key[:16]}{LAUNCH_SUFFIX}"


def accelerate_config(layout: Layout, port: int) -> dict:
    """The accelerate config file of this launch (what `accelerate config` would write).

    mixed_precision stays "no" here: the trainer in each rank sets it from that rank's plan
    (training.bf16 / fp16, or the model's dtype on its GPU), as a single-process run does.
    """
    config = {"compute_environment": "LOCAL_MACHINE", "debug": False,
              "distributed_type": "FSDP" if layout.strategy == "fsdp2" else "MULTI_GPU",
              "num_processes": layout.world_size, "num_machines": layout.machines,
              "machine_rank": layout.machine_rank, "main_process_ip": layout.main_address,
              "main_process_port": port, "rdzv_backend": "static", "same_network": True,
              "mixed_precision": "no", "downcast_bf16": "no", "gpu_ids": "all",
              "use_cpu": False, "enable_cpu_affinity": False, "main_training_function": "main",
              "tpu_env": [], "tpu_use_cluster": False, "tpu_use_sudo": False}
    if layout.strategy == "fsdp2":
        config["fsdp_config"] = dict(FSDP2_CONFIG)
    return config


def launch_command(config_path: Path, job_path: Path) -> list[str]:
    # --max_restarts 0: a failed rank fails the run (the next `recipe run` resumes from the
    # last checkpoint); the agent checks its workers twice a second.
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_path),
            "--max_restarts", "0", "--monitor_interval", "0.5", "-m", WORKER_MODULE,
            str(job_path)]


def worker_env(layout: Layout) -> dict:
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    if layout.device == "cpu":
        # Processes share the cores: without this each one would start a thread per core.
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // layout.processes)))
    return env


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch(ctx, backend: str, layout: Layout) -> dict:
    """Run the training step's workers and return the step's metrics (rank 0's summary.json)."""
    folder = launch_dir(ctx.cache_dir, ctx.key)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    port = layout.main_port or free_port()
    config_path = folder / "accelerate_config.yaml"
    import yaml
    config_path.write_text(yaml.safe_dump(accelerate_config(layout, port),
                                          sort_keys=False), encoding="utf-8")
    context = {name: _plain(getattr(ctx, name)) for name in CONTEXT_FIELDS}
    job_path = folder / "job.json"
    job_path.write_text(json.dumps({"backend": backend, "layout": layout.as_dict(),
                                    "launch_dir": str(folder), "context": context}),
                        encoding="utf-8")
    ctx.log(f"launching {layout.describe()} with accelerate (config {config_path}); "
            f"{batch_line(ctx.settings, layout)}")
    returncode = _run_launcher(launch_command(config_path, job_path), worker_env(layout), folder,
                               first_rank=layout.machine_rank * layout.processes)
    if returncode != 0:
        raise failure(folder, layout, returncode)
    from runner.train.train_run import step_metrics
    summary = json.loads((Path(ctx.out_dir) / "summary.json").read_text(encoding="utf-8"))
    shutil.rmtree(folder, ignore_errors=True)   # kept only when a rank failed: its logs are there
    return step_metrics(summary)


def _plain(value):
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _die_with_parent() -> None:
    """The launcher (and through it, every worker) goes when the step's process dies, even by
    SIGKILL: no orphaned rank keeps writing checkpoints that a new run is reading."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _run_launcher(command: list[str], env: dict, folder: Path, first_rank: int) -> int:
    with open(folder / "launcher.log", "wb") as launcher_log:
        process = subprocess.Popen(command, env=env, stdout=launcher_log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True,
                                   preexec_fn=_die_with_parent)
    echo = LogEcho(folder / f"rank-{first_rank}.log")
    try:
        while process.poll() is None:
            echo.pump()
            time.sleep(0.2)
        echo.pump(final=True)
        return process.returncode
    except BaseException:
        _stop(process)
        raise


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM the launcher's whole process group (torchrun passes it on), SIGKILL after 20 s."""
    for sig, wait_s in ((signal.SIGTERM, 20), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


class LogEcho:
    """Copies the complete lines a rank appends to its log onto this process's stderr."""

    def __init__(self, path: Path):
        self.path, self.offset, self.partial = path, 0, b""

    def pump(self, final: bool = False) -> None:
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.offset)
                chunk = handle.read()
        except FileNotFoundError:
            return
        self.offset += len(chunk)
        data = self.partial + chunk
        if final:
            lines, self.partial = data, b""
        else:
            cut = data.rfind(b"\n") + 1
            lines, self.partial = data[:cut], data[cut:]
        if lines:
            sys.stderr.write(lines.decode("utf-8", errors="replace"))
            sys.stderr.flush()


# --- what happened to the ranks ------------------------------------------------------------

def rank_status(folder: Path, rank: int) -> dict:
    try:
        return json.loads((folder / f"rank-{rank}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"state": "missing"}


def last_lines(path: Path, count: int = TAIL_LINES) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    lines = [line.rstrip() for line in text.replace("\r", "\n").splitlines() if line.strip()]
    return lines[-count:]


def exit_codes(launcher_log: Path) -> dict[int, int]:
    """rank -> exit code, from torchrun's failure table ("rank: 1 (local_rank: 1) / exitcode: -9")."""
    text = "\n".join(last_lines(launcher_log, 400))
    found = re.findall(r"rank\s*:\s*(\d+)\s*\(local_rank:\s*\d+\)\s*\n\s*exitcode\s*:\s*(-?\d+)",
                       text)
    return {int(rank): int(code) for rank, code in found}


def how_it_ended(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        cause = " (the out-of-memory killer, or someone, killed it)" if name == "SIGKILL" else ""
        return f"was killed by {name}{cause}"
    if code is not None:
        return f"exited with code {code} without saying why"
    return "ended without a word (killed, or crashed below Python)"


def failure(folder: Path, layout: Layout, returncode: int) -> StepError:
    """One error naming the rank that failed first, how, and its last lines.

    A rank that raised a StepError (a problem the user can fix) comes first; then a rank that
    ended without a status (killed, crashed): the others were stopped because of it; then the
    first rank that raised, by time. No rank started: the launcher's own last lines.
    """
    ranks = range(layout.machine_rank * layout.processes,
                  (layout.machine_rank + 1) * layout.processes)
    statuses = {rank: rank_status(folder, rank) for rank in ranks}
    user = [r for r, s in statuses.items() if s.get("state") == "error" and s.get("user_error")]
    if user:
        return StepError(f"training rank {user[0]} of {layout.world_size} stopped: "
                         f"{statuses[user[0]]['message']}")
    codes = exit_codes(folder / "launcher.log")
    silent = sorted((r not in codes, r) for r, s in statuses.items() if s.get("state") == "running")
    errors = sorted((s.get("at", 0), r) for r, s in statuses.items() if s.get("state") == "error")
    if silent:
        rank = silent[0][1]
        what = how_it_ended(codes.get(rank))
    elif errors:
        rank = errors[0][1]
        what = f"failed: {statuses[rank]['message']}"
    else:
        return StepError(f"the training launcher (accelerate launch) exited with code {returncode} "
                         "before any rank started training; its last lines "
                         f"({folder / 'launcher.log'}):\n" + _quote(last_lines(folder / "launcher.log")))
    hint = ""
    if re.search(r"timed? ?out", what, re.IGNORECASE):
        hint += (f"\n    hint: the rank waited timeout_s ({layout.timeout_s:g} s) for the others: "
                 "one of them stopped answering (stuck, stopped, or cut off)")
    if layout.machines > 1:
        hint += ("\n    hint: with several machines, a rank on another machine may have failed "
                 "first: see that machine's log")
    return StepError(f"training rank {rank} of {layout.world_size} {what}; its last lines "
                     f"({folder / f'rank-{rank}.log'}):\n"
                     + _quote(last_lines(folder / f"rank-{rank}.log")) + hint
                     + "\n    a new `recipe run` resumes from the last checkpoint")


def _quote(lines: list[str]) -> str:
    return "\n".join(f"    | {line[:300]}" for line in lines) if lines else "    | (nothing)"
