"""The markdown report of bench_training.py: tokens/s, ratios, MFU, peak memory against the memory
plan, the packing and contract checks, with the card. Also rebuilds training.md from saved
results files (`python bench/bench_training_report.py RESULTS.json [MORE.json] --out DIR`).

MFU = tokens/s x training FLOPs per token / the card's dense bf16 peak. Training FLOPs per token
= 3 x forward (forward + backward), forward = 2 x the weights each token multiplies (attention,
the active experts, the LM head; not the embedding lookup) + attention scores and values
(4 x heads x head_dim x the average causal context: half the row, or the sliding window). A
LoRA backward skips the frozen weights' gradients and checkpointing recomputes the forward; this
is the usual model-FLOPs convention, not the executed FLOPs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from importlib import metadata
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent)]

# Dense bf16 tensor-core peak (FLOP/s) by card name, for MFU.
PEAKS = [("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989.4e12), ("H200", 989.4e12),
         ("A100", 312e12), ("L40S", 362e12)]
TARGETS = [("runner-packed", "bare-2x4", 4.0), ("runner-packed", "bare-8x1", 1.8),
           ("runner-full", "bare-full", 0.97)]
# Not targets: the same comparison with bare Unsloth also without checkpointing.
REFERENCES = [("runner-packed", "bare-8x1-nockpt")]
PLAN_TOLERANCE = 0.15
NOTES = "<!-- notes: kept when the tables above are rebuilt -->"


def flops_per_token(config: dict, row: float) -> float:
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
    window = config.get("sliding_window") or row
    context = sum(min(window, row / 2) if kind == "sliding_attention" else row / 2
                  for kind in kinds)
    return 3 * (2 * weights + 4 * heads * head_dim * context)


def meta(work: Path, runs: list[dict]) -> dict:
    """The card, versions and model configs, saved with the results (the report is rebuilt
    from them)."""
    import torch
    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    total = torch.cuda.get_device_properties(0).total_memory / 2**30 if name != "CPU" else None
    versions = {}
    for package in ("torch", "transformers", "trl", "peft", "unsloth", "bitsandbytes"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    models = {run["model"] for run in runs}
    return {"card": name, "card_gib": total, "date": time.strftime("%Y-%m-%d"),
            "versions": versions,
            "configs": {m: json.loads((work / "models" / m / "config.json").read_text())
                        for m in models},
            "rows": {run["name"]: _row_stats(work, run) for run in runs}}


def _row_stats(work: Path, run: dict) -> dict:
    from bench_training import data_dir
    lengths = [len(r["input_ids"]) for r in json.loads((data_dir(run, work) / "tokens.json").read_text())]
    return {"mean": sum(lengths) / len(lengths), "max": max(lengths), "count": len(lengths)}


def planned_gib(result: dict, run: dict, config: dict) -> float | None:
    from bench_training import recipe_sections

    from runner.train.memory_plan import estimate

    if not result.get("micro_tokens"):
        return None
    backend = "hf" if run["engine"] == "baseline" else "unsloth"
    sections = recipe_sections(run, Path("/models"), backend)
    if backend == "hf":
        sections["lora"]["use_gradient_checkpointing"] = True
    if "checkpointing" in result:        # what the run's "auto" decided (its summary.json)
        sections["lora"]["use_gradient_checkpointing"] = result["checkpointing"]
    tokens = result["micro_tokens"]
    return estimate(config, sections["model"], sections["lora"], sections["training"],
                    backend=backend, tokens=tokens, longest_row=tokens // run["micro"]).gib()


def _peak(card: str) -> float | None:
    return next((peak for key, peak in PEAKS if key in card), None)


def _table(results: dict, info: dict, names: list[str], bases: list[str]) -> list[str]:
    head = ("| run | geometry (rows x accum) | checkpointing | tokens/s | "
            + "".join(f"vs {b} | " for b in bases)
            + "MFU | peak GiB | plan GiB | plan / peak | trainable |")
    lines = [head, "|" + " --- |" * (9 + len(bases))]
    for name in names:
        result, run = results[name], results[name]["spec"]
        geometry = f"{run['micro']} x {run['accum']}" + (" packed" if run["packing"] else "")
        geometry += f" | {_checkpointing(result, run)}"
        if "error" in result:
            lines.append(f"| {name} | {geometry} | failed: {result['error'][:160]} |"
                         + " |" * (6 + len(bases)))
            continue
        rate, config = result["tokens_per_s"], info["configs"][run["model"]]
        ratios = [f"{rate / results[b]['tokens_per_s']:.2f}x" if "tokens_per_s" in results.get(b, {})
                  else "" for b in bases]
        peak = _peak(info["card"])
        mfu = rate * flops_per_token(config, info["rows"][name]["mean"]) / peak if peak else None
        plan = planned_gib(result, run, config)
        lines.append(f"| {name} | {geometry} | {rate:,.0f} | " + "".join(f"{r} | " for r in ratios)
                     + (f"{100 * mfu:.1f}%" if mfu else "n/a") + f" | {result['peak_gib']:.2f} | "
                     + (f"{plan:.2f} | {plan / result['peak_gib']:.2f}" if plan else "n/a | n/a")
                     + f" | {result['trainable'] / 1e6:.1f} M |")
    return lines


def _checkpointing(result: dict, run: dict) -> str:
    """The gradient checkpointing a run trained with (a runner run's "auto" as decided)."""
    if run["engine"] == "baseline":
        return "transformers"
    auto = run["engine"] == "runner" and "checkpointing" not in run
    if auto and "error" in result:
        return "auto"                       # the run did not get to decide
    # A runner result without the field predates "auto": it trained with the old default.
    value = result.get("checkpointing", run.get("checkpointing", "unsloth"))
    decided = " (auto)" if auto and "checkpointing" in result else ""
    return {False: "off", True: "transformers", "unsloth": "unsloth"}.get(value, str(value)) + decided


def _checks(results: dict, info: dict) -> list[str]:
    lines = []
    for run, base, goal in TARGETS:
        a, b = results.get(run, {}), results.get(base, {})
        if "tokens_per_s" in a and "tokens_per_s" in b:
            ratio = a["tokens_per_s"] / b["tokens_per_s"]
            verdict = "met" if ratio >= goal else f"NOT met ({100 * (ratio / goal - 1):+.0f}%)"
            lines.append(f"- {run} vs {base}: {ratio:.2f}x (target >= {goal:g}x): {verdict}")
    for run, base in REFERENCES:
        a, b = results.get(run, {}), results.get(base, {})
        if "tokens_per_s" in a and "tokens_per_s" in b:
            lines.append(f"- for reference, {run} vs {base}: "
                         f"{a['tokens_per_s'] / b['tokens_per_s']:.2f}x")
    plans = []
    for name, result in results.items():
        if "peak_gib" in result and result.get("micro_tokens"):
            plan = planned_gib(result, result["spec"], info["configs"][result["spec"]["model"]])
            plans.append((name, plan / result["peak_gib"] - 1))
    if plans:
        worst = max(plans, key=lambda item: abs(item[1]))
        verdict = "met" if abs(worst[1]) <= PLAN_TOLERANCE else "NOT met"
        lines.append(f"- memory plan within 15% of the measured peak: worst {worst[0]} "
                     f"{100 * worst[1]:+.1f}%: {verdict}")
    packing = (results.get("runner-packed", {}).get("contract") or {}).get("packing")
    if packing:
        lines.append(f"- bf16 packed vs unpacked (the training step's check on its first rows, "
                     f"{packing['kernel']} kernel): max per-row loss difference "
                     f"{packing['max_relative_difference']:.1e} relative")
    return lines


def render(results: dict, info: dict) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items())
    card = info["card"] + (f" ({info['card_gib']:.1f} GiB)" if info.get("card_gib") else "")
    lines = [f"# Training benchmark: {card}", "",
             f"Measured {info['date']} with `bench/bench_training.py` "
             f"(`bash bench/gpu_session.sh bench`), every run of a table in one device call on "
             f"that card; {versions}.", "",
             "LoRA alpha 16, dropout 0, bf16, AdamW 8-bit, lr 2e-4; gradient checkpointing as "
             "the column says: unsloth = Unsloth's offloaded checkpointing, the hand-run "
             "workflow's; (auto) = the runner's default, decided from the memory plan "
             "(baseline: transformers' checkpointing, eager attention). tokens/s "
             "counts real (non-padding) tokens over the measured optimizer steps; peak = torch's "
             "peak allocated GPU memory from the start of training, weights included (a runner "
             "run after the first in its process: less what the earlier runs left allocated, "
             "`held_before_gib` in the results); plan = "
             "`runner.train.memory_plan`'s estimate for the run's largest micro-batch.", ""]
    docs = [n for n in results if results[n].get("spec", {}).get("data") == "docs"
            and not results[n]["spec"]["model"].endswith("24l")]
    full = [n for n in results if results[n].get("spec", {}).get("data") == "full"]
    hand = [n for n in results if results[n].get("spec", {}).get("model", "").endswith("24l")]
    if docs:
        rows = info["rows"][docs[0]]
        lines += ["## GPT-OSS-20B shape, 4 layers, real-length rows: 8 rows per optimizer step",
                  "", f"Rows: {rows['count']}, mean {rows['mean']:.0f} tokens, max {rows['max']} "
                  "(the offline Python-docs length distribution, bench_training_data.py).", ""]
        lines += _table(results, info, docs, ["bare-2x4", "bare-8x1"]) + [""]
    if full:
        lines += ["## Same model, full 2,048-token rows (the throughput ceiling)", ""]
        lines += _table(results, info, full, ["bare-full"]) + [""]
    if hand:
        lines += ["## The hand-run workflow's settings on the full 24-layer GPT-OSS-20B shape",
                  "", "4-bit loading (Unsloth quantizes the experts too), r 8, the seven "
                  "projection names, 2 rows x grad-accum 4, max_seq_length 1024, a few steps "
                  "(memory, not speed).", ""]
        lines += _table(results, info, hand, []) + [""]
    return "\n".join(lines + ["## Targets", ""] + _checks(results, info)) + "\n"


def write_report(results: dict, out: Path, work: Path, name: str) -> str:
    runs = [r["spec"] for r in results.values() if "spec" in r]
    info = meta(work, runs)
    (out / f"{name}-results.json").write_text(json.dumps({**results, "_meta": info}, indent=1))
    text = render(results, info)
    (out / f"{name}.md").write_text(text)
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="rebuild training.md from results files")
    parser.add_argument("results", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    results, info = {}, None
    for path in args.results:
        data = json.loads(path.read_text())
        part = data.pop("_meta")
        if info is None:
            info = part
        else:
            info["configs"].update(part["configs"])
            info["rows"].update(part["rows"])
        results.update(data)
    target = args.out / "training.md"
    notes = target.read_text().split(NOTES, 1)[1] if target.is_file() and NOTES in \
        target.read_text() else "\n"
    target.write_text(render(results, info) + "\n" + NOTES + notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
