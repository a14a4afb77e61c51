"""Logging that does not stall the GPU: each logged step's values are read one step later.

transformers' Trainer reads the loss and the grad norm back to the host at every logged step
(`logging_steps: 1`, the hand-run workflow's), and each read waits until the GPU has run all the
work queued so far. The host then prepares the next step while the GPU idles. On a packed
GPT-OSS step the forward is bound by the host's launches and the backward by the GPU, so the
next forward's launches could run under this backward (bench/results/training.md).

Here a logged step's values (loss, grad norm, and what callbacks keep on the device, such as
lean_loss's token count) are gathered into one device tensor and copied to pinned host memory
without blocking; the row is written at the next logged step, or when training saves, evaluates
or stops (those steps log synchronously, as before, after the rows still pending). The host
therefore never waits for more than the step before the current one. A row keeps its own step,
epoch, token count, and time: a CUDA event recorded behind the step's last kernel
(train_metrics.StepClock), so tokens/s stays exact.

A callback that keeps state values on the device offers them as `device_state() -> {field:
tensor}` and leaves logged steps to this logger when its `deferred` is set.
"""

from __future__ import annotations

from dataclasses import dataclass


def reason_to_log_synchronously(trainer) -> str | None:
    """Why logged values must be read at once, or None when deferring them gains something."""
    import torch

    if not torch.cuda.is_available() or trainer.args.device.type != "cuda":
        return "not on CUDA: nothing runs ahead of the host"
    if trainer.args.world_size > 1:
        return "distributed: each log gathers the loss across ranks"
    if trainer.args.include_num_input_tokens_seen not in ("no", False):
        return "the Trainer reads every micro-batch's token count (a sync per micro-batch)"
    return None


@dataclass
class Pending:
    """A logged step whose values are on their way to the host."""
    step: int
    epoch: float | None
    steps: int                      # optimizer steps the loss sums over
    learning_rate: float
    fields: list[str]
    host: object                    # pinned float64 tensor, one value per field
    copied: object                  # CUDA event behind the copy (None on CPU)


def install(trainer, clock, force: bool = False) -> dict:
    """Defer the reads of logged steps on this trainer; returns what was done (summary).
    `force` defers them even where it gains nothing (CPU), as the CPU tests do to check that
    the rows are the ones synchronous logging writes."""
    reason = None if force else reason_to_log_synchronously(trainer)
    if reason is not None:
        return {"logging": "synchronous", "why": reason}
    sources = [cb for cb in trainer.callback_handler.callbacks if hasattr(cb, "device_state")]
    for source in sources:
        source.deferred = True
    original = trainer._maybe_log_save_evaluate
    pending: list[Pending] = []

    def maybe_log_save_evaluate(tr_loss, grad_norm, model, trial, epoch, ignore_keys_for_eval,
                                start_time, learning_rate=None):
        state, control = trainer.state, trainer.control
        due = control.should_log and state.global_step > trainer._globalstep_last_logged
        final = (control.should_evaluate or control.should_save or control.should_training_stop
                 or state.global_step >= state.max_steps)
        snapshot = None
        if due and not final:
            snapshot = _snapshot(trainer, tr_loss, grad_norm, learning_rate, sources, clock)
            control.should_log = False
        asked = control.should_log          # the Trainer's on_log clears it
        while pending:
            _write(trainer, pending.pop(0), start_time)
        trainer.control.should_log = asked
        if snapshot is not None:
            pending.append(snapshot)
        return original(tr_loss, grad_norm, model, trial, epoch, ignore_keys_for_eval,
                        start_time, learning_rate=learning_rate)

    trainer._maybe_log_save_evaluate = maybe_log_save_evaluate
    return {"logging": "deferred one step",
            "why": "logged values are copied without waiting for the GPU"}


def _snapshot(trainer, tr_loss, grad_norm, learning_rate, sources, clock) -> Pending:
    import torch

    state = trainer.state
    values = {"loss": tr_loss.detach()}
    if isinstance(grad_norm, torch.Tensor):
        values["grad_norm"] = grad_norm.detach()
    for source in sources:
        values.update(source.device_state())
    device = tr_loss.device
    gathered = torch.stack([v.to(device=device, dtype=torch.float64).reshape(())
                            for v in values.values()])
    if gathered.is_cuda:
        host = torch.empty(gathered.shape, dtype=torch.float64, pin_memory=True)
        host.copy_(gathered, non_blocking=True)
        copied = torch.cuda.Event()
        copied.record()
    else:
        host, copied = gathered.clone(), None
    clock.mark(state.global_step)
    tr_loss -= tr_loss     # after the gather in stream order, as the Trainer resets it
    steps = state.global_step - trainer._globalstep_last_logged
    trainer._globalstep_last_logged = state.global_step
    trainer.store_flos()
    rate = learning_rate if learning_rate is not None else trainer._get_learning_rate()
    return Pending(state.global_step, state.epoch, steps, rate, list(values), host, copied)


def _write(trainer, row: Pending, start_time) -> None:
    """Log a pending step as the Trainer would have at that step."""
    if row.copied is not None:
        row.copied.synchronize()
    values = dict(zip(row.fields, row.host.tolist(), strict=True))
    loss = values.pop("loss")
    trainer._total_loss_scalar += loss
    logs = {"loss": loss / row.steps}
    if "grad_norm" in values:
        logs["grad_norm"] = values.pop("grad_norm")
    logs["learning_rate"] = row.learning_rate
    state = trainer.state
    now = {"global_step": state.global_step, "epoch": state.epoch,
           **{field: getattr(state, field) for field in values}}
    state.global_step, state.epoch = row.step, row.epoch
    for field, value in values.items():
        setattr(state, field, int(value))
    try:
        trainer.log(logs, start_time)
    finally:
        for field, value in now.items():
            setattr(state, field, value)
