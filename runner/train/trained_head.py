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

Used by runner.train.lean_loss only where this is the model's own loss: a frozen plain linear
LM head and no logit soft-capping. The contract's first-step check compares it with the masked
cross-entropy computed independently (runner.train.contract).
"""

from __future__ import annotations

import contextlib
import functools

from runner.chat.loss_mask import IGNORE

# Rows of logits per chunk: fp32 logits plus their fp32 softmax and a bf16 copy, about 10 bytes
# per vocabulary entry, the workspace runner.train.memory_plan reserves for the LM head.
CHUNK = 256
KEYS = ("trained_index", "trained_labels")


def trained_targets(labels: list[int]) -> tuple[list[int], list[int]]:
    """(positions t of a packed sequence whose next token labels[t + 1] is trained, those labels)."""
    index = [t for t in range(len(labels) - 1) if labels[t + 1] != IGNORE]
    return index, [labels[t + 1] for t in index]


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
        with autocast():
            hidden = backbone(**inputs).last_hidden_state
            picked = hidden.flatten(0, 1).index_select(0, trained_index.flatten())
            total = head_cross_entropy(picked, head.weight, trained_labels.flatten())
        count = num_items_in_batch if num_items_in_batch is not None else max(1, picked.shape[0])
        return {"loss": total / count}

    return forward


def head_cross_entropy(hidden, weight, targets):
    """sum over rows of -log softmax(hidden @ weight.T)[target], differentiable in `hidden`."""
    return _function().apply(hidden, weight, targets)


@functools.cache
def _function():
    import torch

    class HeadCrossEntropy(torch.autograd.Function):
        """Backward scales the gradient for `hidden` that forward computed chunk by chunk:
        (softmax - one-hot) @ weight."""

        @staticmethod
        def forward(ctx, hidden, weight, targets):
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            grad = torch.empty_like(hidden) if hidden.requires_grad else None
            for start in range(0, hidden.shape[0], CHUNK):
                end = start + CHUNK
                logits = (hidden[start:end].to(weight.dtype) @ weight.t()).float()
                wanted = targets[start:end, None]
                log_norm = torch.logsumexp(logits, dim=-1, keepdim=True)
                total += (log_norm - logits.gather(1, wanted)).sum()
                if grad is not None:
                    probs = logits.sub_(log_norm).exp_().scatter_add_(
                        1, wanted, torch.full(wanted.shape, -1.0, device=logits.device))
                    grad[start:end] = probs.to(weight.dtype) @ weight
            ctx.save_for_backward(grad)
            return total

        @staticmethod
        def backward(ctx, grad_total):
            (grad,) = ctx.saved_tensors
            return grad * grad_total.to(grad.dtype), None, None

    return HeadCrossEntropy
