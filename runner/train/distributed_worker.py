"""One rank of a multi-process training run: `accelerate launch -m runner.train.distributed_worker JOB`.

It sends its output to rank-N.log, joins the process group with the recipe's timeout (so a dead
or stuck rank fails the others instead of hanging them), trains its share through the same code
as a single-process run (run_worker, then train_run.train_job), and leaves rank-N.json saying how it
ended, which the launcher reads to name the rank that failed.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import traceback
from datetime import timedelta
from pathlib import Path

from runner.errors import StepError
from runner.registry import StepContext
from runner.train.distributed_layout import Layout, global_batch


class StatusFile:
    def __init__(self, path: Path):
        self.path = path

    def write(self, state: str, **extra) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"state": state, "at": time.time(), "pid": os.getpid(), **extra}),
                       encoding="utf-8")
        os.replace(tmp, self.path)


def main(argv: list[str] | None = None) -> int:
    spec = json.loads(Path((argv or sys.argv[1:])[0]).read_text(encoding="utf-8"))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    folder = Path(spec["launch_dir"])
    _send_output_to(folder / f"rank-{rank}.log")
    _die_with_launcher()
    status = StatusFile(folder / f"rank-{rank}.json")
    status.write("running")

    def terminated(signum, frame):
        # The launcher stops the other ranks this way when one fails: they are not the cause.
        status.write("terminated")
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, terminated)
    try:
        _train(spec, rank, local_rank, folder)
    except StepError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        status.write("error", message=str(error), user_error=True)
        return 1
    except BaseException as error:  # noqa: BLE001 - every failure is reported to the launcher
        traceback.print_exc()
        status.write("error", message=f"{type(error).__name__}: {error}"[:2000], user_error=False)
        return 1
    status.write("ok")
    return 0


def _send_output_to(path: Path) -> None:
    """Both output streams, C-level writes included, go to this rank's log."""
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _die_with_launcher() -> None:
    from runner.train.distributed import _die_with_parent
    _die_with_parent()
    if os.getppid() == 1:          # the launcher is already gone
        os._exit(1)


def _train(spec: dict, rank: int, local_rank: int, folder: Path) -> None:
    import torch
    import torch.distributed as dist

    layout = Layout(**spec["layout"])
    group = {}
    if layout.device == "gpu":
        if local_rank >= torch.cuda.device_count():
            raise StepError(f"rank {rank} needs GPU {local_rank} but this machine has "
                            f"{torch.cuda.device_count()} visible CUDA GPU(s)")
        torch.cuda.set_device(local_rank)
        group["device_id"] = torch.device("cuda", local_rank)
    else:
        _load_cpu_index_locations()
    dist.init_process_group(layout.collective_backend,
                            timeout=timedelta(seconds=layout.timeout_s), **group)
    world = World(rank=rank, local_rank=local_rank, size=dist.get_world_size(), layout=layout,
                  folder=folder)
    if spec["backend"] == "unsloth":
        from runner.train.train_common import preload_unsloth
        preload_unsloth({"backend": "unsloth"})
    run_worker(context_from(spec["context"], quiet_rank=not world.writes), spec["backend"], world)
    dist.barrier()
    dist.destroy_process_group()


def run_worker(ctx: StepContext, backend: str, world: World) -> dict:
    """Train this rank's share through the single-process code (train_run.train_job). The
    launching step already wrote eval.jsonl and prepared the checkpoints; every rank resumes
    from the same one."""
    from runner.train.train_common import (
        checkpoint_root,
        checkpoint_step,
        latest_checkpoint,
        read_rows,
        split_rows,
    )
    from runner.train.train_run import Job, make_plan, train_job

    training = ctx.settings
    plan = make_plan(ctx, backend, cpu_only=world.layout.device == "cpu")
    rows = read_rows(ctx.inputs["chat_template"])
    train_rows, eval_rows = split_rows(rows, training["eval_fraction"], training["seed"])
    root = checkpoint_root(ctx.cache_dir, ctx.key)
    latest, _ = latest_checkpoint(root)
    resume_from = world.agree_on_checkpoint(latest, checkpoint_step(latest) if latest else None)
    metrics_path = root / "metrics.jsonl" if world.writes else world.scratch_metrics
    job = Job(ctx, backend, plan, root, train_rows, eval_rows, world=world)
    return train_job(job, resume_from, metrics_path)


