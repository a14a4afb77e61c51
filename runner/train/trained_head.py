"""The LM head and cross-entropy on the trained positions only, for packed training batches.

A packed micro-batch's loss covers only the response tokens (the loss mask), yet the model's
own forward runs the LM head, GPT-OSS's largest matmul (hidden 2,880 x vocabulary 201,088), on
every position. Here the packing collator lists, on the host, the positions whose next token is
trained (`trained_index`) and those tokens (`trained_labels`); the loss runs the backbone, picks
those hidden states and runs the head and the fp32 cross-entropy on them alone, a chunk of
CHUNK positions at a time. The gradient for the hidden states is computed in the same pass, so
no chunk's [CHUNK, vocabulary] logits outlive it and the LM head is never run twice (the frozen
head's weight needs no gradient). The sum is normalised as transformers' ForCausalLMLoss does:
by `num_items_in_batch` when the Trainer passes it, else by the number of trained tokens.

The collator pads the list to whole chunks (the sequence's last position, which predicts
nothing, with the label IGNORE: no loss, no gradient), so every chunk has one shape. On CUDA a
chunk (head matmul, log-sum-exp, the loss, softmax minus one-hot, the gradient matmul) is one
compiled graph: the fp32 logits are never written out, and no chunk with a new row count makes
cuBLAS load a new kernel, which waits for the GPU to drain (bench/results/training.md).

Used by runner.train.lean_loss only where this is the model's own loss: a frozen plain linear
LM head and no logit soft-capping. The contract's first-step check compares it with the masked
cross-entropy computed independently (runner.train.contract).
"""

from __future__ import annotations

import contextlib
import functools
import warnings

from runner.chat.loss_mask import IGNORE

# Rows of logits per chunk: fp32 logits plus their fp32 softmax and a bf16 copy, about 10 bytes
# per vocabulary entry, the workspace runner.train.memory_plan reserves for the LM head.
CHUNK = 256
KEYS = ("trained_index", "trained_labels")


def trained_targets(labels: list[int]) -> tuple[list[int], list[int]]:
    """(positions t of a packed sequence whose next token labels[t + 1] is trained, those labels),
    padded to whole chunks with the last position and IGNORE."""
    index = [t for t in range(len(labels) - 1) if labels[t + 1] != IGNORE]
    targets = [labels[t + 1] for t in index]
    padding = -len(index) % CHUNK
    return index + [len(labels) - 1] * padding, targets + [IGNORE] * padding


def reason_not_usable(model) -> str | None:
    """Why the model's own loss must stay, or None when the trained-positions head computes it."""
    import torch

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = base.get_output_embeddings()
    if type(head) is not torch.nn.Linear:
        return f"the LM head is a {type(head).__name__}, not a plain linear layer"
    if any(parameter.requires_grad for parameter in head.parameters()):
        return "the LM head is trained"
    if head.weight.dtype == torch.float16:
        # The gradient is computed before the loss scale of fp16 training could lift it.
        return "the LM head is fp16 (its gradient could underflow before the loss scale)"
    if getattr(base.config.get_text_config(), "final_logit_softcapping", None):
        return "the model soft-caps its logits"
    return None


def forward_for(model, autocast=contextlib.nullcontext):
    """A stand-in for `model(**inputs)` that Trainer.compute_loss can call: it returns
    {"loss": ...} computed on the trained positions only, so the Trainer's own normalisation
    across devices and accumulation steps stays in force. `autocast` is the mixed precision
    that accelerate wraps the model's forward in (the backbone is called past that wrapper)."""
    from runner.train.packed_attention import backbone_of

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    backbone, head = backbone_of(model), base.get_output_embeddings()

    def forward(trained_index, trained_labels, num_items_in_batch=None, labels=None, **inputs):
        targets = trained_labels.flatten()
        with autocast():
            hidden = backbone(**inputs).last_hidden_state
            total = head_cross_entropy(hidden.flatten(0, 1), trained_index.flatten(), head.weight,
                                       targets)
        count = num_items_in_batch if num_items_in_batch is not None else (
            (targets != IGNORE).sum().clamp(min=1))
        return {"loss": total / count}

    return forward


