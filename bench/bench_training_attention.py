"""Timing of the packed attention path against Unsloth's own GPT-OSS flex kernel, one layer of
the GPT-OSS-20B shape (64 heads, 8 KV heads, head_dim 64, window 128) on a CUDA GPU:

- masks:  the two document BlockMasks of one packed sequence (once per step), built from the row
          boundaries (runner.train.packed_attention.block_mask) and, for comparison, by torch's
          create_block_mask (reference_block_mask, the builder used until 2026-12-02);
- packed: runner.train.packed_attention's compiled core (rotary, FlexAttention, sink), forward +
          backward, each layer kind;
- unsloth: unsloth_zoo's flex_attention_with_sink (plain causal, what it runs unpacked), same
          tensors (rotary not included).

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


def attention_timings(tokens: int = 3072, rows: int = 8, repeat: int = 20) -> dict:
    """Milliseconds per call of each piece (see the module docstring)."""
    import torch

    from runner.train import packed_attention as pa
    from runner.train.packing import document_ids

    heads, kv, dim, window, T = 64, 8, 64, 128, tokens
    lengths = [T // rows] * (rows - 1)
    positions = torch.cat([torch.arange(n) for n in lengths + [T - sum(lengths)]]).view(1, -1).cuda()
    module = torch.nn.Module()
    module.sinks = torch.nn.Parameter(torch.randn(heads, device="cuda", dtype=torch.bfloat16))
    module.scaling, module.sliding_window, module.num_key_value_groups = dim ** -0.5, window, 8
    make = lambda h: torch.randn(1, h, T, dim, device="cuda", dtype=torch.bfloat16,  # noqa: E731
                                 requires_grad=True)
    q, k, v = make(heads), make(kv), make(kv)
    cos = torch.randn(1, T, dim // 2, device="cuda", dtype=torch.bfloat16)
    sin = torch.randn(1, T, dim // 2, device="cuda", dtype=torch.bfloat16)
    documents = document_ids(positions)
    results = {"tokens": T, "rows": rows}
    results["masks_ms"] = _timed(lambda: pa.build_masks(positions, "flex", window, torch.bfloat16),
                                 repeat)
    results["masks_create_block_mask_ms"] = _timed(
        lambda: (pa.reference_block_mask(documents, None),
                 pa.reference_block_mask(documents, window)), repeat)
    masks = pa.build_masks(positions, "flex", window, torch.bfloat16)
    core = pa.attention_core(True)

    def packed(kind):
        return lambda: core(q, k, v, cos, sin, module.sinks, masks[kind],
                            module.scaling).sum().backward()
    results["packed_sliding_ms"] = _timed(packed("sliding_attention"), repeat)
    results["packed_full_ms"] = _timed(packed("full_attention"), repeat)
    try:
        import unsloth  # noqa: F401  (unsloth_zoo wants it imported first)
        from unsloth_zoo.flex_attention import flex_attention_with_sink
        module.training = True
        results["unsloth_sliding_ms"] = _timed(
            lambda: flex_attention_with_sink(module, q, k, v).sum().backward(), repeat)
        module.sliding_window = None
        results["unsloth_full_ms"] = _timed(
            lambda: flex_attention_with_sink(module, q, k, v).sum().backward(), repeat)
    except ImportError as error:
        results["unsloth"] = f"not importable: {error}"
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=3072)
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args(argv)
    print(json.dumps(attention_timings(args.tokens, args.rows, args.repeat)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
