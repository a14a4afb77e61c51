"""The MoE training contract: checks before or at the first step, each a clear refusal.

- every declared LoRA target (`target_modules`, `target_parameters`) carries an adapter;
- after the first step every adapted target, the experts included, has a non-zero gradient;
- the trainer's loss on its first micro-batch is the masked cross-entropy (plus the router
  auxiliary loss only when the recipe asks for it), and the coefficient in effect is recorded;
- packed batches give every row the loss it has alone (`check_packing`).

These guard against traps seen with GPT-OSS: expert LoRA silently not applied (unsloth#3405,
#4193), the shipped `router_aux_loss_coef` dominating the loss (ms-swift#5627), rows of a packed
sequence attending to each other.
"""

from __future__ import annotations

from runner.errors import StepError
from runner.train.train_common import MLP_MODULES

# Names a dense-model MLP target takes on GPT-OSS, whose experts are fused parameters (PEFT's
# ParamWrapper labels them mlp.experts.<parameter>; Unsloth's 4-bit experts are module lists).
EXPERT_ALIASES = {"gate_proj": ("gate_up_proj", "gate_up_projs"),
                  "up_proj": ("gate_up_proj", "gate_up_projs"),
                  "down_proj": ("down_proj", "down_projs")}
HALF_TOLERANCE, FULL_TOLERANCE = 2e-2, 1e-4
# Tokens per LM-head chunk in the first-step loss check: its fp32 logits (x the vocabulary)
# must stay well below the step's own peak, which the check runs inside.
CHECK_CHUNK = 128


def adapted_modules(model) -> dict[str, object]:
    """label -> module of every module carrying LoRA weights; a wrapped parameter's label is
    its module path plus the parameter name (mlp.experts.gate_up_proj)."""
    found = {}
    for name, module in model.named_modules():
        lora_a = getattr(module, "lora_A", None)
        if lora_a is None or not hasattr(lora_a, "__len__") or not len(lora_a):
            continue
        path = name.replace(".base_layer", "")
        parameter = getattr(module, "parameter_name", None)
        found[f"{path}.{parameter}" if parameter else path] = module
    return found


def _matches(label: str, target: str, model_type: str) -> bool:
    names = (target,)
    if model_type == "gpt_oss" and target in MLP_MODULES:
        names += EXPERT_ALIASES[target]
    dotted = f".{label}."
    return any(f".{name}." in dotted for name in names)


def check_targets(model, declared: list[str], model_type: str) -> dict[str, int]:
    """{target: adapters} for every declared target; refuses when one matches nothing."""
    adapted = adapted_modules(model)
    counts = {target: sum(_matches(label, target, model_type) for label in adapted)
              for target in declared}
    missing = [target for target, count in counts.items() if not count]
    if missing:
        kinds = sorted({label.rsplit(".", 1)[-1] for label in adapted}) or ["none"]
        raise StepError(
            f"lora targets {missing} match no module or parameter of this {model_type} model, so "
            f"they would silently train nothing; adapters went to: {', '.join(kinds)}. Fix the "
            "names in lora.target_modules / lora.target_parameters (GPT-OSS experts are "
            "mlp.experts.gate_up_proj and mlp.experts.down_proj) or remove them")
    return counts


def declared_targets(lora: dict) -> list[str]:
    return list(lora["target_modules"]) + list(lora.get("target_parameters") or [])


def lora_parameter_groups(model, declared: list[str], model_type: str) -> dict[str, list]:
    """target -> the trainable LoRA tensors of the modules it adapted."""
    groups: dict[str, list] = {}
    for label, module in adapted_modules(model).items():
        tensors = [p for part in (module.lora_A, module.lora_B) for p in part.parameters()
                   if p.requires_grad]
        for target in declared:
            if _matches(label, target, model_type):
                groups.setdefault(target, []).extend(tensors)
    return groups


def first_step_callback(groups: dict[str, list], record: dict):
    """A TrainerCallback: after the first optimizer step the loss must have been checked and
    every target's LoRA weights must have received a non-zero gradient, or training stops."""
    from transformers import TrainerCallback

    seen: dict[int, object] = {}
    handles = []
    def remember(param):
        seen[id(param)] = param.grad.detach().abs().amax()   # no sync: read after the step

    for tensors in groups.values():
        handles.extend(tensor.register_post_accumulate_grad_hook(remember) for tensor in tensors)

    class FirstStep(TrainerCallback):
        done = False

        def on_step_end(self, args, state, control, **kwargs):
            if self.done:
                return
            self.done = True
            for handle in handles:
                handle.remove()
            if "loss_check" not in record:
                raise StepError("the first training step never called the trainer's "
                                "compute_loss, so its loss could not be checked against the "
                                "masked cross-entropy; use training.backend: hf")
            largest = {target: max((float(seen[id(t)]) for t in tensors if id(t) in seen),
                                   default=0.0) for target, tensors in groups.items()}
            record["first_step_max_grad"] = largest
            dead = [target for target, value in largest.items() if not value > 0]
            if dead:
                raise StepError(
                    f"after the first step the LoRA weights of {dead} have no gradient: the "
                    "adapters are attached but the forward pass does not use them (as when an "
                    "MoE kernel reads the expert weights directly), so training would change "
                    "nothing there; use another training.backend or drop those targets")
    return FirstStep()


