"""Whole GPT-OSS decoder layers compiled for packed training on CUDA.

Why: a packed GPT-OSS step of 8 docs rows (about 3,000 tokens) is host-bound: the GPU is busy
for about 40 ms of a 60-70 ms step while Python and the dispatcher launch about a thousand
kernels. With the runner's grouped MoE forward (moe_experts; sync-free, traceable) and its
packed attention (packed_attention; the BlockMask is an input), a whole decoder layer is one
graph: norms, LoRA projections, attention with sinks, routing, grouped GEMMs and residuals
become a few fused kernels forward and backward. Unsloth's own expert path is excluded from
compilation (`torch.compiler.disable`), so compiling layers around it saved only about 4 ms
(bench/results/training.md, profile 3): `auto` compiles only over the grouped forward.

Off by default: on one H200 (2026-12-03) the packed step with compiled layers measured 41,170
tokens/s, 1.71x bare Unsloth 8x1 in its call, against 1.92x for eager layers in an earlier call;
a same-call comparison (bench run runner-packed-compiled) is still to be measured, and until it
shows a gain the compile's start-up cost is not worth paying by default.

Only packed training forwards take the compiled path (the layer's module is in train mode,
gradients are on, the batch's document masks are set); evaluation, the start-of-run checks and
unpacked batches run the layer as it was, so they never trigger a compile of their own shapes.
"""

from __future__ import annotations

import types
from contextlib import nullcontext

MODES = ("auto", "on", "off")


def decoder_layers(model) -> list:
    from runner.train.packed_attention import backbone_of
    return list(getattr(backbone_of(model), "layers", []))


def _packed_masks(model):
    from runner.train.packed_attention import backbone_of
    return getattr(backbone_of(model), "_packed_masks", None)


def refusal(model, *, moe: dict, checkpointing: bool) -> str | None:
    """Why the layers are not compiled in this run; None when they are."""
    layers = decoder_layers(model)
    if not layers:
        return "the model has no decoder layers to compile"
    if _packed_masks(model) is None:
        return "batches are not packed (training.packing or padding_free)"
    if checkpointing:
        return "gradient checkpointing recomputes the layers outside a compiled graph"
    if moe.get("blocks") and moe.get("moe_forward") != "grouped":
        return ("the MoE blocks run the backend's expert path, which is excluded from "
                "compilation")
    if not next(model.parameters()).is_cuda:
        return "the model is not on a CUDA GPU (on CPU the compile costs more than it saves)"
    return None


def install(model, mode: str, *, moe: dict, checkpointing: bool, log=None) -> dict:
    """Compile every decoder layer's packed training forward; the record says what was done
    (and `log` is told why not, unless the recipe said off)."""
    record = _install(model, mode, moe=moe, checkpointing=checkpointing)
    if log and (record["layers"] or record.get("why")):
        log(f"decoder layers: compiled ({record['layers']} layers, for packed training "
            "forwards)" if record["layers"] else f"decoder layers: eager ({record['why']})")
    return record


def _install(model, mode: str, *, moe: dict, checkpointing: bool) -> dict:
    from runner.errors import StepError

    if mode not in MODES:
        raise ValueError(f"unknown training.compile_layers {mode!r}: use one of {MODES}")
    if mode == "off":
        return {"compile_layers": "off", "layers": 0}
    why = refusal(model, moe=moe, checkpointing=checkpointing)
    if why and mode == "on":
        raise StepError(f"training.compile_layers is on but {why}: set "
                        "training.compile_layers: auto (or off)")
    if why:
        return {"compile_layers": "off", "layers": 0, "why": why}
    layers = decoder_layers(model)
    for layer in layers:
        compile_layer(layer, _packed_masks(model))
    return {"compile_layers": "on", "layers": len(layers)}


def compile_layer(layer, masks, backend: str = "inductor") -> None:
    """Route the layer's packed training forwards through torch.compile (tests pass
    backend="aot_eager": the same tracing and autograd graphs, without generated kernels)."""
    import torch

    if hasattr(layer, "_eager_forward"):
        return
    layer._packed_masks = masks
    layer._eager_forward = layer.forward
    # dynamic: the packed length changes from step to step; one graph serves them all
    layer._compiled_forward = torch.compile(layer.forward, dynamic=True, backend=backend)
    layer.forward = types.MethodType(_layer_forward, layer)


def _layer_forward(self, *args, **kwargs):
    import torch

    from runner.train import moe_experts

    masks = self._packed_masks
    if not (self.training and torch.is_grad_enabled() and masks.current is not None):
        return self._eager_forward(*args, **kwargs)
    mlp = getattr(self, "mlp", None)
    with moe_experts.stacks_outside_graph(mlp) if mlp is not None else nullcontext():
        return self._compiled_forward(*args, **kwargs)
