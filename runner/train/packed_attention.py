"""Document-masked attention for packed GPT-OSS batches, with the attention sinks applied exactly.

`install(model)` hooks the model's backbone: when a forward gets restarting `position_ids` and no
2D attention mask (a packed batch), it builds one mask per layer kind, {"full_attention": ...,
"sliding_attention": ...}, in which a token sees only earlier tokens of its own row (sliding
layers: also only the last `config.sliding_window` of them). Each GPT-OSS attention module then
computes with that mask:

- on CUDA, FlexAttention with BlockMasks computed from the row boundaries (`block_mask`); the
  sink logit joins the softmax through the log-sum-exp: out * sigmoid(lse - sink), exactly
  softmax([scores, sink]); rotary embedding, attention and sink run as one compiled graph;
- elsewhere (CPU), transformers' own eager GPT-OSS attention with an exact 4D additive mask.

Unpadded, unpacked batches (with an attention mask, or no position ids) go through the module's
original forward untouched, so evaluation and the padded path are unchanged.
"""

from __future__ import annotations

import types

KERNELS = ("flex", "eager")
BLOCK = 128          # FlexAttention's default sparse block size


class PackedMasks:
    """The masks of the batch being computed, shared by every attention module of one model.

    Gradient checkpointing recomputes layers during backward, before the next forward
    replaces these, so the recomputation sees the same masks.
    """

    def __init__(self, kernel: str, sliding_window: int | None):
        self.kernel = kernel
        self.sliding_window = sliding_window
        self.current: dict | None = None


