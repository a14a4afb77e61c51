"""GPT-OSS's MoE block for training with LoRA on the experts: grouped GEMMs, few launches, no
host syncs.

Why: a packed training step of GPT-OSS is host-bound (the GPU idles while Python launches about
a thousand kernels), and most of the launches and every scalar read back to the host come from
the expert path: transformers' loop over experts, or Unsloth's grouped-GEMM path with its probes
and per-call dispatch. `install(model)` gives each GPT-OSS MLP block a forward that computes the
same function in a couple of dozen tensor operations:

- route as the model does (its own router module, so router-logit recorders still see it);
- sort the token-expert pairs by expert (stable; offsets by `searchsorted`, never a sync);
- x @ (W + s * lhs @ rhs) + b as grouped GEMMs: x @ W + s * (x @ lhs) @ rhs, the LoRA delta
  never built (PEFT's `ParamWrapper` factors, its adapter weights trained as they are);
- GPT-OSS's clamped GLU in one autograd function that keeps only its input for backward;
- the top-k outputs weighted and summed per token in a fixed order: permutations and a sum, no
  atomic adds, so gradients do not depend on the order in which kernels add.

The other backends' forward stays where this cannot run (quantized expert weights, several
active or merged adapters, LoRA dropout on the experts): `refusal(model)` says why.
"""

from __future__ import annotations

import types
from contextlib import contextmanager

MODES = ("auto", "grouped", "library")


def moe_blocks(model) -> list:
    """The GPT-OSS MLP blocks (a router and experts with fused gate_up/down stacks)."""
    return [module for module in model.modules()
            if hasattr(module, "router") and hasattr(module, "experts")
            and hasattr(_base_experts(module.experts), "gate_up_proj")]


def _unwrap(experts) -> tuple:
    """(the experts module under PEFT's nested ParamWrappers, {parameter name: its wrapper})."""
    wrappers = {}
    while hasattr(experts, "parameter_name") and hasattr(experts, "base_layer"):
        wrappers[experts.parameter_name] = experts
        experts = experts.base_layer
    return experts, wrappers


def _base_experts(experts):
    return _unwrap(experts)[0]


def _block_refusal(block) -> str | None:
    import torch

    base, wrappers = _unwrap(block.experts)
    for name in ("gate_up_proj", "down_proj"):
        weight = getattr(base, name, None)
        if not isinstance(weight, torch.Tensor) or weight.dim() != 3:
            return f"{name} is not a 3D expert stack"
        if weight.dtype not in (torch.float32, torch.bfloat16, torch.float16):
            return f"{name} is stored as {weight.dtype} (quantized experts)"
        if type(weight) not in (torch.Tensor, torch.nn.Parameter):
            return f"{name} is a {type(weight).__name__} (quantized experts)"
        if weight.is_cuda and weight.dtype != torch.bfloat16:
            return f"{name} is {weight.dtype} on CUDA (grouped GEMMs there take bf16 only)"
    if getattr(block.router, "top_k", None) == base.gate_up_proj.shape[0]:
        return "every expert is routed to (top_k equals the number of experts)"
    for name, wrapper in wrappers.items():
        adapters = [a for a in wrapper.active_adapters if a in wrapper.lora_A]
        if len(adapters) > 1:
            return f"{name} has {len(adapters)} active adapters"
        if getattr(wrapper, "merged_adapters", None):
            return f"{name} has merged adapters"
        if getattr(wrapper, "disable_adapters", False):
            return f"{name} has its adapters disabled"
        if adapters and not isinstance(wrapper.lora_dropout[adapters[0]], torch.nn.Identity):
            return f"{name} has LoRA dropout"
    return None


def refusal(model) -> str | None:
    """Why the grouped forward cannot replace this model's MoE blocks; None when it can."""
    blocks = moe_blocks(model)
    if not blocks:
        return "the model has no GPT-OSS MoE blocks"
    for block in blocks:
        why = _block_refusal(block)
        if why:
            return why
    return None


def install(model, mode: str = "auto") -> dict:
    """Give every GPT-OSS MoE block the grouped forward; the record says what was done."""
    from runner.errors import StepError

    if mode not in MODES:
        raise ValueError(f"unknown training.moe_forward {mode!r}: use one of {MODES}")
    blocks = moe_blocks(model)
    if mode == "library" or not blocks:
        return {"moe_forward": "library", "blocks": len(blocks)}
    why = refusal(model)
    if why:
        if mode == "grouped":
            raise StepError(f"training.moe_forward is grouped but {why}: set training."
                            "moe_forward: auto (or library) to keep the backend's MoE forward")
        return {"moe_forward": "library", "blocks": len(blocks), "why": why}
    compiled = _on_cuda(blocks[0])
    for block in blocks:
        if not hasattr(block, "_library_forward"):
            block._library_forward = block.forward
            block._moe_compiled = compiled
            block.forward = types.MethodType(grouped_block_forward, block)
    return {"moe_forward": "grouped", "blocks": len(blocks), "compiled": compiled}


