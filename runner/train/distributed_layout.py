"""training.distributed -> the process layout of a run, what cannot work here, and the plan's lines.

Light on purpose (no torch): `recipe plan` calls it before anything is loaded. GPUs are counted
with `nvidia-smi -L` (or the driver's /proc entries) under CUDA_VISIBLE_DEVICES, as CUDA counts them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from runner.errors import StepError

# A run on N processes logs the same loss curve as one process with the same global batch and
# data order, within this relative difference at every logged step: float32 on CPU (the tests);
# half precision on GPUs sums in another order, so there it is looser (as runner.train.contract's).
LOSS_PARITY = {"float32": 1e-4, "bfloat16": 2e-2, "float16": 2e-2}


@dataclass(frozen=True)
class Layout:
    """How many processes train, where, and how they meet."""
    processes: int                   # on this machine
    machines: int = 1
    machine_rank: int = 0
    strategy: str = "ddp"
    device: str = "gpu"              # "gpu" (NCCL) or "cpu" (gloo)
    main_address: str = "127.0.0.1"
    main_port: int = 0
    timeout_s: float = 600.0

    @property
    def world_size(self) -> int:
        return self.processes * self.machines

    @property
    def launched(self) -> bool:
        """More than one process in all: the step launches workers instead of training itself."""
        return self.world_size > 1

    @property
    def collective_backend(self) -> str:
        return "gloo" if self.device == "cpu" else "nccl"

    def as_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        where = (f" ({self.processes} on each of {self.machines} machines)" if self.machines > 1
                 else " on this machine")
        return (f"{self.world_size} process{'es' * (self.world_size != 1)}{where}, "
                f"{self.strategy} over {self.collective_backend}")


def settings_of(training: dict) -> dict:
    """training.distributed with the schema's defaults under what the recipe sets."""
    from runner.validate import fill_defaults, schema
    node = schema()["$defs"]["training"]["properties"]["distributed"]
    return fill_defaults(dict(training.get("distributed") or {}), node, top=False)


def layout_of(training: dict, gpus: int | None = None) -> Layout:
    """The layout the recipe asks for; `processes: auto` counts this machine's GPUs."""
    wanted = settings_of(training)
    processes = wanted["processes"]
    if processes == "auto":
        if wanted["device"] == "cpu":
            processes = 1
        else:
            processes = max(1, visible_gpus() if gpus is None else gpus)
    return Layout(processes=int(processes), machines=int(wanted["machines"]),
                  machine_rank=int(wanted["machine_rank"]), strategy=wanted["strategy"],
                  device=wanted["device"], main_address=str(wanted["main_address"]),
                  main_port=int(wanted["main_port"]), timeout_s=float(wanted["timeout_s"]))


def visible_gpus() -> int:
    """CUDA GPUs this process would see, without importing torch."""
    physical = _physical_gpus()
    mask = os.environ.get("CUDA_VISIBLE_DEVICES")
    if mask is None:
        return physical
    count = 0
    for entry in mask.split(","):
        # CUDA stops at the first invalid entry: "-1" (or "") hides every GPU.
        if not entry.strip() or entry.strip().startswith("-"):
            break
        count += 1
    return min(count, physical)


def _physical_gpus() -> int:
    if shutil.which("nvidia-smi"):
        try:
            listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True,
                                     timeout=20).stdout
            return sum(line.startswith("GPU ") for line in listing.splitlines())
        except (OSError, subprocess.SubprocessError):
            pass
    driver = Path("/proc/driver/nvidia/gpus")
    return len(list(driver.iterdir())) if driver.is_dir() else 0


def layout_problems(training: dict, layout: Layout,
                    gpus: int | None = None) -> list[tuple[tuple, str, str]]:
    """(key path under training, message, hint) for each setting that cannot work on this machine."""
    backend = training.get("backend", "auto")
    key = ("distributed",)
    problems = []
    if layout.strategy == "fsdp2" and layout.device == "cpu":
        problems.append((key + ("strategy",), "strategy fsdp2 shards the model across GPUs; "
                         "accelerate has no FSDP on CPU processes",
                         "use strategy ddp with device cpu, or device gpu on a machine with GPUs"))
    if layout.strategy == "fsdp2" and backend == "unsloth":
        problems.append((key + ("strategy",), "the unsloth backend trains on several GPUs only as "
                         "Unsloth documents it, a full copy of the model per GPU (ddp); FSDP2 "
                         "sharding is not supported with it",
                         "set strategy: ddp, or training.backend: hf (or auto) for fsdp2"))
    if not layout.launched:
        return problems
    if backend == "unsloth" and layout.device == "cpu":
        problems.append((key + ("device",), "the unsloth backend needs CUDA GPUs, and device is cpu",
                         "set device: gpu, or training.backend: hf to train on CPU processes"))
    if layout.device == "gpu":
        have = visible_gpus() if gpus is None else gpus
        if layout.processes > have:
            fewer = (f"set processes: auto (one per visible GPU) or at most {have}" if have
                     else "run it on a machine with GPUs")
            problems.append((key + ("processes",), f"{layout.processes} process"
                             f"{'es' * (layout.processes != 1)} asked for on this machine, one "
                             f"per GPU, but it has {have} visible CUDA GPU{'s' * (have != 1)}",
                             f"{fewer}; check CUDA_VISIBLE_DEVICES; device: cpu runs the "
                             "processes on CPU cores (slow: for machines without GPUs and tests)"))
    if layout.machines > 1 and layout.main_port == 0:
        problems.append((key + ("main_port",), "main_port 0 picks a free port on one machine, but "
                         f"{layout.machines} machines must all know the rendezvous port",
                         "set main_port to a port open on machine 0, e.g. 29500"))
    if layout.machine_rank >= layout.machines:
        problems.append((key + ("machine_rank",), f"machine_rank {layout.machine_rank} is not "
                         f"below machines ({layout.machines})",
                         f"machine ranks are 0..{layout.machines - 1}: 0 on the main machine"))
    return problems


def refuse(training: dict, layout: Layout, gpus: int | None = None) -> None:
    """The first problem as a StepError (for runs that did not go through the pre-flight)."""
    for path, message, hint in layout_problems(training, layout, gpus):
        where = ".".join(("training",) + path)
        raise StepError(f"{where}: {message}\n    hint: {hint}")


def global_batch(training: dict, layout: Layout) -> int:
    return (int(training.get("per_device_train_batch_size", 2))
            * int(training.get("gradient_accumulation_steps", 4)) * layout.world_size)


def batch_line(training: dict, layout: Layout) -> str:
    per_device = training.get("per_device_train_batch_size", 2)
    accumulation = training.get("gradient_accumulation_steps", 4)
    return (f"per-device batch {per_device} x gradient accumulation {accumulation} x "
            f"{layout.world_size} process{'es' * (layout.world_size != 1)} = global batch "
            f"{global_batch(training, layout)} rows per optimizer step")


def plan_lines(training: dict) -> list[str]:
    """What `recipe plan` says about the training processes (no GPU problem is raised here)."""
    layout = layout_of(training)
    backend = training.get("backend", "auto")
    device = "CPU processes" if layout.device == "cpu" else "one GPU each"
    head = f"training: {layout.describe()}, {device}, backend {backend}"
    if layout.machines > 1:
        head += (f"; this is machine {layout.machine_rank}, rendezvous at "
                 f"{layout.main_address}:{layout.main_port}")
    if not layout.launched:
        head = f"training: 1 process (the step's own), backend {backend}"
    return [head, f"training: {batch_line(training, layout)}"]