def backbone_of(model):
    """The decoder stack (GptOssModel) under PEFT and task heads."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder() if hasattr(base, "get_decoder") else base.model


def sink_attention_modules(model) -> list:
    """The attention modules that carry GPT-OSS attention sinks."""
    return [module for module in backbone_of(model).modules()
            if hasattr(module, "sinks") and hasattr(module, "q_proj")]


def default_kernel(device) -> str:
    return "flex" if str(device).startswith("cuda") else "eager"


def install(model, kernel: str | None = None) -> PackedMasks | None:
    """Make packed batches exact for a GPT-OSS model; None for a model without sinks (its
    transformers backbone already builds packed masks from position ids) or if installed."""
    modules = sink_attention_modules(model)
    if not modules:
        return None
    backbone = backbone_of(model)
    if getattr(backbone, "_packed_masks", None) is not None:
        return backbone._packed_masks
    device = next(backbone.parameters()).device
    masks = PackedMasks(kernel or default_kernel(device), backbone.config.sliding_window)
    if masks.kernel not in KERNELS:
        raise ValueError(f"unknown packed attention kernel {masks.kernel!r}: use one of {KERNELS}")
    backbone._packed_masks = masks
    backbone.register_forward_pre_hook(_mask_hook(masks), with_kwargs=True)
    for module in modules:
        module._packed_original_forward = module.forward
        module._packed_masks = masks
        module.forward = types.MethodType(_packed_forward, module)
    return masks


def _mask_hook(masks: PackedMasks):
    def hook(backbone, args, kwargs):
        position_ids = kwargs.get("position_ids")
        if position_ids is None or kwargs.get("attention_mask") is not None:
            masks.current = None
            return None
        embeddings = backbone.get_input_embeddings().weight
        masks.current = build_masks(position_ids.to(embeddings.device), masks.kernel,
                                    masks.sliding_window, embeddings.dtype)
        return None
    return hook


def build_masks(position_ids, kernel: str, sliding_window: int | None, dtype) -> dict:
    """{"full_attention": mask, "sliding_attention": mask} for packed position ids [B, T]."""
    from runner.train.packing import document_ids

    documents = document_ids(position_ids)
    if kernel == "flex":
        return {"full_attention": block_mask(documents, None),
                "sliding_attention": block_mask(documents, sliding_window)}
    return {"full_attention": additive_mask(documents, None, dtype),
            "sliding_attention": additive_mask(documents, sliding_window, dtype)}


def allowed(documents, sliding_window: int | None):
    """[B, T, T] booleans: query q may attend key k (same row, causal, within the window)."""
    import torch

    length = documents.shape[-1]
    q = torch.arange(length, device=documents.device).view(-1, 1)
    k = torch.arange(length, device=documents.device).view(1, -1)
    keep = (documents.unsqueeze(-1) == documents.unsqueeze(-2)) & (q >= k)
    if sliding_window:
        keep &= (q - k) < sliding_window     # transformers' sliding_window_overlay
    return keep


def additive_mask(documents, sliding_window: int | None, dtype):
    """The eager attention's [B, 1, T, T] mask: 0 where allowed, the dtype's minimum elsewhere."""
    import torch

    keep = allowed(documents, sliding_window).unsqueeze(1)
    mask = torch.zeros(keep.shape, dtype=dtype, device=documents.device)
    return mask.masked_fill(~keep, torch.finfo(dtype).min)


def block_mask(documents, sliding_window: int | None, block: int = BLOCK):
    """FlexAttention BlockMask of the same rule, computed per 128 x 128 block from the row
    boundaries (a few O(T + blocks^2) tensor ops, no dense [T, T] mask and no compiled builder:
    `create_block_mask` cost about 2 ms a mask per step on the H200).

    Packed rows are contiguous, so query q may attend exactly the keys [lo(q), q], lo(q) = its
    row's first token (or q - window + 1 in sliding layers), and lo(q) never decreases. A query
    block [q0, q1] therefore reaches the keys [lo(q0), q1] (some attention: a partial block), and
    sees every key of a key block [k0, k1] when lo(q1) <= k0 and q0 >= k1 (a full block, whose
    mask_mod the kernel skips). Blocks cut short by the sequence end are never full, as in
    `create_block_mask`.
    """
    import torch
    from torch.nn.attention.flex_attention import BlockMask

    batch, length = documents.shape
    device = documents.device
    index = torch.arange(length, device=device)
    first = torch.ones_like(documents, dtype=torch.bool)
    first[:, 1:] = documents[:, 1:] != documents[:, :-1]
    lowest = torch.where(first, index, 0).cummax(dim=-1).values          # [B, T]
    if sliding_window:
        lowest = torch.maximum(lowest, index - sliding_window + 1)
    starts = torch.arange(0, length, block, device=device)              # [n]
    ends = (starts + block).clamp(max=length) - 1
    whole = (ends - starts) == block - 1
    low_first, low_last = lowest[:, starts], lowest[:, ends]            # [B, n] per query block
    q0, q1 = starts.view(1, -1, 1), ends.view(1, -1, 1)
    k0, k1 = starts.view(1, 1, -1), ends.view(1, 1, -1)
    reach = (low_first.unsqueeze(-1) <= k1) & (k0 <= q1)                # [B, n, n]
    full = ((low_last.unsqueeze(-1) <= k0) & (q0 >= k1)
            & whole.view(1, -1, 1) & whole.view(1, 1, -1))
    partial = reach & ~full

    def ordered(dense):
        counts = dense.sum(dim=-1, dtype=torch.int32).unsqueeze(1)      # [B, 1, n]
        order = torch.argsort(dense.to(torch.int8), dim=-1, descending=True, stable=True)
        return counts, order.to(torch.int32).unsqueeze(1)               # [B, 1, n, n]

    mask = BlockMask.from_kv_blocks(*ordered(partial), *ordered(full), BLOCK_SIZE=block,
                                    mask_mod=_same_row_rule(documents, sliding_window),
                                    seq_lengths=(length, length), compute_q_blocks=False)
    # The backward's query-side blocks, from the same dense blocks transposed: from_kv_blocks
    # would rebuild them from the ordered key indices with a vmapped scatter per mask, most of
    # the masks' host time in a packed step (bench/results/training.md).
    mask.q_num_blocks, mask.q_indices = ordered(partial.transpose(-1, -2))
    mask.full_q_num_blocks, mask.full_q_indices = ordered(full.transpose(-1, -2))
    return mask


def _same_row_rule(documents, sliding_window: int | None):
    """The mask_mod: the kernel applies it inside the partial blocks."""
    def same_row_causal(b, h, q, k):
        keep = (documents[b, q] == documents[b, k]) & (q >= k)
        if sliding_window:
            keep = keep & ((q - k) < sliding_window)
        return keep
    return same_row_causal


def reference_block_mask(documents, sliding_window: int | None):
    """The same BlockMask through torch's `create_block_mask` (what block_mask must equal)."""
    from torch.nn.attention.flex_attention import create_block_mask

    batch, length = documents.shape
    return create_block_mask(_same_row_rule(documents, sliding_window), batch, None, length,
                             length, device=documents.device, _compile=documents.is_cuda)


