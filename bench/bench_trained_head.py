"""The trained-positions LM head (runner/train/trained_head.py) on the GPT-OSS-20B head shape
(hidden 2,880, vocabulary 201,088), bf16 on a CUDA GPU: the compiled fixed-shape chunks against
the eager chunk loop they replaced (fp32 logits written out, a last chunk of any size), on the
trained positions of a real-length packed step.

    python bench/bench_trained_head.py --out $OUT [--rows 2290] [--iters 20]

For each variant: GPU ms per pass (CUDA events), the host's ms to issue it, the memory it adds,
and the loss and hidden-state gradient's difference from an fp32 reference.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

HIDDEN, VOCABULARY = 2880, 201088


def eager_chunks(hidden, weight, targets, chunk=256):
    """The loop before (commit cf58587): fp32 logits per chunk, the last chunk's rows as they come."""
    import torch

    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    grad = torch.empty_like(hidden)
    for start in range(0, hidden.shape[0], chunk):
        end = start + chunk
        logits = (hidden[start:end].to(weight.dtype) @ weight.t()).float()
        wanted = targets[start:end, None]
        log_norm = torch.logsumexp(logits, dim=-1, keepdim=True)
        total += (log_norm - logits.gather(1, wanted)).sum()
        probs = logits.sub_(log_norm).exp_().scatter_add_(
            1, wanted, torch.full(wanted.shape, -1.0, device=logits.device))
        grad[start:end] = probs.to(weight.dtype) @ weight
    return total, grad


def compiled_chunks(hidden, weight, targets):
    """What training runs now: rows padded to whole chunks, each chunk one compiled graph."""
    import torch

    from runner.chat.loss_mask import IGNORE
    from runner.train import trained_head

    padding = -hidden.shape[0] % trained_head.CHUNK
    rows = hidden.shape[0]
    index = torch.cat([torch.arange(rows, device=hidden.device),
                       torch.full((padding,), rows, device=hidden.device)])
    full = torch.cat([hidden, hidden.new_zeros(1, hidden.shape[1])]).requires_grad_()
    labels = torch.cat([targets, torch.full((padding,), IGNORE, device=hidden.device)])
    total = trained_head.head_cross_entropy(full, index, weight, labels)
    total.backward()
    return total, full.grad[:rows]


def measure(name, function, hidden, weight, targets, iters: int) -> dict:
    import torch

    for _ in range(3):
        function(hidden, weight, targets)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    start_event, end_event = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start_event.record()
    host = time.perf_counter()
    for _ in range(iters):
        total, grad = function(hidden, weight, targets)
    host = time.perf_counter() - host
    end_event.record()
    torch.cuda.synchronize()
    return {"variant": name, "gpu_ms": start_event.elapsed_time(end_event) / iters,
            "host_ms": 1000 * host / iters,
            "extra_gib": (torch.cuda.max_memory_allocated() - base) / 2**30,
            "loss": float(total), "grad": grad.float()}


def main(argv=None) -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--rows", type=int, default=2290)   # the docs step's trained positions
    parser.add_argument("--iters", type=int, default=20)
    args = parser.parse_args(argv)
    generator = torch.Generator(device="cuda").manual_seed(0)
    hidden = torch.randn(args.rows, HIDDEN, device="cuda", generator=generator,
                         dtype=torch.bfloat16)
    weight = (torch.randn(VOCABULARY, HIDDEN, device="cuda", generator=generator) * 0.02).bfloat16()
    targets = torch.randint(0, VOCABULARY, (args.rows,), device="cuda", generator=generator)
    reference = hidden.float().requires_grad_()
    want = torch.nn.functional.cross_entropy(reference @ weight.float().t(), targets,
                                             reduction="sum")
    want.backward()
    results = []
    with torch.autocast("cuda", dtype=torch.bfloat16):
        for name, function in (("eager chunks (before)", eager_chunks),
                               ("compiled fixed chunks (now)", compiled_chunks)):
            result = measure(name, function, hidden, weight, targets, args.iters)
            grad = result.pop("grad")
            result["loss_relative"] = abs(result["loss"] - float(want)) / abs(float(want))
            result["grad_relative"] = float((grad - reference.grad).norm() / reference.grad.norm())
            results.append(result)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "trained-head.json").write_text(json.dumps(
        {"rows": args.rows, "device": torch.cuda.get_device_name(), "results": results}, indent=1))
    print("| variant | GPU ms | host ms | extra GiB | loss vs fp32 | grad vs fp32 |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in results:
        print(f"| {r['variant']} | {r['gpu_ms']:.2f} | {r['host_ms']:.2f} | {r['extra_gib']:.2f} "
              f"| {r['loss_relative']:.1e} | {r['grad_relative']:.1e} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
