"""The markdown table of bench_training.py: tokens/s, ratios, peak memory and MFU, with the card.

MFU = tokens/s x training FLOPs per token / the card's dense bf16 peak. Training FLOPs per token
= 3 x forward (forward + backward), forward = 2 x the weights each token multiplies (attention,
the active experts, the LM head; not the embedding lookup) + attention scores and values
(4 x heads x head_dim x the average causal context: seq/2, or the sliding window). A LoRA
backward skips the frozen weights' gradients and checkpointing recomputes the forward; this is
the usual model-FLOPs convention, not the executed FLOPs.
"""

from __future__ import annotations

import json
import time
from importlib import metadata
from pathlib import Path

MEMORY_GOAL = {"gpt_oss": 0.4, "llama": 0.25}   # runner peak / baseline peak (shared/gpu/README)


def flops_per_token(config: dict, seq: int) -> float:
    d, layers = config["hidden_size"], config["num_hidden_layers"]
    heads, kv, head_dim = (config["num_attention_heads"], config["num_key_value_heads"],
                           config.get("head_dim") or d // config["num_attention_heads"])
    attention_weights = 2 * d * heads * head_dim + 2 * d * kv * head_dim
    if config["model_type"] == "gpt_oss":
        mlp = (config["num_experts_per_tok"] * 3 * d * config["intermediate_size"]
               + d * config["num_local_experts"])
    else:
        mlp = 3 * d * config["intermediate_size"]
    weights = layers * (attention_weights + mlp) + config["vocab_size"] * d
    kinds = config.get("layer_types") or ["full_attention"] * layers
    window = config.get("sliding_window") or seq
    context = sum(min(window, seq / 2) if kind == "sliding_attention" else seq / 2
                  for kind in kinds)
    return 3 * (2 * weights + 4 * heads * head_dim * context)


def card() -> tuple[str, float | None]:
    import torch
    if not torch.cuda.is_available():
        return "CPU", None
    name = torch.cuda.get_device_name(0)
    from bench_training import PEAKS
    return name, next((peak for key, peak in PEAKS if key in name), None)


def _versions() -> str:
    found = []
    for name in ("torch", "transformers", "trl", "peft", "unsloth", "bitsandbytes"):
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pass
    return ", ".join(found)


def _row(engine: str, result: dict, base: dict, flops: float, peak: float | None) -> str:
    if "error" in result:
        return f"| {engine} | failed: {result['error']} | | | | | | |"
    rate, mem = result["tokens_per_s"], result["peak_gib"]
    speed = f"{rate / base['tokens_per_s']:.2f}x" if "tokens_per_s" in base else ""
    memory = f"{mem / base['peak_gib']:.2f}x" if "peak_gib" in base else ""
    mfu = f"{100 * rate * flops / peak:.1f}%" if peak else "n/a"
    reserved = f"{result['reserved_gib']:.1f}" if result.get("reserved_gib") else "n/a"
    return (f"| {engine} | {rate:,.0f} | {speed} | {mem:.1f} | {memory} | {reserved} | {mfu} | "
            f"{result['trainable'] / 1e6:.1f} M |")


def _checks(shape_results: dict, family: str) -> list[str]:
    runner, base, bare = (shape_results.get(k, {}) for k in ("runner", "baseline", "bare"))
    if any("tokens_per_s" not in r for r in (runner, base)):
        return ["- targets: not evaluated (an engine failed)"]
    speed = runner["tokens_per_s"] / base["tokens_per_s"]
    memory = runner["peak_gib"] / base["peak_gib"]
    goal = MEMORY_GOAL[family]
    lines = [f"- runner vs baseline tokens/s: {speed:.2f}x (target >= 2x): "
             f"{'met' if speed >= 2 else 'NOT met'}",
             f"- runner peak memory / baseline: {memory:.2f} (target <= {goal:g}): "
             f"{'met' if memory <= goal else 'NOT met'}"]
    if "tokens_per_s" in bare:
        gap = runner["tokens_per_s"] / bare["tokens_per_s"]
        lines.append(f"- runner vs bare Unsloth loop: {gap:.3f}x (target >= 0.95): "
                     f"{'met' if gap >= 0.95 else 'NOT met'}")
    return lines


def write_report(results: dict, out: Path, shapes: dict, steps: int, skip: int, rank: int,
                 work: Path) -> str:
    name, peak = card()
    lines = [f"# Training benchmark: {name}", "",
             f"Measured {time.strftime('%Y-%m-%d')} with `bench/bench_training.py`, all engines "
             "in the same call on the same card; " + _versions() + ".", "",
             f"Every engine trains LoRA r={rank} (alpha {rank}, dropout 0) in bf16 with AdamW 8-bit, "
             f"lr 2e-4, gradient accumulation 1, gradient checkpointing, on the same pre-rendered "
             f"rows; tokens/s counts non-padding tokens over steps {skip}..{steps}. Peak = "
             "torch's peak allocated GPU memory from the start of training (weights included); "
             "reserved = the allocator's peak reservation. MFU: see bench_training_report.py.", ""]
    for shape, shape_results in results.items():
        spec = shapes[shape]
        config = json.loads((work / shape / "model" / "config.json").read_text())
        flops = flops_per_token(config, spec["seq"])
        lines += [f"## {shape}: {config['model_type']}, {config['num_hidden_layers']} layers, "
                  f"seq {spec['seq']} x batch {spec['batch']}", "",
                  "| engine | tokens/s | vs baseline | peak GiB | vs baseline | reserved GiB | MFU "
                  "| trainable |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        base = shape_results.get("baseline", {})
        for engine in ("baseline", "runner", "bare"):
            if engine in shape_results:
                lines.append(_row(engine, shape_results[engine], base, flops, peak))
        lines += [""] + _checks(shape_results, config["model_type"]) + [""]
    text = "\n".join(lines)
    (out / "training.md").write_text(text + "\n")
    return text
