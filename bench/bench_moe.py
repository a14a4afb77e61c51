"""One GPT-OSS MoE block, forward and backward: Unsloth's expert path against the runner's grouped
forward (runner/train/moe_experts.py), on the benchmark's model as Unsloth loads it.

    python bench/bench_moe.py --work /tmp/bench --out $OUT [--tokens 3072] [--iters 20]

For each variant: the host's time to issue forward + backward (no sync inside), the wall time
with the GPU finishing, the GPU time (CUDA events), the memory the pass adds, and the largest
difference from Unsloth's output, input gradient and LoRA gradients (bf16, same routing).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def load_block(work: Path):
    os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")
    from unsloth import FastLanguageModel  # noqa: I001  (before transformers)
    from bench_training import ALPHA, ATTN_MLP, MODELS
    from bench_training_data import build_model

    preset, shape = MODELS["gpt-oss-20b-4l"]
    path = work / "models" / "gpt-oss-20b-4l"
    build_model(path, "gpt_oss", preset, shape, "cuda")
    model, _ = FastLanguageModel.from_pretrained(str(path), max_seq_length=4096, dtype=None,
                                                 load_in_4bit=False)
    model = FastLanguageModel.get_peft_model(
        model, r=16, lora_alpha=ALPHA, lora_dropout=0, target_modules=ATTN_MLP, bias="none",
        use_gradient_checkpointing=False, random_state=3407)
    FastLanguageModel.for_training(model)
    from runner.train import moe_experts
    blocks = moe_experts.moe_blocks(model)
    import torch
    with torch.no_grad():     # LoRA B starts at zero: make the adapters count in the output
        for name, param in blocks[0].named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.02)
    return model, blocks[0]


def one_pass(block, forward, hidden, grad):
    out = forward(hidden)
    out = out[0] if isinstance(out, tuple) else out
    out.backward(grad)
    return out


def measure(block, forward, hidden, grad, iters: int) -> dict:
    import torch

    for _ in range(3):
        one_pass(block, forward, hidden, grad)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    host, wall = [], []
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        one_pass(block, forward, hidden, grad)
        t1 = time.perf_counter()
        torch.cuda.synchronize()
        host.append(t1 - t0)
        wall.append(time.perf_counter() - t0)
    end.record()
    torch.cuda.synchronize()
    gpu = _gpu_ms(block, forward, hidden, grad, iters)
    median = lambda xs: sorted(xs)[len(xs) // 2] * 1e3  # noqa: E731
    return {"host_ms": round(median(host), 2), "wall_ms": round(median(wall), 2),
            "gpu_ms": round(gpu, 2),
            "extra_gib": round((torch.cuda.max_memory_allocated() - base) / 2**30, 3)}


def _gpu_ms(block, forward, hidden, grad, iters: int) -> float:
    """GPU time per pass with the host far ahead (a long queue behind one sync)."""
    import torch

    torch.cuda._sleep(int(2e9))       # the host queues every pass while the GPU sleeps
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        one_pass(block, forward, hidden, grad)
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def grads_of(block) -> dict:
    found = {n: p.grad.detach().float().clone() for n, p in block.named_parameters()
             if p.grad is not None}
    block.zero_grad(set_to_none=True)
    return found


def difference(a, b) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-30))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench"))
    parser.add_argument("--out", type=Path, default=Path("/tmp/gpu-out"))
    parser.add_argument("--tokens", type=int, default=3072)
    parser.add_argument("--iters", type=int, default=20)
    args = parser.parse_args(argv)
    import torch

    from runner.train import moe_experts

    model, block = load_block(args.work)
    torch.manual_seed(0)
    hidden = torch.randn(1, args.tokens, block.router.weight.shape[1], device="cuda",
                         dtype=torch.bfloat16, requires_grad=True)
    grad = torch.randn_like(hidden)
    library = block.forward

    def grouped(x):
        block._moe_compiled = False
        return moe_experts.grouped_block_forward(block, x)

    def grouped_compiled(x):      # what the training step runs on CUDA
        block._moe_compiled = True
        return moe_experts.grouped_block_forward(block, x)

    results, reference = {}, None
    for name, forward in (("unsloth", library), ("grouped", grouped),
                          ("grouped-compiled", grouped_compiled)):
        try:
            out = one_pass(block, forward, hidden, grad)
            seen = {"out": out.detach().float(), "input_grad": hidden.grad.float().clone(),
                    **grads_of(block)}
            hidden.grad = None
            reference = reference or seen
            results[name] = {**measure(block, forward, hidden, grad, args.iters),
                             "max_rel_diff": {k: round(difference(v, reference[k]), 5)
                                              for k, v in seen.items() if k in reference},
                             "grads": len(seen) - 2}
            block.zero_grad(set_to_none=True)
            hidden.grad = None
        except Exception as error:  # noqa: BLE001  (a variant that fails is a result)
            results[name] = {"error": f"{type(error).__name__}: {error}"[:2000]}
        print(name, json.dumps(results[name]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
            "tokens": args.tokens, "iters": args.iters}
    (args.out / "moe-block.json").write_text(json.dumps({"meta": meta, **results}, indent=1))
    print(f"{'variant':18} {'host ms':>8} {'wall ms':>8} {'gpu ms':>7} {'+GiB':>6}")
    for name, r in results.items():
        if "error" not in r:
            print(f"{name:18} {r['host_ms']:8.2f} {r['wall_ms']:8.2f} {r['gpu_ms']:7.2f} "
                  f"{r['extra_gib']:6.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
