"""The grouped MoE forward computes what transformers + PEFT compute: logits and every LoRA
gradient of a tiny GPT-OSS (fp32, CPU), and it refuses what it cannot compute."""

from __future__ import annotations

import pytest

from runner.errors import StepError
from runner.train import moe_experts

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tokenizer():
    from training_helpers import tiny_model

    from runner.models import load_tokenizer
    return load_tokenizer(tiny_model())


def _model(tokenizer, seed: int = 0, r: int = 4, **lora):
    """Tiny GPT-OSS with LoRA on attention and experts; LoRA B random so every adapter weight
    has a gradient, and the expert biases non-zero so the bias path counts."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from runner.tiny_model import model_config

    config = model_config("gpt_oss", tokenizer, num_hidden_layers=2, hidden_size=64,
                          num_local_experts=4, vocab_size=2048, sliding_window=8)
    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    with torch.no_grad():
        for name, param in base.named_parameters():
            if name.endswith("_bias"):
                param.normal_(0, 0.1)
            if name.endswith("experts.gate_up_proj"):
                param.mul_(40)            # some activations reach GPT-OSS's clamp at +-7
    return get_peft_model(base, LoraConfig(
        r=r, lora_alpha=8, init_lora_weights=False,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        target_parameters=["mlp.experts.gate_up_proj", "mlp.experts.down_proj"], **lora))


def _loss_and_grads(model, ids):
    return loss_and_grads(model, {"input_ids": ids, "labels": ids})


def loss_and_grads(model, batch: dict):
    """(logits, {trainable parameter name: its gradient}) of one forward and backward."""
    out = model(**batch)
    out.loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    return out.logits.detach(), grads


def test_grouped_forward_equals_transformers_and_peft(tokenizer):
    import torch

    model = _model(tokenizer)
    ids = torch.randint(10, 2000, (2, 37), generator=torch.Generator().manual_seed(3))
    logits_ref, grads_ref = _loss_and_grads(model, ids)
    record = moe_experts.install(model)
    assert record == {"moe_forward": "grouped", "blocks": 2, "compiled": False}
    logits, grads = _loss_and_grads(model, ids)
    assert torch.allclose(logits, logits_ref, rtol=1e-4, atol=1e-5)
    experts = [name for name in grads if "experts" in name]
    assert len(experts) == 8            # lora_A and lora_B of two stacks, two layers
    _assert_close(grads, grads_ref)


def _assert_close(grads, reference):
    """Every gradient within 1e-4 of its tensor's largest reference value, none all zero."""
    for name, grad in grads.items():
        assert grad.abs().max() > 0, name
        scale = reference[name].abs().max()
        assert (grad - reference[name]).abs().max() <= 1e-4 * scale, name


def test_odd_rank_is_padded_exactly(tokenizer):
    import torch

    model = _model(tokenizer, r=3)
    ids = torch.randint(10, 2000, (1, 29), generator=torch.Generator().manual_seed(4))
    logits_ref, grads_ref = _loss_and_grads(model, ids)
    moe_experts.install(model)
    logits, grads = _loss_and_grads(model, ids)
    assert torch.allclose(logits, logits_ref, rtol=1e-4, atol=1e-5)
    _assert_close(grads, grads_ref)


def test_gradients_do_not_depend_on_run(tokenizer):
    """The combine is permutations and a sum: two runs give bitwise-equal gradients."""
    import torch

    model = _model(tokenizer)
    moe_experts.install(model)
    ids = torch.randint(10, 2000, (2, 31), generator=torch.Generator().manual_seed(5))
    _, first = _loss_and_grads(model, ids)
    _, second = _loss_and_grads(model, ids)
    assert all(torch.equal(first[name], second[name]) for name in first)


def test_library_mode_and_models_without_experts_keep_their_forward(tokenizer):
    from transformers import AutoModelForCausalLM

    from runner.tiny_model import model_config

    model = _model(tokenizer)
    assert moe_experts.install(model, "library") == {"moe_forward": "library", "blocks": 2}
    assert all(not hasattr(block, "_library_forward") for block in moe_experts.moe_blocks(model))
    llama = AutoModelForCausalLM.from_config(model_config("llama", tokenizer, num_hidden_layers=1))
    assert moe_experts.install(llama, "grouped") == {"moe_forward": "library", "blocks": 0}


def test_refuses_what_it_cannot_compute(tokenizer):
    import torch

    model = _model(tokenizer)
    block = moe_experts.moe_blocks(model)[0]
    base = moe_experts._base_experts(block.experts)
    base.down_proj.data = base.down_proj.data.to(torch.uint8)     # as quantized storage
    with pytest.raises(StepError, match="down_proj is stored as torch.uint8.*moe_forward: auto"):
        moe_experts.install(model, "grouped")
    record = moe_experts.install(model, "auto")
    assert record["moe_forward"] == "library" and "quantized" in record["why"]
    assert not hasattr(block, "_library_forward")


def test_refuses_two_active_adapters(tokenizer):
    from peft import LoraConfig

    model = _model(tokenizer)
    model.add_adapter("second", LoraConfig(
        r=4, target_parameters=["mlp.experts.gate_up_proj", "mlp.experts.down_proj"],
        target_modules=["q_proj"]))
    model.base_model.set_adapter(["default", "second"])
    assert "2 active adapters" in moe_experts.refusal(model)


@pytest.mark.gpu
def test_compiled_grouped_forward_matches_the_library_in_bf16_on_the_gpu(tokenizer):
    """On CUDA the grouped forward is compiled. Against the library in fp32, the bf16 grouped
    model errs at most twice as much as the bf16 library model (plus a small floor): whole-model
    bf16 gradients differ by ~10% from any other bf16 order of summation, so bf16 against bf16
    proves nothing. Two runs give equal gradients."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    ids = torch.randint(10, 2000, (2, 64), generator=torch.Generator().manual_seed(6)).cuda()
    exact_logits, exact = _loss_and_grads(_model(tokenizer).to("cuda"), ids)
    half = _model(tokenizer).to("cuda", torch.bfloat16)
    library_logits, library = _loss_and_grads(half, ids)
    assert moe_experts.install(half)["compiled"] is True
    logits, grads = _loss_and_grads(half, ids)
    _, again = _loss_and_grads(half, ids)

    assert_bf16_bounded((logits, grads), (library_logits, library), (exact_logits, exact))
    for name, grad in grads.items():
        assert torch.equal(grad, again[name]), name


def assert_bf16_bounded(candidate, reference, exact):
    """Each of (logits, grads) `candidate` errs against the fp32 `exact` at most twice as much
    as the bf16 `reference` does, plus a small floor; no gradient is all zero."""
    def error(a, b):
        return float((a.float() - b.float()).abs().max() / b.float().abs().max())
    assert error(candidate[0], exact[0]) <= 2 * error(reference[0], exact[0]) + 1e-2
    for name, grad in candidate[1].items():
        assert grad.abs().max() > 0, name
        bound = 2 * error(reference[1][name], exact[1][name]) + 2e-2
        assert error(grad, exact[1][name]) <= bound, name