def _packed_forward(self, hidden_states, position_embeddings=None, attention_mask=None,
                    **kwargs):
    masks = self._packed_masks.current
    if masks is None:
        return self._packed_original_forward(hidden_states, position_embeddings=position_embeddings,
                                             attention_mask=attention_mask, **kwargs)
    shape = (*hidden_states.shape[:-1], -1, self.head_dim)
    query = self.q_proj(hidden_states).view(shape).transpose(1, 2)
    key = self.k_proj(hidden_states).view(shape).transpose(1, 2)
    value = self.v_proj(hidden_states).view(shape).transpose(1, 2)
    cos, sin = position_embeddings
    mask = masks["sliding_attention" if self.sliding_window else "full_attention"]
    if self._packed_masks.kernel == "flex":
        output = attention_core(query.is_cuda)(query, key, value, cos, sin, self.sinks, mask,
                                               self.scaling)
    else:
        from transformers.models.gpt_oss import modeling_gpt_oss

        query, key = modeling_gpt_oss.apply_rotary_pos_emb(query, key, cos, sin)
        output, _ = modeling_gpt_oss.eager_attention_forward(
            self, query, key.to(query.dtype), value.to(query.dtype), mask,
            scaling=self.scaling, dropout=0.0)
    output = output.reshape(*hidden_states.shape[:-1], -1).contiguous()
    return self.o_proj(output), None


def sink_attention(query, key, value, cos, sin, sinks, mask, scale):
    """Rotary embedding, FlexAttention over the BlockMask, then the sink: softmax([s, sink]) =
    softmax(s) * sigmoid(lse(s) - sink). [B, heads, T, head_dim] in, [B, T, heads, head_dim]
    out, like transformers' eager function."""
    import torch
    from torch.nn.attention import flex_attention as flex

    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    query, key = rotary(query, cos, sin), rotary(key, cos, sin)
    key, value = key.to(query.dtype), value.to(query.dtype)
    gqa = query.shape[1] != key.shape[1]
    if hasattr(flex, "AuxRequest"):
        output, aux = flex.flex_attention(query, key, value, block_mask=mask, scale=scale,
                                          enable_gqa=gqa, return_aux=flex.AuxRequest(lse=True))
        lse = aux.lse
    else:
        output, lse = flex.flex_attention(query, key, value, block_mask=mask, scale=scale,
                                          enable_gqa=gqa, return_lse=True)
    keep = torch.sigmoid(lse.float() - sinks.float().view(1, -1, 1))
    return (output * keep.unsqueeze(-1).to(output.dtype)).transpose(1, 2)


def rotary(x, cos, sin):
    """GPT-OSS's rotary embedding (transformers' `_apply_rotary_emb`: halves, not interleaved),
    kept here rather than called through `modeling_gpt_oss`: Unsloth replaces that module's
    `apply_rotary_pos_emb` with a function compiled on its own, and the call from inside
    `attention_core`'s graph then ran as a separate compiled region (H200 profile,
    bench/results/training.md)."""
    import torch

    first, second = torch.chunk(x, 2, dim=-1)
    return torch.cat((first * cos - second * sin, second * cos + first * sin), dim=-1)


_COMPILED = {}


def attention_core(cuda: bool):
    """sink_attention, compiled as one graph on CUDA: FlexAttention only runs fused when
    compiled, and compiling the rotary embedding and the sink scaling with it saves their
    separate kernels (Unsloth compiles its rotary embedding too). Unfused reference elsewhere
    (CPU: forward only)."""
    if not cuda:
        return sink_attention
    if "core" not in _COMPILED:
        import torch
        _COMPILED["core"] = torch.compile(sink_attention, dynamic=None)
    return _COMPILED["core"]