def start(trainer, job) -> dict:
    """Run the checks due before training and arm those due at the first step. The returned
    record fills in as training starts (loss_check, first_step_max_grad)."""
    model = trainer.model
    model_type = model.config.model_type
    record: dict = {}
    groups = {}
    if not job.model["full_finetuning"]:
        declared = declared_targets(job.lora)
        record["targets"] = check_targets(model, declared, model_type)
        groups = lora_parameter_groups(model, declared, model_type)
    record["router_aux_loss_coef"] = coefficient = router_aux_in_effect(trainer, job.training)
    if job.packed:
        record["packing"] = _start_packing(trainer, job, coefficient)
    if job.backend == "unsloth":   # the model's own fused loss (hf keeps TRL's chunked LM head)
        from runner.train import lean_loss
        record["loss"] = lean_loss.install(trainer, coefficient,
                                          job.training["lm_head_positions"])
    loss_check_wrapper(trainer, record, coefficient)
    trainer.add_callback(first_step_callback(groups, record))
    return record


def _start_packing(trainer, job, coefficient: float) -> dict:
    from runner.train import packed_attention

    if job.training["packing"] and coefficient:
        raise StepError("training.packing pads each packed sequence, and the router auxiliary "
                        "loss would count the padding tokens: set router_aux_loss_coef: 0, or "
                        "use training.padding_free: true (packs without padding)")
    kernel = packed_attention.install(trainer.model)
    items = [trainer.train_dataset[i] for i in range(min(3, len(trainer.train_dataset)))]
    check = check_packing(trainer.model, items, trainer.data_collator,
                          train_mode=not job.lora.get("dropout"))
    return {"kernel": kernel.kernel if kernel else "transformers", **check}


def token_losses(model, batch: dict, chunk: int = 2048):
    """(per-token cross-entropy of the labelled next tokens [N], their row index in the batch's
    flattened positions [N]); the LM head runs in chunks, never building [tokens, vocab]."""
    import torch
    import torch.nn.functional as F

    from runner.train.packed_attention import backbone_of

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    inputs = {key: batch[key] for key in ("input_ids", "attention_mask", "position_ids")
              if batch.get(key) is not None}
    hidden = backbone_of(model)(**inputs, use_cache=False).last_hidden_state[:, :-1]
    labels = batch["labels"][:, 1:].to(hidden.device)
    keep = labels != -100
    head = base.get_output_embeddings()
    cap = getattr(base.config.get_text_config(), "final_logit_softcapping", None)
    picked, targets = hidden[keep], labels[keep]
    losses = []
    for start in range(0, len(targets), chunk):
        logits = head(picked[start:start + chunk]).float()
        if cap:
            logits = cap * torch.tanh(logits / cap)
        losses.append(F.cross_entropy(logits, targets[start:start + chunk], reduction="none"))
    where = keep.flatten().nonzero().squeeze(-1)
    return (torch.cat(losses) if losses else hidden.new_zeros(0, dtype=torch.float32)), where


def tolerance_for(model) -> float:
    import torch
    dtype = next(model.parameters()).dtype
    return FULL_TOLERANCE if dtype == torch.float32 else HALF_TOLERANCE


def router_aux_in_effect(trainer, training: dict) -> float:
    """The router auxiliary-loss coefficient TRL will use; refuses when it differs from the
    recipe's (TRL falls back to the model config's value when none is given)."""
    enabled = bool(getattr(trainer, "aux_loss_enabled", False))
    coefficient = float(getattr(trainer, "router_aux_loss_coef", 0.0) or 0.0) if enabled else 0.0
    asked = float(training["router_aux_loss_coef"])
    if abs(coefficient - asked) > 1e-12:
        raise StepError(f"the trainer would weight the router auxiliary loss by {coefficient} but "
                        f"training.router_aux_loss_coef is {asked}: this training stack does "
                        "not honour the setting; report it and set the coefficient explicitly")
    return coefficient


