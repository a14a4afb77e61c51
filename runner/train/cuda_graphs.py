"""CUDA graphs for packed training steps: a step's kernels replayed instead of launched one by one.

A packed GPT-OSS step of 8 real-length rows is host-bound on an H200: about 1,000 kernel launches
take longer to issue than the GPU takes to run them (bench/results/training.md). With
`training.cuda_graphs` (auto: on wherever it applies) every decoder layer is compiled with
torch.compile's "reduce-overhead" mode (PyTorch's regional compilation of a repeated block),
whose CUDA graph trees record a layer's kernels once per sequence length and then replay them.
Unsloth keeps GPT-OSS's MoE block eager (it wraps it in torch.compiler.disable), so the graphs
cover attention, norms and residuals.

It applies only where replays are safe and the lengths few:
- packed batches, padded to GRAPH_MULTIPLE tokens so that a run sees a handful of lengths
  (padded batches and padding_free change shape at almost every step);
- one micro-batch per optimizer step: the gradients a replay returns live in the graph's memory
  and the next replay overwrites them, so gradient accumulation would add wrong values;
- no gradient checkpointing (it reruns the layers outside the graphs), no LoRA dropout, one GPU.

Before training, every length of the first epoch's packed batches is run twice (compile and
warm up, then record), so recording is paid at the start, not in the middle of the run.
Evaluation and the contract's checks run the layers eagerly (`eager_layers`).
Pure Python at import: `recipe plan` uses `reasons_against` without torch.
"""

from __future__ import annotations

import contextlib
import time

from runner.errors import StepError

GRAPH_MULTIPLE = 512      # packed lengths under graphs: 512-token steps (4 FlexAttention blocks)
SCAN_BATCHES = 2000       # batches of the first epoch whose lengths are recorded before training
RUNS_PER_LENGTH = 2       # cudagraph trees warm a new shape up once, then record it


def reasons_against(training: dict, lora: dict, backend: str, cuda: bool,
                    checkpointing) -> list[str]:
    """Why CUDA graphs cannot train this recipe here ([] when they can)."""
    from runner.train.distributed_layout import layout_of

    reasons = []
    if backend != "unsloth":
        reasons.append(f"the {backend} backend is not unsloth")
    if not cuda:
        reasons.append("there is no CUDA GPU")
    if not training.get("packing"):
        reasons.append("training.packing is false (other batches change shape at every step)")
    if int(training.get("gradient_accumulation_steps", 1)) != 1:
        reasons.append("gradient_accumulation_steps is not 1 (a replay overwrites the previous "
                       "micro-batch's gradients)")
    if checkpointing:
        reasons.append("gradient checkpointing is on (it reruns the layers outside the graphs)")
    if lora.get("dropout"):
        reasons.append("lora.dropout is not 0")
    if layout_of(training).launched:
        reasons.append("training runs on several processes")
    return reasons


def decide(training: dict, lora: dict, backend: str, cuda: bool, checkpointing) -> tuple[bool, str]:
    """(graphs on, the note saying why) for training.cuda_graphs; true where they cannot work
    is refused, before anything loads."""
    asked = training.get("cuda_graphs", "auto")
    if asked is False:
        return False, "cuda graphs: off (training.cuda_graphs: false)"
    reasons = reasons_against(training, lora, backend, cuda, checkpointing)
    if reasons and asked is True:
        raise StepError(f"training.cuda_graphs is true but {'; '.join(reasons)}: fix that, or "
                        "set training.cuda_graphs: auto (on only where it applies) or false")
    if reasons:
        return False, f"cuda graphs auto: off, {reasons[0]}"
    return True, (f"cuda graphs {'auto: on' if asked == 'auto' else 'on'}: decoder layers "
                  f"replayed as CUDA graphs, packed lengths in steps of {GRAPH_MULTIPLE} tokens")


