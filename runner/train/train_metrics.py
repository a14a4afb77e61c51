"""What training records: the loss curve (metrics.jsonl), tokens/s, steps/s, peak memory, and
TensorBoard events when the recipe asks.

metrics.jsonl is written next to the checkpoints (it must survive a crash, like them) and copied
into the run folder at the end; on resume the rows after the resumed step are dropped, so the
curve has each step once.
"""

from __future__ import annotations

import json
import math
import resource
import time
from pathlib import Path

GIB = 1024 ** 3


def peak_memory() -> dict:
    """Peak GPU memory (allocated and reserved by torch) and the process's peak resident set."""
    import torch
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    peak = {"peak_rss_gib": round(rss_kib / (1024 ** 2), 3)}
    if torch.cuda.is_available():
        peak["peak_gpu_allocated_gib"] = round(torch.cuda.max_memory_allocated() / GIB, 3)
        peak["peak_gpu_reserved_gib"] = round(torch.cuda.max_memory_reserved() / GIB, 3)
    return peak


def reset_peak_memory() -> None:
    import torch
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def trim_metrics(path: Path, last_step: int) -> None:
    """Keep the rows up to the step a resumed run starts from."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= last_step]
    path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


def read_metrics(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip()]


def _numbers(logs: dict) -> dict:
    return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in logs.items()
            if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v))}


class StepClock:
    """Seconds from the start of training to the end of a step, for that step's row.

    A row is written when the step's values reach the host: at once (the read waited for the
    GPU, so the host's clock is the step's end), or one step later (runner.train.async_log),
    when the step's end is the CUDA event `mark` recorded behind its last kernel.
    """

    def __init__(self):
        self.started = None
        self.first_event = None
        self.events: dict[int, object] = {}

    def start(self) -> None:
        import torch
        self.started = time.perf_counter()
        if torch.cuda.is_available():
            self.first_event = torch.cuda.Event(enable_timing=True)
            self.first_event.record()

    def mark(self, step: int) -> None:
        if self.first_event is None:
            return                   # no GPU: the host's clock is the step's end
        import torch
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        self.events[step] = event

    def elapsed(self, step: int) -> float:
        event = self.events.pop(step, None)
        if event is None or self.first_event is None:
            return time.perf_counter() - self.started if self.started else 0.0
        event.synchronize()
        return self.first_event.elapsed_time(event) / 1000


def metrics_callback(metrics_path: Path, ctx, tensorboard_dir: Path | None = None,
                     clock: StepClock | None = None):
    """A TrainerCallback writing one metrics.jsonl row per log and drawing the step bar."""
    from transformers import TrainerCallback

    clock = clock or StepClock()

    class RunMetrics(TrainerCallback):
        def __init__(self):
            self.first_step = 0
            self.first_tokens = 0
            self.bar = None
            self.writer = None
            self.throughput: dict = {}

        def on_train_begin(self, args, state, control, **kwargs):
            reset_peak_memory()
            self.first_step, self.first_tokens = state.global_step, state.num_input_tokens_seen
            self.bar = ctx.progress(total=state.max_steps, desc="train", unit="step")
            self.bar.update(state.global_step)
            if tensorboard_dir is not None:
                from torch.utils.tensorboard import SummaryWriter
                self.writer = SummaryWriter(log_dir=str(tensorboard_dir),
                                            purge_step=state.global_step + 1)
            clock.start()

        def on_step_end(self, args, state, control, **kwargs):
            self.bar.update(state.global_step - self.bar.n)

        def on_log(self, args, state, control, logs=None, **kwargs):
            row = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4),
                   **_numbers(logs or {}), **self.rates(state), **peak_memory()}
            with open(metrics_path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(row) + "\n")
            if "loss" in row:
                self.bar.set_postfix(loss=f"{row['loss']:.4f}", refresh=False)
            if "eval_loss" in row:
                ctx.log(f"step {row['step']}: eval_loss {row['eval_loss']:.4f}")
            if self.writer is not None:
                for key, value in row.items():
                    if key not in ("step", "epoch"):
                        self.writer.add_scalar(key, value, state.global_step)

        def rates(self, state) -> dict:
            elapsed = clock.elapsed(state.global_step)
            steps = state.global_step - self.first_step
            tokens = state.num_input_tokens_seen - self.first_tokens
            self.throughput = {
                "elapsed_s": round(elapsed, 3), "tokens_seen": state.num_input_tokens_seen,
                "tokens_per_s": round(tokens / elapsed, 2) if elapsed else None,
                "steps_per_s": round(steps / elapsed, 4) if elapsed else None}
            return self.throughput

        def on_train_end(self, args, state, control, **kwargs):
            self.rates(state)
            if self.bar is not None:
                self.bar.close()
            if self.writer is not None:
                self.writer.close()

    return RunMetrics()


def attach_recording(trainer, ctx, metrics_path: Path, tensorboard_dir: Path | None):
    """The run's metrics callback in place of transformers' printing ones, and logging one step
    late where that gains something (runner.train.async_log); the callback's `logging` says
    which. Attach after every callback that keeps values on the device."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from runner.train import async_log

    for noisy in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(noisy)
    clock = StepClock()
    callback = metrics_callback(metrics_path, ctx, tensorboard_dir, clock)
    trainer.add_callback(callback)
    callback.logging = async_log.install(trainer, clock)
    return callback


def tensorboard_ready(report_to: str) -> bool:
    """True when TensorBoard logging is asked for; a clear error when it cannot be written."""
    if report_to != "tensorboard":
        return False
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError as error:
        from runner.errors import StepError
        raise StepError("training.report_to is tensorboard but the tensorboard package is not "
                        f"installed ({error}): `pip install tensorboard`, or set "
                        "training.report_to: none") from error
    return True


def loss_summary(rows: list[dict]) -> dict:
    losses = [r["loss"] for r in rows if "loss" in r]
    evals = [r["eval_loss"] for r in rows if "eval_loss" in r]
    return {"first_loss": losses[0] if losses else None,
            "final_loss": losses[-1] if losses else None,
            "min_loss": min(losses) if losses else None,
            "eval_loss": evals[-1] if evals else None,
            "logged_steps": len(losses)}