def loss_check_wrapper(trainer, record: dict, aux_coefficient: float) -> None:
    """Wrap trainer.compute_loss: on the first training micro-batch, compare the trainer's loss
    with the masked cross-entropy computed here on the same batch (same RNG for dropout)."""
    import torch

    original = trainer.compute_loss

    def compute_loss(model, inputs, return_outputs=False, num_items_in_batch=None, **kwargs):
        if model.training:   # what the memory plan is compared with
            tokens = int(inputs["input_ids"].numel())
            record["largest_micro_batch_tokens"] = max(
                tokens, record.get("largest_micro_batch_tokens", 0))
        if "loss_check" in record or not model.training:
            return original(model, inputs, return_outputs=return_outputs,
                            num_items_in_batch=num_items_in_batch, **kwargs)
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        # The backbone is called directly, past the autocast accelerate wraps forward in.
        with torch.no_grad(), torch.random.fork_rng(devices=devices), \
                trainer.accelerator.autocast():
            # DDP wraps the model: score its module (no_grad, so nothing of DDP is bypassed).
            losses, _ = token_losses(trainer.accelerator.unwrap_model(model), inputs,
                                     chunk=CHECK_CHUNK)
            aux = _aux_loss(model, inputs) if aux_coefficient else 0.0
        result = original(model, inputs, return_outputs=return_outputs,
                          num_items_in_batch=num_items_in_batch, **kwargs)
        got = float((result[0] if return_outputs else result).detach().float())
        record["loss_check"] = _compare_loss(trainer, got, losses, num_items_in_batch,
                                             aux_coefficient * aux, tolerance_for(model))
        return result

    trainer.compute_loss = compute_loss


def _aux_loss(model, inputs) -> float:
    outputs = model(**{k: v for k, v in inputs.items() if k != "labels"},
                    output_router_logits=True, use_cache=False)
    return float(outputs.aux_loss)


def _compare_loss(trainer, got: float, losses, num_items, aux: float, tolerance: float) -> dict:
    total = float(losses.sum())
    scale = 1
    if num_items is not None and getattr(trainer.args, "average_tokens_across_devices", False):
        scale = trainer.accelerator.num_processes
    steps = getattr(trainer, "current_gradient_accumulation_steps", 1) if num_items else 1
    # A micro-batch's loss is its token sum over the whole step's tokens, or its own mean.
    candidates = {"step_tokens": total * scale / float(num_items) + aux / steps} if num_items else {}
    candidates["micro_batch_mean"] = total / max(len(losses), 1) + aux
    name, want = min(candidates.items(), key=lambda item: abs(item[1] - got))
    relative = abs(got - want) / max(abs(want), 1e-8)
    check = {"trainer_loss": round(got, 6), "masked_cross_entropy": round(want, 6),
             "normalisation": name, "relative_difference": relative, "aux_added": aux}
    if relative > tolerance:
        raise StepError(f"the trainer's first loss {got:.6f} is not the masked cross-entropy of "
                        f"its batch ({want:.6f}, relative difference {relative:.2e}): something "
                        "adds to or reweights the loss (a router auxiliary loss left on by the "
                        "model config?); training stops before it optimizes the wrong objective")
    return check


def check_packing(model, items: list[dict], collator, *, train_mode: bool) -> dict:
    """Score up to three training rows alone and packed together (the collator's sequence);
    refuses unless every row's mean next-token loss agrees. train_mode: compute as in training
    (only when nothing is random there, i.e. no dropout)."""
    import torch

    from runner.train.packing import row_spans

    rows = [{"input_ids": list(item["input_ids"]), "labels": list(item["input_ids"])}
            for item in items[:3]]
    if len(rows) < 2:
        return {"rows": len(rows), "max_relative_difference": 0.0}
    device = next(model.parameters()).device
    was_training = model.training
    model.train(train_mode)
    try:
        with torch.no_grad():
            alone = [float(token_losses(model, _tensors(row, device))[0].mean()) for row in rows]
            batch = {key: value.to(device) for key, value in collator(rows).items()}
            losses, where = token_losses(model, batch)
    finally:
        model.train(was_training)
    spans = row_spans(batch["position_ids"][0].tolist())[:len(rows)]
    packed = [float(losses[(where >= a) & (where < b - 1)].mean()) for a, b in spans]
    differences = [abs(p - a) / max(abs(a), 1e-8) for p, a in zip(packed, alone, strict=True)]
    worst = max(differences)
    if worst > tolerance_for(model):
        row = differences.index(worst) + 1
        raise StepError(
            f"packing is not exact with this model and kernel: row {row} of a packed sequence "
            f"scores {packed[row - 1]:.5f} but {alone[row - 1]:.5f} alone (relative difference "
            f"{worst:.1e}), so packed rows would attend to each other; set training.packing and "
            "training.padding_free to false")
    return {"rows": len(rows), "max_relative_difference": worst}


def _tensors(row: dict, device) -> dict:
    import torch
    return {key: torch.tensor([value], device=device) for key, value in row.items()}