def plan_graphs(plan, lora: dict, training: dict, backend: str) -> None:
    """training.cuda_graphs -> plan.cuda_graphs, noted where packing makes it a question."""
    checkpointing = lora.get("use_gradient_checkpointing")
    if checkpointing == "auto":
        checkpointing = plan.checkpointing
    plan.cuda_graphs, why = decide(training, lora, backend, plan.device == "cuda", checkpointing)
    if training.get("packing") or training.get("cuda_graphs") is True:
        plan.notes.append(why)


def layers_of(model) -> list:
    from runner.train.packed_attention import backbone_of

    model = getattr(model, "module", model)       # DDP
    return list(getattr(backbone_of(model), "layers", None) or [])


def install(trainer, log) -> dict:
    """Compile the decoder layers in reduce-overhead mode, record the first epoch's packed
    lengths, run evaluation eagerly and mark every optimizer step; returns what the run's
    summary records (the lengths recorded)."""
    import torch

    layers = layers_of(trainer.model)
    for layer in layers:
        layer.compile(mode="reduce-overhead")
    trainer.add_callback(_step_marker())
    evaluate = trainer.prediction_step

    def prediction_step(*args, **kwargs):
        with eager_layers(trainer.model):
            return evaluate(*args, **kwargs)

    trainer.prediction_step = prediction_step
    start = time.time()
    lengths = warm_up(trainer, torch)
    log(f"cuda graphs: {len(layers)} decoder layers, {len(lengths)} packed length(s) recorded "
        f"before training ({', '.join(map(str, lengths))} tokens) in {time.time() - start:.1f} s")
    # Training's own peak is reset when it begins: this one includes the recordings.
    peak = torch.cuda.max_memory_allocated() / 2**30
    return {"layers": len(layers), "multiple": GRAPH_MULTIPLE, "lengths": lengths,
            "warm_up_s": round(time.time() - start, 1), "peak_gpu_allocated_gib": round(peak, 3)}


def warm_up(trainer, torch) -> list[int]:
    """Run each packed length of the first epoch forward and backward RUNS_PER_LENGTH times,
    as the training step does (autocast, the model's loss), then drop the gradients; the
    weights and the optimizer are untouched."""
    first: dict[int, dict] = {}
    for index, batch in enumerate(trainer.get_train_dataloader()):
        first.setdefault(int(batch["input_ids"].shape[-1]), batch)
        if index + 1 >= SCAN_BATCHES:
            break
    model = trainer.model
    model.train()
    device = next(model.parameters()).device
    # As the training loss calls the model (runner.train.lean_loss): no router logits.
    config = model.config.get_text_config()
    extra = {"output_router_logits": False} if hasattr(config, "output_router_logits") else {}
    for length in sorted(first):
        inputs = {key: value.to(device) for key, value in first[length].items()}
        for _ in range(RUNS_PER_LENGTH):
            torch.compiler.cudagraph_mark_step_begin()
            with trainer.accelerator.autocast():
                loss = model(**inputs, use_cache=False, **extra).loss
            loss.backward()
            del loss
            model.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    return sorted(first)


@contextlib.contextmanager
def eager_layers(model):
    """The decoder layers run uncompiled inside (a no-op unless `install` compiled them):
    evaluation and the checks would otherwise record graphs for shapes training never uses.
    Module.compile keeps its compiled call in `_compiled_call_impl`."""
    layers = [layer for layer in layers_of(model)
              if getattr(layer, "_compiled_call_impl", None) is not None]
    saved = [layer._compiled_call_impl for layer in layers]
    for layer in layers:
        layer._compiled_call_impl = None
    try:
        yield
    finally:
        for layer, compiled in zip(layers, saved, strict=True):
            layer._compiled_call_impl = compiled


def _step_marker():
    """A TrainerCallback telling the graph trees where each optimizer step begins, so a step's
    replays never count the previous step's outputs as still in use."""
    import torch
    from transformers import TrainerCallback

    class MarkStep(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            torch.compiler.cudagraph_mark_step_begin()

    return MarkStep()