def _on_cuda(block) -> bool:
    """Compiled on CUDA: inductor fuses the routing, bias and activation element-wise work
    (H200, one 20B-shape block of 3,072 tokens, fwd + bwd: 3.5 ms of host time against 5.0
    eager and Unsloth's 6.1; GPU 4.9 ms against 7.4 eager; bench/results/moe-block.json).
    On CPU the eager form keeps tests free of compile time."""
    return _base_experts(block.experts).gate_up_proj.is_cuda


def grouped_block_forward(self, hidden_states):
    """GptOssMLP.forward's contract: (output [B, T, H], router scores [B*T, k])."""
    batch, length, width = hidden_states.shape
    flat = hidden_states.reshape(-1, width)
    routed = self.router(flat)
    scores, indices = routed[-2:] if len(routed) == 3 else routed
    if scores.shape[-1] != indices.shape[-1]:   # Unsloth's router scatters them over experts
        weights = scores.gather(1, indices)
    else:
        weights = scores
    out = experts_forward(self.experts, flat, indices, weights,
                          compiled=getattr(self, "_moe_compiled", False),
                          stacks=getattr(self, "_eager_stacks", None))
    return out.reshape(batch, length, width), scores


def lora_factors(wrapper, dtype):
    """(lhs [E, in, r], rhs [E, r, out], scaling): PEFT's delta of the wrapped stack is
    scaling * lhs @ rhs (its `get_delta_weight`), so x @ delta = scaling * (x @ lhs) @ rhs."""
    (adapter,) = [a for a in wrapper.active_adapters if a in wrapper.lora_A]
    experts = wrapper.num_experts
    weight_a = wrapper.lora_A[adapter].weight
    weight_b = wrapper.lora_B[adapter].weight
    weight_a = weight_a.reshape(experts, -1, weight_a.shape[-1])                 # [E, r, in_A]
    weight_b = weight_b.reshape(weight_b.shape[0], -1, experts).permute(2, 0, 1)  # [E, out_B, r]
    if wrapper._did_swap_in_out_features:     # the stack is [E, out_B, in_A]
        lhs, rhs = weight_b, weight_a
    else:                                      # the stack is [E, in_A, out_B]
        lhs, rhs = weight_a.transpose(-2, -1), weight_b.transpose(-2, -1)
    return _aligned(lhs.to(dtype), rhs.to(dtype)) + (wrapper.scaling[adapter],)


