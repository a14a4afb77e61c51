"""Timing of the packed attention path against Unsloth's own GPT-OSS flex kernel, one layer of
the GPT-OSS-20B shape (64 heads, 8 KV heads, head_dim 64, window 128) on a CUDA GPU:

- masks:  the two document BlockMasks of one packed sequence (once per step);
- packed: runner.train.packed_attention.flex_sink_attention, forward + backward;
- unsloth: unsloth_zoo's flex_attention_with_sink (plain causal, what it runs unpacked).

    python bench/bench_training_attention.py [--tokens 3072] [--rows 8]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _timed(function, repeat: int) -> float:
    import torch
    for _ in range(3):
        function()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeat):
        function()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeat * 1000


def main(argv=None) -> int:
    import torch

    from runner.train.packed_attention import build_masks, flex_sink_attention

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=3072)
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args(argv)
    heads, kv, dim, window, T = 64, 8, 64, 128, args.tokens
    lengths = [T // args.rows] * (args.rows - 1)
    positions = torch.cat([torch.arange(n) for n in lengths + [T - sum(lengths)]]).view(1, -1).cuda()
    module = torch.nn.Module()
    module.sinks = torch.nn.Parameter(torch.randn(heads, device="cuda", dtype=torch.bfloat16))
    module.scaling, module.sliding_window, module.num_key_value_groups = dim ** -0.5, window, 8

    def tensors():
        make = lambda h: torch.randn(1, h, T, dim, device="cuda", dtype=torch.bfloat16,  # noqa: E731
                                     requires_grad=True)
        return make(heads), make(kv), make(kv)

    q, k, v = tensors()
    results = {"tokens": T, "rows": args.rows}
    results["masks_ms"] = _timed(lambda: build_masks(positions, "flex", window, torch.bfloat16),
                                 args.repeat)
    masks = build_masks(positions, "flex", window, torch.bfloat16)

    def packed(kind):
        return lambda: flex_sink_attention(module, q, k, v, masks[kind]).sum().backward()
    results["packed_sliding_ms"] = _timed(packed("sliding_attention"), args.repeat)
    results["packed_full_ms"] = _timed(packed("full_attention"), args.repeat)
    try:
        import unsloth  # noqa: F401  (unsloth_zoo wants it imported first)
        from unsloth_zoo.flex_attention import flex_attention_with_sink
        module.training = True
        results["unsloth_sliding_ms"] = _timed(
            lambda: flex_attention_with_sink(module, q, k, v).sum().backward(), args.repeat)
    except ImportError as error:
        results["unsloth"] = f"not importable: {error}"
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
