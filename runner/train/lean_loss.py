"""The training loss of the unsloth backend: the model's own masked cross-entropy, no host syncs.

TRL 1.15's SFTTrainer.compute_loss runs its fused LM head, which also computes every token's
log-probability, entropy and top-1 hit, gathers the trained positions (a `nonzero`), and reads
four scalars back to the host per micro-batch for its entropy, accuracy and token-count metrics;
the Trainer then reads the token count once more. Each read waits for the GPU to drain. On a
packed GPT-OSS step (H200, bench/results/training.md) that path cost about 45-70 ms of 145.

Here a training micro-batch goes through the model's own loss instead (Unsloth's chunked fused
cross-entropy, which never builds the [tokens, vocabulary] logits, as a bare Unsloth loop does),
and the non-padding tokens are summed on the device and read only when the Trainer logs, saves
or evaluates. Packed batches (runner.train.packing) go further: the LM head and the
cross-entropy run on the trained positions only (runner.train.trained_head), the same loss
without the head's matmul over prompt and padding tokens. TRL's entropy and mean_token_accuracy metrics are therefore not logged in
training. Evaluation keeps TRL's path. The contract's first-step check still compares this loss
with the masked cross-entropy computed independently (runner.train.contract).

Used only where the model's loss is what TRL would compute: no router auxiliary loss, loss_type
nll, no custom loss function or label smoothing.
"""

from __future__ import annotations

from runner.train import trained_head


def reason_to_keep_trl(trainer, aux_coefficient: float) -> str | None:
    """Why TRL's own compute_loss must stay, or None when the lean loss computes the same."""
    if aux_coefficient:
        return "the router auxiliary loss is on (TRL adds it)"
    if getattr(trainer.args, "loss_type", "nll") != "nll":
        return f"loss_type {trainer.args.loss_type} is TRL's"
    if trainer.compute_loss_func is not None or trainer.label_smoother is not None:
        return "a custom loss function or label smoothing is set"
    return None


def install(trainer, aux_coefficient: float, lm_head_positions: str = "trained") -> dict:
    """Replace trainer.compute_loss for training micro-batches; returns what was done (for the
    run's summary). Call before any other wrapper of compute_loss (the contract's check)."""
    import transformers

    reason = reason_to_keep_trl(trainer, aux_coefficient)
    if reason is not None:
        return {"loss": "trl", "why": reason}
    trl_loss = trainer.compute_loss
    counter = TokenCounter(trainer.processing_class)
    router_flag = hasattr(trainer.model.config.get_text_config(), "output_router_logits")
    head, head_why = _trained_head(trainer, lm_head_positions)
    summary = {"loss": "model", "why": "the model's masked cross-entropy, tokens counted on device",
               "lm_head": "trained positions only" if head is not None else f"every position ({head_why})"}

    def compute_loss(model, inputs, return_outputs=False, num_items_in_batch=None, **kwargs):
        listed = {key: inputs[key] for key in trained_head.KEYS if key in inputs}
        inputs = {key: value for key, value in inputs.items() if key not in listed}
        if not model.training:
            return trl_loss(model, inputs, return_outputs=return_outputs,
                            num_items_in_batch=num_items_in_batch, **kwargs)
        counter.add(inputs)
        # A model config asking for router logits would add the aux loss to outputs.loss.
        extra = {"output_router_logits": False} if router_flag else {}
        # A wrapped model (DDP) must see its forward called: its gradient hooks depend on it.
        use_head = head is not None and listed and model is trainer.model
        if head is not None and listed and not use_head:
            summary["lm_head"] = "every position (the Trainer wrapped the model)"
        result = transformers.Trainer.compute_loss(
            trainer, head if use_head else model,
            {**inputs, "use_cache": False, **extra, **(listed if use_head else {})},
            return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        if use_head and trained_head.chunk_mode():     # CUDA: compiled, or why not
            summary["lm_head_chunks"] = trained_head.chunk_mode()
        return result

    trainer.compute_loss = compute_loss
    # The counter replaces the Trainer's per-micro-batch `.item()` token count.
    trainer.args.include_num_input_tokens_seen = "no"
    trainer.add_callback(counter.callback())
    return summary


def _trained_head(trainer, lm_head_positions: str):
    """(runner.train.trained_head's forward, or None; why not) for this trainer's batches."""
    from runner.train.packing import PackedCollator

    if lm_head_positions != "trained":
        return None, f"training.lm_head_positions is {lm_head_positions}"
    if not isinstance(trainer.data_collator, PackedCollator):
        return None, "padded batches"
    if trainer.args.world_size > 1:
        return None, "distributed: the wrapped model's forward must run"
    reason = trained_head.reason_not_usable(trainer.model)
    if reason is not None:
        return None, reason
    trainer.data_collator.trained_positions = True
    return trained_head.forward_for(trainer.model, trainer.accelerator.autocast), None


class TokenCounter:
    """Non-padding tokens of the training micro-batches, summed on the device and written into
    the Trainer's state.num_input_tokens_seen whenever the state is read (log, save, evaluate,
    the last step), as include_num_input_tokens_seen="non_padding" would count them."""

    def __init__(self, tokenizer):
        self.pad_token_id = getattr(tokenizer, "pad_token_id", None)
        self.base = 0
        self.total = None

    def add(self, inputs: dict) -> None:
        mask = inputs.get("attention_mask")
        if mask is not None and not isinstance(mask, dict):
            count = mask.sum()
        elif self.pad_token_id is not None:
            count = (inputs["input_ids"] != self.pad_token_id).sum()
        else:
            count = inputs["input_ids"].new_tensor(inputs["input_ids"].numel())
        self.total = count if self.total is None else self.total + count

    def seen(self) -> int:
        return self.base + (int(self.total) if self.total is not None else 0)

    def callback(self):
        from transformers import TrainerCallback

        counter = self

        class CountTokens(TrainerCallback):
            deferred = False       # set by runner.train.async_log: it reads logged steps' count

            def on_train_begin(self, args, state, control, **kwargs):
                counter.base, counter.total = state.num_input_tokens_seen, None

            def on_step_end(self, args, state, control, **kwargs):
                logged = control.should_log and not self.deferred
                if (logged or control.should_save or control.should_evaluate
                        or control.should_training_stop or state.global_step >= state.max_steps):
                    state.num_input_tokens_seen = counter.seen()

            def device_state(self) -> dict:
                """The count so far, not read back (async_log copies it without waiting)."""
                import torch
                total = counter.total if counter.total is not None else torch.zeros((), dtype=torch.long)
                return {"num_input_tokens_seen": total + counter.base}

        return CountTokens()