def head_cross_entropy(hidden, index, weight, targets):
    """sum over the rows hidden[index] of -log softmax(hidden[index] @ weight.T)[target] (rows
    whose target is IGNORE add nothing), differentiable in `hidden`. Padding rows may repeat an
    index; real rows must not."""
    return _function().apply(hidden, index, weight, targets)


def chunk_loss_and_gradient(hidden, weight, targets):
    """(the chunk's summed cross-entropy, its gradient for `hidden`: (softmax - one-hot) @
    weight), rows with target IGNORE masked out. Compiled as one graph on CUDA."""
    import torch

    logits = (hidden.to(weight.dtype) @ weight.t()).float()
    trained = targets != IGNORE
    wanted = torch.where(trained, targets, 0)
    log_norm = torch.logsumexp(logits, dim=-1, keepdim=True)
    loss = torch.where(trained, log_norm.squeeze(-1) - logits.gather(1, wanted[:, None]).squeeze(-1),
                       0.0).sum()
    vocabulary = torch.arange(logits.shape[-1], device=logits.device)
    one_hot = (vocabulary[None, :] == wanted[:, None]).to(logits.dtype)
    probs = ((logits - log_norm).exp() - one_hot) * trained[:, None].to(logits.dtype)
    return loss, probs.to(weight.dtype) @ weight


_COMPILED: dict = {}


def chunk_mode() -> str | None:
    """How CUDA chunks ran in this process: "compiled", "eager (why)", or None (none yet)."""
    return _COMPILED.get("mode")


def _run_chunk(hidden, weight, targets):
    """One chunk, through the compiled graph on CUDA. If torch's compiler fails on it, the same
    function runs eagerly from then on (more memory traffic, the same numbers) and chunk_mode
    says why: the run's summary records it."""
    if not hidden.is_cuda:
        return chunk_loss_and_gradient(hidden, weight, targets)
    import torch

    if "chunk" not in _COMPILED:
        # Static shapes: the collator makes every chunk CHUNK rows.
        _COMPILED["chunk"] = torch.compile(chunk_loss_and_gradient, dynamic=False, fullgraph=True)
        _COMPILED["mode"] = "compiled"
    try:
        return _COMPILED["chunk"](hidden, weight, targets)
    except torch._dynamo.exc.TorchDynamoException as error:
        if _COMPILED["chunk"] is chunk_loss_and_gradient:
            raise
        _COMPILED["chunk"] = chunk_loss_and_gradient
        _COMPILED["mode"] = f"eager (the compile failed: {type(error).__name__}: {error})"[:400]
        warnings.warn(f"LM head chunks: {_COMPILED['mode']}", RuntimeWarning, stacklevel=2)
        return chunk_loss_and_gradient(hidden, weight, targets)


@functools.cache
def _function():
    import torch

    class HeadCrossEntropy(torch.autograd.Function):
        """Backward places and scales the gradient for the picked rows that forward computed
        chunk by chunk (no atomic scatter: real rows are distinct, padding rows' gradient is 0)."""

        @staticmethod
        def forward(ctx, hidden, index, weight, targets):
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            picked = hidden.index_select(0, index)
            grad = torch.empty_like(picked) if hidden.requires_grad else None
            for start in range(0, picked.shape[0], CHUNK):
                end = start + CHUNK
                loss, chunk_grad = _run_chunk(picked[start:end], weight, targets[start:end])
                total += loss
                if grad is not None:
                    grad[start:end] = chunk_grad
            ctx.save_for_backward(grad, index)
            ctx.rows = hidden.shape[0]
            return total

        @staticmethod
        def backward(ctx, grad_total):
            grad, index = ctx.saved_tensors
            full = grad.new_zeros((ctx.rows, grad.shape[-1]))
            full.index_copy_(0, index, grad * grad_total.to(grad.dtype))
            return full, None, None, None

    return HeadCrossEntropy
