"""Packed GPT-OSS batches equal the same rows unpacked: per-row loss and every LoRA gradient
(fp32, CPU, tiny GPT-OSS with a short sliding window), and through the real training step."""

from __future__ import annotations

import json

import pytest
from training_helpers import fast_training, make_ctx, read_jsonl, run_step, tiny_model

from runner.chat.loss_mask import IGNORE
from runner.train import packed_attention
from runner.train.packing import PackedCollator, pack_rows, row_spans

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ROW_LENGTHS = (23, 40, 17)      # longer than the sliding window of 8, different from each other


@pytest.fixture(scope="module")
def tokenizer():
    from runner.models import load_tokenizer
    return load_tokenizer(tiny_model())


def _model(tokenizer):
    """Tiny GPT-OSS (sliding window 8 so the sliding layers matter) with LoRA on attention and
    experts; LoRA B starts random so every adapter weight has a gradient."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from runner.tiny_model import model_config

    config = model_config("gpt_oss", tokenizer, num_hidden_layers=2, hidden_size=64,
                          num_local_experts=4, vocab_size=2048, sliding_window=8)
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    return get_peft_model(base, LoraConfig(
        r=4, lora_alpha=8, init_lora_weights=False,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        target_parameters=["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]))


def _rows():
    import torch
    generator = torch.Generator().manual_seed(1)
    rows = []
    for length in ROW_LENGTHS:
        ids = torch.randint(10, 2000, (length,), generator=generator).tolist()
        rows.append({"input_ids": ids, "labels": [IGNORE] * 5 + ids[5:]})   # a masked prompt
    return rows


def _sum_nll(logits, labels):
    """(summed next-token NLL over the trained labels, their count)."""
    import torch
    log_probs = torch.log_softmax(logits[:-1].float(), dim=-1)
    targets = torch.tensor(labels[1:])
    keep = targets != IGNORE
    return -log_probs[keep.nonzero().squeeze(-1), targets[keep]].sum(), int(keep.sum())


def _gradients(model):
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    return grads


def _unpacked(model, rows):
    import torch
    total, count, per_row = 0, 0, []
    for row in rows:
        logits = model(input_ids=torch.tensor([row["input_ids"]])).logits[0]
        nll, n = _sum_nll(logits, row["labels"])
        per_row.append(float(nll.detach() / n))
        total, count = total + nll, count + n
    (total / count).backward()          # the trainer's normalisation: all trained tokens
    return per_row, _gradients(model)


def _packed(model, rows, pad_id, backward=True):
    batch = PackedCollator(pad_id, multiple=16)(rows)
    logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[0]
    labels = batch["labels"][0].tolist()
    total, count, per_row = 0, 0, []
    for start, end in row_spans(batch["position_ids"][0].tolist())[:len(rows)]:
        nll, n = _sum_nll(logits[start:end], labels[start:end])
        per_row.append(float(nll.detach() / n))
        total, count = total + nll, count + n
    if backward:
        (total / count).backward()
    return per_row, _gradients(model) if backward else None, logits


def _relative(a, b):
    return abs(a - b) / abs(b)


def test_pack_rows_masks_each_rows_first_label_and_pads_to_the_multiple():
    packed = pack_rows([{"input_ids": [5, 6, 7], "labels": [5, 6, 7]},
                        {"input_ids": [8, 9], "labels": [IGNORE, 9]}], pad_token_id=1, multiple=8)
    assert packed["input_ids"] == [5, 6, 7, 8, 9, 1, 1, 1]
    assert packed["labels"] == [IGNORE, 6, 7, IGNORE, 9, IGNORE, IGNORE, IGNORE]
    assert packed["position_ids"] == [0, 1, 2, 0, 1, 0, 1, 2]
    assert row_spans(packed["position_ids"]) == [(0, 3), (3, 5), (5, 8)]


def test_packed_rows_have_the_loss_and_gradients_of_the_rows_alone(tokenizer):
    model = _model(tokenizer)
    rows = _rows()
    alone, alone_grads = _unpacked(model, rows)
    assert packed_attention.install(model).kernel == "eager"
    packed, packed_grads, _ = _packed(model, rows, tokenizer.pad_token_id)
    for got, want in zip(packed, alone, strict=True):
        assert _relative(got, want) < 1e-3
    experts = [name for name in alone_grads if "experts" in name]
    assert len(experts) == 8 and all(alone_grads[name].norm() > 0 for name in alone_grads)
    for name, want in alone_grads.items():
        assert float((packed_grads[name] - want).norm() / want.norm()) < 1e-3, name


def test_without_the_document_masks_packed_rows_attend_to_each_other(tokenizer):
    """The control: position ids alone (what TRL's padding-free relies on) leave row 1 exact
    and contaminate the later rows, so the test above can fail."""
    import torch
    model = _model(tokenizer)
    rows = _rows()
    with torch.no_grad():
        _, _, contaminated = _packed(model, rows, tokenizer.pad_token_id, backward=False)
        packed_attention.install(model)
        _, _, exact = _packed(model, rows, tokenizer.pad_token_id, backward=False)
    first = slice(0, ROW_LENGTHS[0])
    torch.testing.assert_close(contaminated[first], exact[first])
    later = slice(ROW_LENGTHS[0], sum(ROW_LENGTHS))
    assert float((contaminated[later] - exact[later]).abs().max()) > 1e-2


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_attention_block_masks_with_sinks_match_the_eager_rows(tokenizer):
    """The CUDA kernel path (FlexAttention BlockMasks, sinks through the log-sum-exp), run by
    its unfused reference on CPU (forward only there)."""
    import torch
    model = _model(tokenizer)
    rows = _rows()
    with torch.no_grad():
        alone = [model(input_ids=torch.tensor([row["input_ids"]])).logits[0] for row in rows]
        packed_attention.install(model, kernel="flex")
        _, _, packed = _packed(model, rows, tokenizer.pad_token_id, backward=False)
    start = 0
    for row, want in zip(rows, alone, strict=True):
        got = packed[start:start + len(row["input_ids"])]
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        start += len(row["input_ids"])


def _block_sets(counts, indices):
    """{(batch, query block): set of key blocks} of a BlockMask's ordered block lists."""
    return {(b, q): set(indices[b, 0, q, :int(counts[b, 0, q])].tolist())
            for b in range(counts.shape[0]) for q in range(counts.shape[-1])}


@pytest.mark.parametrize("window", [None, 128, 37, 300])
def test_block_masks_from_row_boundaries_equal_create_block_mask(window):
    """The per-block builder marks the same partial and full blocks (both directions, for the
    backward pass) as torch's create_block_mask, also for lengths off the 128-token block."""
    import random

    import torch

    from runner.train.packing import document_ids

    rng = random.Random(0)
    for _ in range(12):
        length = rng.choice([128, 300, 640, 1000])
        positions = []
        for _ in range(rng.choice([1, 2])):
            row = []
            while len(row) < length:
                row += range(rng.randint(1, rng.choice([50, 200, 400])))
            positions.append(row[:length])
        documents = document_ids(torch.tensor(positions))
        got = packed_attention.block_mask(documents, window)
        want = packed_attention.reference_block_mask(documents, window)
        for names in (("kv_num_blocks", "kv_indices"), ("full_kv_num_blocks", "full_kv_indices"),
                      ("q_num_blocks", "q_indices"), ("full_q_num_blocks", "full_q_indices")):
            assert _block_sets(*(getattr(got, n) for n in names)) == \
                _block_sets(*(getattr(want, n) for n in names)), (names, length, window)


def test_the_packed_training_step_logs_the_padded_runs_losses(tmp_path):
    """Same rows per micro-batch, same order: packing changes the batch layout, not the loss."""
    losses = {}
    for packing in (False, True):
        ctx = make_ctx(tmp_path / str(packing), fast_training(max_steps=3, packing=packing))
        metrics = run_step(ctx)
        losses[packing] = [r["loss"] for r in read_jsonl(ctx.out_dir / "metrics.jsonl")
                           if "loss" in r]
        summary = json.loads((ctx.out_dir / "summary.json").read_text())
        assert metrics["packed"] is packing and summary["mask"]["rows"] == 4
    assert summary["contract"]["packing"]["kernel"] == "eager"
    assert summary["contract"]["packing"]["max_relative_difference"] < 1e-4
    assert len(losses[True]) == 3
    for got, want in zip(losses[True], losses[False], strict=True):
        assert _relative(got, want) < 1e-4


@pytest.mark.gpu
def test_packed_rows_match_in_bf16_on_the_gpu_with_flex_attention(tokenizer):
    """The CUDA path for real: compiled FlexAttention with BlockMasks, backward through the
    sink's log-sum-exp, in bf16. bf16 has no exact answer, so both bf16 paths (the model's own
    eager attention on each row alone, and the packed flex path) are measured against the same
    rows alone in fp32: packing may not add more than bf16 itself does."""
    import copy

    import torch
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from runner.tiny_model import model_config

    config = model_config("gpt_oss", tokenizer, num_hidden_layers=2, hidden_size=256,
                          num_local_experts=4, vocab_size=2048, sliding_window=32)
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(config, attn_implementation="eager").cuda()
    exact = get_peft_model(base, LoraConfig(
        r=8, lora_alpha=16, init_lora_weights=False,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        target_parameters=["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]))
    half = copy.deepcopy(exact).to(torch.bfloat16)
    generator = torch.Generator().manual_seed(2)
    rows = []
    for length in (150, 301, 90):
        ids = torch.randint(10, 2000, (length,), generator=generator).tolist()
        rows.append({"input_ids": ids, "labels": [IGNORE] * 20 + ids[20:]})
    want, want_grads = _unpacked_on(exact, rows, "cuda")
    alone, alone_grads = _unpacked_on(half, rows, "cuda")
    assert packed_attention.install(half).kernel == "flex"
    packed, packed_grads = _packed_on(half, rows, tokenizer.pad_token_id, "cuda")

    def errors(losses, grads):
        loss = max(_relative(a, b) for a, b in zip(losses, want, strict=True))
        grad = max(float((grads[n].float() - g).norm() / g.norm()) for n, g in want_grads.items())
        return loss, grad
    (alone_loss, alone_grad), (packed_loss, packed_grad) = errors(alone, alone_grads), \
        errors(packed, packed_grads)
    print(f"against fp32 rows alone: bf16 alone loss {alone_loss:.1e} gradients {alone_grad:.1e}; "
          f"bf16 packed loss {packed_loss:.1e} gradients {packed_grad:.1e}")
    assert packed_loss <= 2 * alone_loss + 1e-3
    assert packed_grad <= 2 * alone_grad + 1e-2


def _unpacked_on(model, rows, device):
    import torch
    total, count, per_row = 0, 0, []
    for row in rows:
        logits = model(input_ids=torch.tensor([row["input_ids"]], device=device)).logits[0].cpu()
        nll, n = _sum_nll(logits, row["labels"])
        per_row.append(float(nll.detach() / n))
        total, count = total + nll, count + n
    (total / count).backward()
    return per_row, _gradients(model)


def _packed_on(model, rows, pad_id, device):
    batch = PackedCollator(pad_id)(rows)
    logits = model(input_ids=batch["input_ids"].to(device),
                   position_ids=batch["position_ids"].to(device)).logits[0].cpu()
    labels = batch["labels"][0].tolist()
    total, count, per_row = 0, 0, []
    for start, end in row_spans(batch["position_ids"][0].tolist())[:len(rows)]:
        nll, n = _sum_nll(logits[start:end], labels[start:end])
        per_row.append(float(nll.detach() / n))
        total, count = total + nll, count + n
    (total / count).backward()
    return per_row, _gradients(model)


def _attention_inputs(dtype):
    import torch
    generator = torch.Generator().manual_seed(2)
    heads, kv_heads, length, dim = 4, 2, 96, 16

    def normal(*shape):
        return torch.randn(*shape, generator=generator).to(dtype)
    angles = torch.arange(length).view(1, -1, 1) * torch.linspace(0.01, 1.0, dim // 2)
    documents = torch.tensor([[0] * 40 + [1] * 30 + [2] * 26])
    return (normal(1, heads, length, dim), normal(1, kv_heads, length, dim),
            normal(1, kv_heads, length, dim), angles.cos().to(dtype), angles.sin().to(dtype),
            normal(heads), packed_attention.block_mask(documents, None), dim ** -0.5)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_packed_rotary_embedding_is_transformers_own_bit_for_bit(dtype):
    import torch
    from transformers.models.gpt_oss import modeling_gpt_oss

    query, key, _, cos, sin, *_ = _attention_inputs(getattr(torch, dtype))
    want = modeling_gpt_oss.apply_rotary_pos_emb(query, key, cos, sin)
    got = (packed_attention.rotary(query, cos.unsqueeze(1), sin.unsqueeze(1)),
           packed_attention.rotary(key, cos.unsqueeze(1), sin.unsqueeze(1)))
    assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))


def test_sink_attention_stays_one_graph_when_a_backend_swaps_transformers_rotary(monkeypatch):
    """Unsloth replaces modeling_gpt_oss.apply_rotary_pos_emb with a function compiled on its
    own; a compile-disabled stand-in for it must not split attention_core's graph."""
    import torch
    from transformers.models.gpt_oss import modeling_gpt_oss

    swapped = torch.compiler.disable(modeling_gpt_oss.apply_rotary_pos_emb)
    monkeypatch.setattr(modeling_gpt_oss, "apply_rotary_pos_emb", swapped)
    torch._dynamo.reset()
    explained = torch._dynamo.explain(packed_attention.sink_attention)(
        *_attention_inputs(torch.float32))
    assert explained.graph_break_count == 0, explained.break_reasons
    (graph,) = explained.graphs
    # A call dynamo cannot trace at the function's start leaves no break to count: the graph
    # then begins after it, its inputs the call's results ("stack0") instead of query and key.
    inputs = [node.name for node in graph.graph.nodes if node.op == "placeholder"]
    assert {"l_query_", "l_key_"} <= set(inputs) and not any("stack" in n for n in inputs), inputs
    assert torch.cat in explained.ops_per_graph[0]       # the rotary embedding is in the graph
