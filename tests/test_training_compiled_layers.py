"""Compiled decoder layers compute what the eager layers compute on a packed batch (tiny
GPT-OSS in bf16, the dtype `torch._grouped_mm` traces in; CPU; traced by Dynamo and AOTAutograd
as on the GPU, each layer one graph), run only for packed training forwards, and are refused
where they cannot help."""

from __future__ import annotations

import pytest
from test_training_moe_experts import _model, assert_bf16_bounded
from test_training_moe_experts import loss_and_grads as _step

from runner.errors import StepError
from runner.train import compiled_layers, moe_experts, packed_attention

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tokenizer():
    from training_helpers import tiny_model

    from runner.models import load_tokenizer
    return load_tokenizer(tiny_model())


def _packed_batch(lengths=(23, 9, 40)):
    import torch

    from runner.train.packing import PackedCollator

    generator = torch.Generator().manual_seed(5)
    rows = [{"input_ids": ids, "labels": ids} for ids in
            (torch.randint(10, 2000, (n,), generator=generator).tolist() for n in lengths)]
    return PackedCollator(0, multiple=16)(rows)


def _packed_model(tokenizer):
    import torch

    model = _model(tokenizer).to(torch.bfloat16)
    model.train()
    assert moe_experts.install(model)["moe_forward"] == "grouped"
    return model, packed_attention.install(model)


def test_compiled_layers_equal_eager_layers_on_a_packed_batch(tokenizer):
    import torch
    from torch._dynamo.utils import counters

    model, masks = _packed_model(tokenizer)
    batch = _packed_batch()
    logits_ref, grads_ref = _step(model, batch)
    torch._dynamo.reset()
    counters.clear()
    for layer in compiled_layers.decoder_layers(model):
        compiled_layers.compile_layer(layer, masks, backend="aot_eager")
    logits, grads = _step(model, batch)
    assert counters["stats"]["unique_graphs"] >= 1     # the compiled path ran
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert torch.allclose(logits, logits_ref, rtol=1e-5, atol=1e-6)
    assert len([name for name in grads if "experts" in name]) == 8
    for name, grad in grads.items():
        assert (grad - grads_ref[name]).abs().max() <= 1e-5 * grads_ref[name].abs().max(), name
    # a second packed length reuses the dynamic graph instead of compiling a new one
    graphs = counters["stats"]["unique_graphs"]
    _step(model, _packed_batch((31, 12)))
    assert counters["stats"]["unique_graphs"] == graphs


def test_only_packed_training_forwards_take_the_compiled_path(tokenizer):
    import torch
    from torch._dynamo.utils import counters

    model, masks = _packed_model(tokenizer)
    torch._dynamo.reset()
    counters.clear()
    for layer in compiled_layers.decoder_layers(model):
        compiled_layers.compile_layer(layer, masks, backend="aot_eager")
    batch = _packed_batch()
    with torch.no_grad():
        model(**batch)                                    # no gradients: eager
    model.eval()
    model(**batch)                                        # eval mode: eager
    model.train()
    ids = batch["input_ids"][:, :40]
    model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids)   # unpacked: eager
    assert not counters["stats"]["unique_graphs"]


def test_refusals_say_why(tokenizer):
    grouped = {"moe_forward": "grouped", "blocks": 2}
    model = _model(tokenizer)
    assert "not packed" in compiled_layers.refusal(model, moe=grouped, checkpointing=False)
    model, _ = _packed_model(tokenizer)
    assert "checkpointing" in compiled_layers.refusal(model, moe=grouped, checkpointing=True)
    library = {"moe_forward": "library", "blocks": 2}
    assert "expert path" in compiled_layers.refusal(model, moe=library, checkpointing=False)
    assert "CUDA" in compiled_layers.refusal(model, moe=grouped, checkpointing=False)
    record = compiled_layers.install(model, "auto", moe=grouped, checkpointing=False)
    assert record["compile_layers"] == "off" and "CUDA" in record["why"]
    with pytest.raises(StepError, match="compile_layers is on but .*CUDA.*compile_layers: auto"):
        compiled_layers.install(model, "on", moe=grouped, checkpointing=False)
    assert compiled_layers.install(model, "off", moe=grouped, checkpointing=False) == {
        "compile_layers": "off", "layers": 0}
    assert not hasattr(compiled_layers.decoder_layers(model)[0], "_eager_forward")


@pytest.mark.gpu
def test_compiled_layers_match_eager_layers_in_bf16_on_the_gpu(tokenizer):
    """On CUDA: inductor's kernels, FlexAttention with sinks and the grouped MoE in one graph
    per layer. Against the eager layers in fp32, the compiled bf16 model errs at most twice as
    much as the eager bf16 model (plus a small floor; bf16 against bf16 proves nothing)."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    batch = {k: v.cuda() for k, v in _packed_batch((200, 77, 140)).items()}

    def packed_model(dtype):
        model = _model(tokenizer).to("cuda", dtype)
        model.train()
        moe_experts.install(model)     # on CUDA: bf16 only (fp32 keeps the library's experts)
        return model, packed_attention.install(model)

    exact_model, _ = packed_model(torch.float32)
    assert "bf16" in moe_experts.refusal(exact_model)
    exact_logits, exact = _step(exact_model, batch)
    half, masks = packed_model(torch.bfloat16)
    eager_logits, eager = _step(half, batch)
    record = compiled_layers.install(half, "on", moe={"moe_forward": "grouped", "blocks": 2},
                                     checkpointing=False)
    assert record == {"compile_layers": "on", "layers": 2}
    logits, grads = _step(half, batch)

    assert_bf16_bounded((logits, grads), (eager_logits, eager), (exact_logits, exact))