def _load_cpu_index_locations() -> None:
    """accelerate gives CPU ranks the device "cpu:0", and the trainer resumes optimizer state with
    it as torch.load's map_location, which torch cannot restore to: teach torch that "cpu:N"
    is the CPU."""
    import torch.serialization as serialization

    def restore(obj, location):
        return obj if str(location).startswith("cpu:") else None

    serialization.register_package(11, lambda obj: None, restore)


def context_from(fields: dict, *, quiet_rank: bool) -> StepContext:
    paths = ("out_dir", "run_dir", "cache_dir", "recipe_dir")
    values = {k: (Path(v) if k in paths else v) for k, v in fields.items()}
    values["inputs"] = {name: Path(path) for name, path in fields["inputs"].items()}
    values["quiet"] = bool(fields["quiet"]) or quiet_rank
    return StepContext(**values)


class World:
    """This rank's place in the run, and the few collectives training needs beyond the trainer's."""

    def __init__(self, *, rank: int, local_rank: int, size: int, layout: Layout, folder: Path):
        self.rank, self.local_rank, self.size = rank, local_rank, size
        self.layout, self.folder = layout, folder

    @property
    def writes(self) -> bool:
        """Rank 0 writes the step's artifacts; with several machines, each machine's local rank 0
        writes its own run folder (checkpoints are saved on each machine too)."""
        return self.local_rank == 0

    @property
    def sharded(self) -> bool:
        return self.layout.strategy == "fsdp2"

    @property
    def device(self) -> str:
        return f"cuda:{self.local_rank}" if self.layout.device == "gpu" else "cpu"

    @property
    def scratch_metrics(self) -> Path:
        return self.folder / f"rank-{self.rank}.metrics.jsonl"

    def gather(self, value) -> list:
        import torch.distributed as dist
        values = [None] * self.size
        dist.all_gather_object(values, value)
        return values

    def agree_on_checkpoint(self, path: Path | None, step: int | None) -> Path | None:
        steps = self.gather(step)
        if len(set(steps)) > 1:
            raise StepError(f"the ranks would resume from different checkpoints (steps {steps}, "
                            "by rank): the machines' checkpoint folders differ; rerun with "
                            "--force training on every machine to start fresh")
        return path

    def sft_overrides(self) -> dict:
        overrides = {"ddp_timeout": int(self.layout.timeout_s),
                     "ddp_backend": self.layout.collective_backend,
                     "save_on_each_node": self.layout.machines > 1}
        if not self.sharded:
            # LoRA freezes the base: DDP must not search the graph for unused parameters.
            overrides["ddp_find_unused_parameters"] = False
        return overrides

    def merged_mask(self, mask: dict) -> dict:
        """Every rank checked its own first batches; the summary counts all of them."""
        masks = self.gather(mask)
        if not mask.get("checked"):
            return mask
        return {"checked": True, "batches": mask["batches"],
                "rows": sum(m["rows"] for m in masks), "ranks": self.size,
                "rows_per_rank": [m["rows"] for m in masks], "checked_by": "every rank, its own batches"}

    def full_state(self, model) -> dict | None:
        """FSDP2: the trained parameters gathered whole (a collective on every rank); DDP: None,
        every rank already holds them whole."""
        if not self.sharded:
            return None
        state = {}
        for name, param in model.named_parameters():
            if param.requires_grad:
                whole = param.full_tensor() if hasattr(param, "full_tensor") else param
                state[name] = whole.detach().cpu()
        return state

    def summary(self, training: dict, peak: dict) -> dict:
        peaks = self.gather(peak)
        return {**self.layout.as_dict(), "world_size": self.size,
                "collective_backend": self.layout.collective_backend,
                "global_batch": global_batch(training, self.layout),
                "peak_memory_per_rank": peaks}


if __name__ == "__main__":
    sys.exit(main())
