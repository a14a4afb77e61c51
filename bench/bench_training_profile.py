"""Where a packed GPT-OSS training step's time goes, on a CUDA GPU (the 20B shape, 4 layers).

One Unsloth model (as bench_training_engines' bare loop loads it), the same 8 docs rows per
step, a plain loop (forward, backward, clip, AdamW8bit, loss.item()), no Trainer. Variants:

- padded-8x1:      bare Unsloth's best padded geometry (the reference);
- packed-causal:   the 8 rows in one [1, T] sequence through Unsloth's own kernel, which masks
                   causally only (rows attend to each other: wrong, but the speed any exact
                   packing in Unsloth can at best reach);
- packed-before:   runner.train.packed_attention as of 2026-12-02 (create_block_mask masks,
                   eager rotary and sink around a compiled flex_attention);
- packed-masks:    masks from the row boundaries, the old attention core;
- packed:          the current code (masks from the row boundaries, one compiled core).

For each: milliseconds per optimizer step over --steps steps after --warmup, then a
torch.profiler pass over --profile steps: GPU busy time per step and the top operators.

    python bench/bench_training_profile.py --work /tmp/bench --out DIR
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent)]


_BEFORE = {}


def _before_core():
    """The attention core before 2026-12-02: eager rotary and sink, compiled flex_attention."""
    if "core" in _BEFORE:
        return _BEFORE["core"]
    import torch
    from torch.nn.attention import flex_attention as flex
    from transformers.models.gpt_oss import modeling_gpt_oss

    compiled = torch.compile(flex.flex_attention)

    def core(query, key, value, cos, sin, sinks, mask, scale):
        query, key = modeling_gpt_oss.apply_rotary_pos_emb(query, key, cos, sin)
        key, value = key.to(query.dtype), value.to(query.dtype)
        output, aux = compiled(query, key, value, block_mask=mask, scale=scale,
                               enable_gqa=query.shape[1] != key.shape[1],
                               return_aux=flex.AuxRequest(lse=True))
        keep = torch.sigmoid(aux.lse.float() - sinks.float().view(1, -1, 1))
        return (output * keep.unsqueeze(-1).to(output.dtype)).transpose(1, 2)
    _BEFORE["core"] = lambda cuda: core
    return _BEFORE["core"]


def _batches(rows: list[dict], pad: int, packed: bool, count: int) -> list[dict]:
    from bench_training_engines import _collate

    from runner.train.packing import PackedCollator

    collate = PackedCollator(pad) if packed else (lambda group: _collate(group, pad))
    out = []
    for step in range(count):
        batch = collate(rows[8 * step:8 * step + 8])
        out.append({k: v.to("cuda") for k, v in batch.items()})
    return out


def _loop(model, optimizer, params, batches: list[dict]) -> list[float]:
    import torch
    times = []
    for batch in batches:
        start = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()
        times.append(time.perf_counter() - start)
    return times


def _profile(model, optimizer, params, batches: list[dict], top: int) -> dict:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        _loop(model, optimizer, params, batches)
    averages = prof.key_averages()
    steps = len(batches)

    def device(event):
        return (getattr(event, "self_device_time_total", 0) or 0) / 1000 / steps
    kernels = [e for e in averages if str(e.device_type).endswith("CUDA")]
    operators = [e for e in averages if not str(e.device_type).endswith("CUDA")]

    def listed(events, measure):
        return [(e.key[:90], round(measure(e), 2), e.count // steps)
                for e in sorted(events, key=measure, reverse=True)[:top]]
    return {"gpu_busy_ms_per_step": sum(device(e) for e in kernels),
            "top_kernels": listed(kernels, device),
            "top_ops_gpu": listed(operators, lambda e: (getattr(e, "device_time_total", 0) or 0)
                                  / 1000 / steps),
            "top_ops_cpu": listed(operators, lambda e: e.self_cpu_time_total / 1000 / steps)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--profile", type=int, default=3)
    parser.add_argument("--top", type=int, default=18)
    parser.add_argument("--variants", default="padded-8x1,packed-causal,packed-before,"
                                               "packed-masks,packed")
    args = parser.parse_args(argv)
    from bench_training import prepare, spec

    run = spec("runner-packed")
    prepare(run, args.work)
    args.out.mkdir(parents=True, exist_ok=True)
    results = run_variants(args, run)
    for name, result in results.items():
        if isinstance(result, dict) and "step_ms" in result:
            print(f"{name:14} {result['step_ms']:7.1f} ms/step  gpu busy "
                  f"{result['gpu_busy_ms_per_step']:6.1f} ms  {result['tokens_per_s']:8,.0f} tok/s")
    print(json.dumps(results.get("attention")))
    return 0


def run_variants(args, run: dict) -> dict:
    import os
    os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")
    from unsloth import FastLanguageModel  # noqa: I001  (before transformers)
    import bitsandbytes as bnb
    import torch
    from bench_training import ALPHA, ATTN_MLP, LR, data_dir
    from bench_training_attention import attention_timings

    from runner.train import packed_attention as pa

    model, tokenizer = FastLanguageModel.from_pretrained(
        str(args.work / "models" / run["model"]), max_seq_length=run["seq"], dtype=None,
        load_in_4bit=False)
    model = FastLanguageModel.get_peft_model(
        model, r=run["r"], lora_alpha=ALPHA, lora_dropout=0, target_modules=ATTN_MLP,
        bias="none", use_gradient_checkpointing="unsloth", random_state=3407)
    FastLanguageModel.for_training(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = bnb.optim.AdamW8bit(params, lr=LR, weight_decay=0.01)
    rows = json.loads((data_dir(run, args.work) / "tokens.json").read_text())
    count = args.warmup + args.steps + args.profile
    pad = tokenizer.pad_token_id or 0
    new_masks, new_core = pa.block_mask, pa.attention_core
    results = {}
    for name in args.variants.split(","):
        packed = name != "padded-8x1"
        if name in ("packed-before", "packed-masks", "packed"):
            pa.install(model)
            pa.block_mask = pa.reference_block_mask if name == "packed-before" else new_masks
            pa.attention_core = _before_core() if name in ("packed-before", "packed-masks") \
                else new_core
        batches = _batches(rows, pad, packed, count)
        tokens = [int(b["input_ids"].numel()) for b in batches]
        start = time.time()
        try:
            _loop(model, optimizer, params, batches[:args.warmup])
            warm = time.time() - start
            times = _loop(model, optimizer, params, batches[args.warmup:args.warmup + args.steps])
            profiled = _profile(model, optimizer, params, batches[args.warmup + args.steps:],
                                args.top)
        except Exception as error:  # noqa: BLE001 - recorded, the other variants still run
            results[name] = {"error": f"{type(error).__name__}: {error}"[:800]}
            continue
        real_tokens = [_real_tokens(b, packed) for b in batches]
        timed = slice(args.warmup, args.warmup + args.steps)
        results[name] = {"step_ms": 1000 * sum(times) / len(times),
                         "step_ms_each": [round(1000 * t, 1) for t in times],
                         "tokens_per_s": sum(real_tokens[timed]) / sum(times),
                         "computed_tokens_per_step": sum(tokens[timed]) / args.steps,
                         "warmup_s": round(warm, 1), **profiled}
        print(name, json.dumps({k: v for k, v in results[name].items()
                                if not k.startswith("top_")}), flush=True)
        # Written after every variant: each one's warm-up compiles for 40-90 s on an H200, and
        # a call stopped at its time limit keeps what was measured.
        (args.out / "training-profile.json").write_text(json.dumps(results, indent=1))
    try:
        results["attention"] = attention_timings()
    except Exception as error:  # noqa: BLE001
        results["attention"] = {"error": f"{type(error).__name__}: {error}"[:800]}
    results["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    (args.out / "training-profile.json").write_text(json.dumps(results, indent=1))
    return results


def _real_tokens(batch: dict, packed: bool) -> int:
    """Tokens of the rows themselves (no padding), as the benchmark counts them; a packed
    sequence's padding after its 8 rows is one more span, never trained."""
    if not packed:
        return int(batch["attention_mask"].sum())
    from runner.train.packing import row_spans
    return sum(b - a for a, b in row_spans(batch["position_ids"][0].tolist())[:8])


if __name__ == "__main__":
    sys.exit(main())