def _aligned(lhs, rhs):
    """Grouped GEMMs need 16-byte strides: pad the rank with zeros (the product is unchanged)."""
    import torch.nn.functional as F

    step = max(1, 16 // lhs.element_size())
    pad = -lhs.shape[-1] % step
    if pad:
        lhs, rhs = F.pad(lhs, (0, pad)), F.pad(rhs, (0, 0, 0, pad))
    return lhs.contiguous(), rhs.contiguous()


def experts_forward(experts, hidden, indices, scores, compiled: bool = False, stacks=None):
    """sum_k scores[t, k] * expert_{indices[t, k]}(hidden[t]) for hidden [N, H]."""
    import torch

    base = _base_experts(experts)
    stacks = stacks or expert_stacks(experts)
    settings = {"alpha": float(base.alpha), "limit": float(base.limit)}
    if torch.compiler.is_compiling():   # inside a compiled decoder layer (compiled_layers)
        return grouped_experts(hidden, indices, scores, *stacks, **settings, activation=glu)
    if compiled:
        return _compiled_experts()(hidden, indices, scores, *stacks, **settings, activation=glu)
    return grouped_experts(hidden, indices, scores, *stacks, **settings)


_COMPILED = None


def _compiled_experts():
    """grouped_experts compiled once per process, every dimension dynamic (packed lengths
    change from step to step)."""
    global _COMPILED
    if _COMPILED is None:
        import torch
        _COMPILED = torch.compile(grouped_experts, dynamic=True)
    return _COMPILED


def expert_stacks(experts) -> list[tuple]:
    """[gate_up, down]: each (weight, bias, LoRA lhs, rhs, scaling), laid out for the GEMMs."""
    base, wrappers = _unwrap(experts)
    return [_stack(base, name, wrappers) for name in ("gate_up_proj", "down_proj")]


@contextmanager
def stacks_outside_graph(block):
    """The block's expert stacks computed here, eagerly, for one call of a compiled graph that
    contains the block (compiled_layers): traced, the LoRA factors' copies to row-major are
    laid out as the compiler likes, and `_grouped_mm` refused the result (H200, torch 2.11:
    "Invalid strides/sizes, got [1, 32, 512] for strides and [32, 16, 5760] for sizes")."""
    if not hasattr(block, "_library_forward"):      # not the grouped forward: nothing to do
        yield
        return
    block._eager_stacks = expert_stacks(block.experts)
    try:
        yield
    finally:
        block._eager_stacks = None


def _stack(base, name: str, wrappers: dict) -> tuple:
    """(weight, bias or None, LoRA lhs or None, rhs or None, scaling) of one expert stack."""
    weight = getattr(base, name)
    bias = getattr(base, f"{name}_bias", None)
    if name not in wrappers:
        return weight, bias, None, None, 0.0
    return (weight, bias) + lora_factors(wrappers[name], weight.dtype)


def grouped_experts(hidden, indices, scores, gate_up: tuple, down: tuple, *, alpha: float,
                    limit: float, activation=None):
    """The MoE experts on plain tensors. `activation` None: the GLU as the autograd node that
    saves only its input (eager); pass `glu` where a compiler fuses it and picks what to save."""
    import torch

    top_k, count = indices.shape[-1], gate_up[0].shape[0]
    flat = indices.reshape(-1)
    order = flat.argsort(stable=True)
    sorted_experts = flat.index_select(0, order)
    offsets = torch.searchsorted(sorted_experts, torch.arange(count, device=flat.device),
                                 right=True, out_int32=True)
    positions = torch.arange(len(order), device=order.device)
    restore = torch.empty_like(order).scatter_(0, order, positions)
    permute = _permutation().apply
    # Repeat, then permute: the backward of a permutation is the inverse permutation, exactly.
    inputs = hidden.unsqueeze(1).expand(-1, top_k, -1).reshape(-1, hidden.shape[-1])
    inputs = permute(inputs, order, restore)
    projected = _project(inputs, *gate_up, offsets, sorted_experts)
    gated = (activation or _clamped_glu().apply)(projected, alpha, limit)
    out = _project(gated, *down, offsets, sorted_experts)
    out = out * permute(scores.reshape(-1, 1), order, restore).to(out.dtype)
    out = permute(out, restore, order).view(-1, top_k, out.shape[-1]).sum(dim=1)
    return out.to(hidden.dtype)


def _project(inputs, weight, bias, lhs, rhs, scaling, offsets, sorted_experts):
    """inputs (sorted by expert) @ (stack + scaling * lhs @ rhs) + the stack's bias."""
    import torch

    inputs = inputs.to(weight.dtype)
    out = torch._grouped_mm(inputs, weight, offs=offsets)
    if lhs is not None:
        low = torch._grouped_mm(inputs, lhs, offs=offsets)
        out = out + torch._grouped_mm(low, rhs, offs=offsets) * scaling
    if bias is not None:
        out = out + bias.index_select(0, sorted_experts).to(out.dtype)
    return out


def glu(gate_up, alpha: float, limit: float):
    """GPT-OSS's activation on interleaved [gate, up] columns (GptOssExperts._apply_gate)."""
    import torch

    gate = gate_up[..., ::2].clamp(max=limit)
    up = gate_up[..., 1::2].clamp(min=-limit, max=limit)
    return (up + 1) * (gate * torch.sigmoid(gate * alpha))


# Built once, then read as plain globals: torch.compile'd layers call these getters, and dynamo
# would trace into a functools.cache wrapper and break the graph at the class definition.
_FUNCTION = None
_PERMUTATION = None


def _permutation():
    """rows.index_select(0, order) whose backward gathers by the inverse permutation: index_select's
    own backward is an atomic index_add (a bf16 fallback kernel, about 0.3 ms a call on the H200)."""
    global _PERMUTATION
    if _PERMUTATION is None:
        import torch

        class _Permutation(torch.autograd.Function):
            @staticmethod
            def forward(ctx, rows, order, inverse):
                ctx.save_for_backward(inverse)
                return rows.index_select(0, order)

            @staticmethod
            def backward(ctx, grad):
                (inverse,) = ctx.saved_tensors
                return grad.index_select(0, inverse), None, None

        _PERMUTATION = _Permutation
    return _PERMUTATION


def _clamped_glu():
    """The activation as one autograd node that saves only its input (eager autograd would keep
    five [tokens, intermediate] tensors per layer); backward recomputes it."""
    global _FUNCTION
    if _FUNCTION is None:
        import torch

        class _ClampedGLU(torch.autograd.Function):
            @staticmethod
            def forward(ctx, gate_up, alpha, limit):
                ctx.save_for_backward(gate_up)
                ctx.alpha, ctx.limit = alpha, limit
                return glu(gate_up, alpha, limit)

            @staticmethod
            def backward(ctx, grad):
                (gate_up,) = ctx.saved_tensors
                with torch.enable_grad():
                    leaf = gate_up.detach().requires_grad_()
                    (grad_in,) = torch.autograd.grad(glu(leaf, ctx.alpha, ctx.limit), leaf, grad)
                return grad_in, None, None

        _FUNCTION = _ClampedGLU
    return _FUNCTION
