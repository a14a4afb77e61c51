"""runner.train.flat_adamw8bit: one 8-bit AdamW update per parameter group equals bitsandbytes'
per-tensor AdamW bit for bit (parameters and state, a saved and reloaded state, a tensor that
misses a step), on bitsandbytes' CPU kernels where it is installed and on the GPU; and it is used
only where that holds."""

from __future__ import annotations

import pytest
from test_training_lean_loss import tokenizer as tokenizer  # noqa: F401 (the fixture)

from runner.train import flat_adamw8bit

SHAPES = [(16, 2880), (4096, 16), (32, 16, 5760), (32, 2880, 16), (512, 16)]


def _tensors(device, dtype, seed=0):
    import torch
    generator = torch.Generator(device=device).manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(shape, generator=generator, device=device, dtype=dtype))
            for shape in SHAPES]


def test_only_tensors_of_whole_256_element_blocks_share_one_update():
    import torch
    assert flat_adamw8bit.reason_not_flat(_tensors("cpu", torch.float32)) is None
    odd = flat_adamw8bit.reason_not_flat([torch.zeros(16, 2881)])
    assert "[16, 2881]" in odd and "256-element blocks" in odd
    assert "256-element blocks" in flat_adamw8bit.reason_not_flat([torch.zeros(2048)])
    mixed = [torch.zeros(4096), torch.zeros(4096, dtype=torch.bfloat16)]
    assert "dtype" in flat_adamw8bit.reason_not_flat(mixed)
    assert flat_adamw8bit.reason_not_flat([]) == "no trainable parameters"


def _groups(params):
    # As the Trainer builds them: decayed tensors, and an empty group without decay.
    return [{"params": params, "weight_decay": 0.01}, {"params": [], "weight_decay": 0.0}]


def _step(optimizer, params, step: int, skip: int | None = None):
    import torch
    generator = torch.Generator(device=params[0].device).manual_seed(100 + step)
    for index, p in enumerate(params):
        p.grad = None if index == skip else torch.randn(p.shape, generator=generator,
                                                        device=p.device, dtype=p.dtype)
    optimizer.step()


def _assert_same(flat, flat_params, reference, reference_params):
    import torch
    for a, b in zip(flat_params, reference_params, strict=True):
        assert torch.equal(a, b)
        mine, theirs = flat.state[a], reference.state[b]
        assert mine["step"] == theirs["step"]
        for key in flat_adamw8bit.STATE_KEYS:
            assert torch.equal(mine[key], theirs[key]), key


def _device_or_skip(device: str):
    import torch
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    # bitsandbytes is a GPU extra; its CPU kernels run the same update where it is installed.
    return pytest.importorskip("bitsandbytes")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_one_update_per_group_equals_bitsandbytes_per_tensor_bit_for_bit(device, dtype, tmp_path):
    import torch

    bnb = _device_or_skip(device)
    dtype = getattr(torch, dtype)
    ours, theirs = _tensors(device, dtype), _tensors(device, dtype)
    kwargs = {"lr": 2e-4, "betas": (0.9, 0.999), "eps": 1e-8}
    flat = flat_adamw8bit.optimizer_class()(_groups(ours), optim_bits=8, is_paged=False, **kwargs)
    reference = bnb.optim.AdamW(_groups(theirs), optim_bits=8, is_paged=False, **kwargs)
    for step in range(4):
        for optimizer, params in ((flat, ours), (reference, theirs)):
            _step(optimizer, params, step, skip=2 if step == 2 else None)
        _assert_same(flat, ours, reference, theirs)
    torch.save(flat.state_dict(), tmp_path / "optimizer.pt")
    reloaded_params = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    reloaded = flat_adamw8bit.optimizer_class()(_groups(reloaded_params), **kwargs)
    reloaded.load_state_dict(torch.load(tmp_path / "optimizer.pt", weights_only=False))
    for optimizer, params in ((reloaded, reloaded_params), (reference, theirs)):
        optimizer.param_groups[0]["lr"] = 1e-4          # a scheduler's change is honoured
        _step(optimizer, params, 9)
    _assert_same(reloaded, reloaded_params, reference, theirs)


def test_the_trainer_keeps_its_own_optimizer_where_one_update_would_differ(tokenizer, tmp_path):
    from test_training_lean_loss import _trainer

    torch_optim = _trainer(tokenizer, tmp_path / "torch")
    assert flat_adamw8bit.install(torch_optim) == {"optimizer_update": "per tensor",
                                                   "why": "optim is adamw_torch_fused"}
    # Full fine-tuning trains the embeddings, whose state the Trainer keeps in 32 bits.
    embeddings = _trainer(tokenizer, tmp_path / "bnb", optim="adamw_8bit")
    assert "embedding is trained" in flat_adamw8bit.install(embeddings)["why"]
    assert embeddings.optimizer_cls_and_kwargs is None
