"""The LM head on the trained positions only (runner.train.trained_head): the same loss and the
same gradients as the model's own masked cross-entropy over every position, in fp32 on CPU
with the tiny GPT-OSS, packed; and the lean loss uses it only where that holds."""

from __future__ import annotations

import pytest
from test_training_lean_loss import ROWS, _losses, _trainer
from test_training_lean_loss import tokenizer as tokenizer  # noqa: F401 (the fixture)
from test_training_packing import _model, _rows

from runner.chat.loss_mask import IGNORE
from runner.train import lean_loss, packed_attention, trained_head
from runner.train.contract import first_step_callback, loss_check_wrapper
from runner.train.packing import PackedCollator

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _relative(a, b) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("rows", [0, 1, trained_head.CHUNK, 2 * trained_head.CHUNK + 37])
def test_the_chunked_head_loss_and_its_gradient_equal_cross_entropy_over_full_logits(rows):
    """Picked rows of a longer sequence, some of them padding (IGNORE, repeating one index)."""
    import torch
    import torch.nn.functional as F

    generator = torch.Generator().manual_seed(rows)
    hidden = torch.randn(rows + 5, 16, generator=generator, requires_grad=True)
    weight = torch.randn(300, 16, generator=generator)
    index = torch.randperm(rows + 4, generator=generator)[:rows]
    targets = torch.randint(0, 300, (rows,), generator=generator)
    padding = 7
    got = trained_head.head_cross_entropy(
        hidden, torch.cat([index, torch.full((padding,), rows + 4)]), weight,
        torch.cat([targets, torch.full((padding,), IGNORE)]))
    (got * 0.5).backward()
    got_grad, hidden.grad = hidden.grad, None
    want = F.cross_entropy(hidden[index] @ weight.t(), targets, reduction="sum")
    (want * 0.5).backward()
    assert float(got.detach()) == pytest.approx(float(want.detach()), rel=1e-5, abs=1e-6)
    assert torch.allclose(got_grad, hidden.grad, rtol=1e-4, atol=1e-6)
    assert not got_grad[rows + 4].any()          # the padding rows' position


def test_a_chunk_traces_as_one_graph_and_computes_what_it_computes_eagerly():
    """What CUDA compiles (fullgraph, static shapes), traced here without generated kernels."""
    import torch

    generator = torch.Generator().manual_seed(3)
    hidden = torch.randn(trained_head.CHUNK, 16, generator=generator)
    weight = torch.randn(300, 16, generator=generator)
    targets = torch.randint(0, 300, (trained_head.CHUNK,), generator=generator)
    targets[-9:] = IGNORE
    traced = torch.compile(trained_head.chunk_loss_and_gradient, fullgraph=True, dynamic=False,
                           backend="aot_eager")
    got, want = traced(hidden, weight, targets), trained_head.chunk_loss_and_gradient(
        hidden, weight, targets)
    assert torch.allclose(got[0], want[0]) and torch.allclose(got[1], want[1])
    assert not want[1][-9:].any()


def test_trained_targets_are_the_next_tokens_the_labels_train_padded_to_whole_chunks():
    labels = [IGNORE, IGNORE, 7, 8, IGNORE, IGNORE, 9, IGNORE]
    index, targets = trained_head.trained_targets(labels)
    padding = trained_head.CHUNK - 3
    assert index == [1, 2, 5] + [7] * padding
    assert targets == [7, 8, 9] + [IGNORE] * padding
    full = [IGNORE] + [5] * trained_head.CHUNK
    assert trained_head.trained_targets(full) == (list(range(trained_head.CHUNK)),
                                                  [5] * trained_head.CHUNK)


def test_a_packed_batch_has_the_models_loss_and_gradients_on_trained_positions_only(tokenizer):

    model = _model(tokenizer)
    packed_attention.install(model)
    head = model.get_base_model().get_output_embeddings()
    assert trained_head.reason_not_usable(model) is None
    collator = PackedCollator(tokenizer.pad_token_id, multiple=16)
    collator.trained_positions = True
    batch = collator(_rows())
    count = int((batch["labels"][:, 1:] != IGNORE).sum())
    assert int((batch["trained_labels"] != IGNORE).sum()) == count < batch["input_ids"].numel() - 1
    assert batch["trained_index"].numel() % trained_head.CHUNK == 0

    def gradients():
        grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
        model.zero_grad()
        return grads

    inputs = {key: batch[key] for key in ("input_ids", "position_ids")}
    own = model(**inputs, labels=batch["labels"], num_items_in_batch=count).loss
    own.backward()
    own_grads = gradients()
    forward = trained_head.forward_for(model)
    lean = forward(**inputs, labels=batch["labels"], num_items_in_batch=count, use_cache=False,
                   trained_index=batch["trained_index"], trained_labels=batch["trained_labels"])
    lean["loss"].backward()
    lean_grads = gradients()
    assert float(lean["loss"].detach()) == pytest.approx(float(own.detach()), rel=1e-5)
    assert lean_grads.keys() == own_grads.keys() and any("experts" in n for n in own_grads)
    for name, grad in own_grads.items():
        assert _relative(lean_grads[name], grad) < 1e-3, name
    assert head.weight.grad is None


