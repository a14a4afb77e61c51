"""AdamW 8-bit (`optim: adamw_8bit`) as one bitsandbytes update per parameter group.

bitsandbytes' optimizer updates each tensor with its own Python call (config dict, contiguity
checks, dispatch, kernel): on the GPT-OSS-20B shape's 48 LoRA tensors that is 2-3 ms of host
time per optimizer step, in a packed step whose host time is what bounds it
(bench/results/training.md). The update is elementwise and its 8-bit state is quantized in
blocks of 256 elements, so where every tensor of a group is a whole number of blocks (and large
enough for 8-bit state), one call over the group's concatenated gradients and parameters
quantizes the same blocks from the same numbers: parameters and state equal bitsandbytes' own
update bit for bit (tests/test_training_flat_adamw8bit.py: shown on bitsandbytes' CPU kernels;
its GPU case is not yet run). The state is stored per
tensor under bitsandbytes' keys, as views of one flat buffer per group.

`install(trainer)` hands the Trainer this optimizer (with the kwargs it would have given
bitsandbytes) where that holds, and says why not otherwise; the run's summary records which.
"""

from __future__ import annotations

import functools

BLOCK = 256            # bitsandbytes' block of 8-bit optimizer state
MIN_8BIT_SIZE = 4096   # bitsandbytes' default: smaller tensors keep 32-bit state
STATE_KEYS = ("state1", "state2", "absmax1", "absmax2")
OPTIMS = ("adamw_8bit", "adamw_bnb_8bit")


def reason_not_flat(params) -> str | None:
    """Why one update per group would not equal bitsandbytes' per-tensor one; None if it does."""
    params = list(params)
    if not params:
        return "no trainable parameters"
    for param in params:
        if param.numel() % BLOCK or param.numel() < MIN_8BIT_SIZE:
            return (f"a trainable tensor of shape {list(param.shape)} is not a whole number of "
                    f"{BLOCK}-element blocks of at least {MIN_8BIT_SIZE} elements")
    if len({(p.dtype, p.device) for p in params}) > 1:
        return "the trainable tensors differ in dtype or device"
    return None


def install(trainer) -> dict:
    """Give the Trainer the flat optimizer where it equals the one it would build."""
    import torch

    args, model = trainer.args, trainer.model
    optim = str(getattr(args.optim, "value", args.optim))
    if optim not in OPTIMS:
        why = f"optim is {optim}"
    elif args.optim_args or trainer.optimizer is not None or trainer.optimizer_cls_and_kwargs:
        why = "the optimizer or its arguments are set explicitly"
    elif getattr(trainer, "is_fsdp_enabled", False):
        why = "FSDP shards the parameters"
    elif any(p.requires_grad for m in model.modules() if isinstance(m, torch.nn.Embedding)
             for p in m.parameters(recurse=False)):
        why = "an embedding is trained (the Trainer keeps its state in 32 bits)"
    else:
        why = reason_not_flat(p for p in model.parameters() if p.requires_grad)
    if why is None:
        cls, kwargs = trainer.get_optimizer_cls_and_kwargs(args, model)
        if cls.__module__.split(".")[0] != "bitsandbytes" or cls.__name__ != "AdamW":
            why = f"the Trainer would build {cls.__name__}"
        elif kwargs.get("optim_bits") != 8 or kwargs.get("is_paged") or set(kwargs) - {
                "lr", "betas", "eps", "optim_bits", "is_paged"}:
            why = f"the optimizer's arguments {sorted(kwargs)} are not plain 8-bit AdamW's"
    if why is not None:
        return {"optimizer_update": "per tensor", "why": why}
    trainer.optimizer_cls_and_kwargs = (optimizer_class(), kwargs)
    return {"optimizer_update": "one per parameter group (runner.train.flat_adamw8bit)"}