def _packed_trainer(tokenizer, tmp_path):
    # fp32: TRL's default bf16 autocast on CPU moves the gradients of either path by up to 18%
    # from fp32, so only fp32 has one right answer to compare with.
    trainer = _trainer(tokenizer, tmp_path, bf16=False)
    trainer.data_collator = PackedCollator(tokenizer.pad_token_id, multiple=16)
    packed_attention.install(trainer.model)
    trainer.model.get_output_embeddings().weight.requires_grad_(False)
    return trainer


def test_packed_training_with_the_trained_head_logs_trls_losses(tokenizer, tmp_path):
    trl = _packed_trainer(tokenizer, tmp_path / "trl")
    trl.train()
    lean = _packed_trainer(tokenizer, tmp_path / "lean")
    installed = lean_loss.install(lean, 0.0)
    record: dict = {}
    loss_check_wrapper(lean, record, 0.0)
    lean.add_callback(first_step_callback({}, record))
    lean.train()
    assert installed["lm_head"] == "trained positions only"
    assert record["loss_check"]["relative_difference"] < 1e-4
    assert len(_losses(lean)) == 2
    assert _losses(lean) == pytest.approx(_losses(trl), rel=1e-4)
    norms = [[row["grad_norm"] for row in t.state.log_history if "grad_norm" in row]
             for t in (lean, trl)]
    assert norms[0] == pytest.approx(norms[1], rel=1e-4)
    assert lean.state.num_input_tokens_seen == sum(len(row["input_ids"]) for row in ROWS)


def test_a_trained_lm_head_or_padded_batches_keep_the_head_on_every_position(tokenizer,
                                                                             tmp_path):
    trained = _packed_trainer(tokenizer, tmp_path / "trained")
    trained.model.get_output_embeddings().weight.requires_grad_(True)
    assert "LM head is trained" in lean_loss.install(trained, 0.0)["lm_head"]
    assert trained.data_collator.trained_positions is False
    padded = _trainer(tokenizer, tmp_path / "padded")
    assert "padded batches" in lean_loss.install(padded, 0.0)["lm_head"]


@pytest.mark.gpu
def test_the_compiled_head_chunks_equal_fp32_cross_entropy_in_bf16_on_the_gpu():
    """On CUDA each chunk is one compiled graph: bf16 in, the loss and the hidden-state gradient
    against fp32 cross-entropy over full logits, within bf16 tolerance; padding adds nothing."""
    import torch
    import torch.nn.functional as F

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    generator = torch.Generator(device="cuda").manual_seed(1)
    rows, width, vocabulary = 3 * trained_head.CHUNK - 40, 256, 50_000
    hidden = torch.randn(rows + 1, width, device="cuda", generator=generator)
    weight = torch.randn(vocabulary, width, device="cuda", generator=generator) * 0.05
    targets = torch.randint(0, vocabulary, (rows,), device="cuda", generator=generator)
    index = torch.cat([torch.arange(rows, device="cuda"), torch.full((40,), rows, device="cuda")])
    labels = torch.cat([targets, torch.full((40,), IGNORE, device="cuda")])
    half = hidden.bfloat16().requires_grad_()
    got = trained_head.head_cross_entropy(half, index, weight.bfloat16(), labels)
    got.backward()
    exact = hidden.requires_grad_()
    want = F.cross_entropy(exact[:rows] @ weight.bfloat16().float().t(), targets, reduction="sum")
    want.backward()
    assert float(got) == pytest.approx(float(want), rel=2e-3)
    assert _relative(half.grad.float(), exact.grad) < 2e-2
    assert not half.grad[rows].any()
    assert trained_head.chunk_mode() == "compiled"