@functools.cache
def optimizer_class():
    import torch
    from bitsandbytes import functional

    class FlatAdamW8bit(torch.optim.Optimizer):
        """bitsandbytes.optim.AdamW(optim_bits=8) over whole parameter groups at once."""

        def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                     optim_bits=8, is_paged=False):
            if optim_bits != 8 or is_paged:
                raise ValueError("FlatAdamW8bit is 8-bit AdamW without paging")
            super().__init__(params, {"lr": lr, "betas": betas, "eps": eps,
                                      "weight_decay": weight_decay})
            for group in self.param_groups:
                why = reason_not_flat(group["params"]) if group["params"] else None
                if why:
                    raise ValueError(f"FlatAdamW8bit cannot update this group: {why}")
            self.flat: list[dict] = []

        def _flat_state(self) -> list[dict]:
            """One buffer per state tensor and group; each tensor's state is a view of it."""
            if self.flat:
                return self.flat
            for group in self.param_groups:
                size = sum(p.numel() for p in group["params"])
                device = group["params"][0].device if group["params"] else "cpu"
                flat = {"state1": torch.zeros(size, dtype=torch.uint8, device=device),
                        "state2": torch.zeros(size, dtype=torch.uint8, device=device),
                        "absmax1": torch.zeros(size // BLOCK, device=device),
                        "absmax2": torch.zeros(size // BLOCK, device=device),
                        "qmap1": functional.create_dynamic_map(signed=True).to(device),
                        "qmap2": functional.create_dynamic_map(signed=False).to(device)}
                start = 0
                for p in group["params"]:
                    end = start + p.numel()
                    state = self.state[p]
                    state["step"] = state.get("step", 0)
                    state.update({key: flat[key][start:end].view(p.shape)   # as bitsandbytes
                                  for key in ("state1", "state2")})
                    state.update({key: flat[key][start // BLOCK:end // BLOCK]
                                  for key in ("absmax1", "absmax2")})
                    state.update(qmap1=flat["qmap1"], qmap2=flat["qmap2"])
                    start = end
                self.flat.append(flat)
            return self.flat

        @torch.no_grad()
        def step(self, closure=None):
            loss = None
            if closure is not None:
                with torch.enable_grad():
                    loss = closure()
            for group, flat in zip(self.param_groups, self._flat_state(), strict=True):
                params = [p for p in group["params"] if p.grad is not None]
                steps = {self.state[p]["step"] for p in params}
                if len(params) == len(group["params"]) and len(steps) == 1:
                    values = torch.cat([p.reshape(-1) for p in params])
                    grads = torch.cat([p.grad.reshape(-1) for p in params])
                    self._update(group, grads, values, flat, steps.pop() + 1)
                    torch._foreach_copy_(params, [v.view_as(p) for v, p in
                                                  zip(values.split([p.numel() for p in params]),
                                                      params, strict=True)])
                    for p in params:
                        self.state[p]["step"] += 1
                else:   # a tensor without a gradient skips the step, as bitsandbytes does
                    for p in params:
                        self.state[p]["step"] += 1
                        self._update(group, p.grad.contiguous(), p.data, self.state[p],
                                     self.state[p]["step"])
            return loss

        @staticmethod
        def _update(group, grad, values, state, step) -> None:
            functional.optimizer_update_8bit_blockwise(
                "adam", grad, values, state["state1"], state["state2"], group["betas"][0],
                group["betas"][1], 0.0, 0.0, group["eps"], step, group["lr"], state["qmap1"],
                state["qmap2"], state["absmax1"], state["absmax2"], group["weight_decay"],
                gnorm_scale=1.0, skip_zeros=False)

        def load_state_dict(self, state_dict) -> None:
            """Copy a saved state (this class's or bitsandbytes AdamW's, same keys) into the flat
            buffers as stored: torch's default would cast the uint8 state to the parameters'
            dtype."""
            saved_groups = state_dict["param_groups"]
            if [len(g["params"]) for g in saved_groups] != [len(g["params"]) for g in
                                                           self.param_groups]:
                raise ValueError("the saved optimizer state has other parameter groups")
            self._flat_state()
            for group, saved in zip(self.param_groups, saved_groups, strict=True):
                group.update({k: v for k, v in saved.items() if k != "params"})
                for index, p in zip(saved["params"], group["params"], strict=True):
                    entry = state_dict["state"].get(index)
                    if entry is None:
                        continue
                    state = self.state[p]
                    state["step"] = int(entry["step"])
                    for key in STATE_KEYS:
                        state[key].copy_(entry[key])

    return FlatAdamW8bit
