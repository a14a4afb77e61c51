"""Two-GPU training against one GPU, through `recipe run`'s training step (issue 15):

- DDP with the unsloth backend and with the hf backend, FSDP2 with the hf backend;
- models: random-init GPT-OSS-20B with 4 layers and Llama-3.2-1B, built on the machine
  (runner.tiny_model presets), trained on rows with the offline Python-docs lengths;
- every 2-GPU run has the 1-GPU run's global batch and data order: 1 GPU takes MICRO rows x 2
  accumulation steps, 2 GPUs MICRO rows x 1 step each.

For each run: tokens/s over optimizer steps SKIP..STEPS (every rank's real tokens), torch's peak
allocation on each GPU, and the largest relative loss difference to the 1-GPU run of its backend
at any logged step, against runner.train.distributed_layout.LOSS_PARITY (the tolerance the CPU
tests state; bfloat16 here). Goals: DDP >= 1.85x the 1-GPU tokens/s, per-GPU peak within 10% of
the 1-GPU run, curves within the tolerance. Every run is its own process (the step launches its
ranks itself); results accumulate in WORK/multi-gpu-results.json, so the runs can be split over
several calls, and each call rewrites OUT/multi-gpu.md (table, card, commands) from all of them.

    python bench/bench_multi_gpu.py all --work /tmp/bench-mgpu --out bench/results      (2 GPUs)
    python bench/bench_multi_gpu.py all --models llama-3.2-1b --runs hf-1,hf-ddp2 ...   (a part)
    python bench/bench_multi_gpu.py all --tiny --work /tmp/mgpu --out /tmp/mgpu/out     (CPU check:
        the tiny models, 2 processes over gloo, hf backend only; plumbing, not a measurement)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

STEPS, SKIP, MICRO, SEQ, LR = 30, 10, 4, 1024, 2e-4
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
MODELS = {"gpt-oss-20b-4l": ("gpt_oss", "gpt-oss-20b", {"num_hidden_layers": 4}),
          "llama-3.2-1b": ("llama", "llama-3.2-1b", {}),
          "tiny-gpt-oss": ("gpt_oss", None, {}), "tiny-llama": ("llama", None, {})}
# name -> (backend, processes, strategy); the 1-process run of a backend is its reference.
RUNS = {"hf-1": ("hf", 1, "ddp"), "hf-ddp2": ("hf", 2, "ddp"), "hf-fsdp2": ("hf", 2, "fsdp2"),
        "unsloth-1": ("unsloth", 1, "ddp"), "unsloth-ddp2": ("unsloth", 2, "ddp")}
GOALS = {"ddp_speedup": 1.85, "ddp_peak_ratio": 1.10}


def run_spec(model: str, run: str, tiny: bool) -> dict:
    backend, processes, strategy = RUNS[run]
    spec = {"model": model, "run": run, "backend": backend, "processes": processes,
            "strategy": strategy, "micro": MICRO, "accum": 2 // processes, "steps": STEPS,
            "skip": SKIP, "seq": SEQ, "device": "gpu"}
    if tiny:
        spec.update(steps=8, skip=2, seq=256, device="cpu")
    return spec


def prepare(model: str, spec: dict, work: Path) -> Path:
    import torch
    from bench_training_data import build_model, docs_lengths, write_rows

    family, preset, shape = MODELS[model]
    folder = work / "models" / model
    build_model(folder, family, preset, shape, "cuda" if torch.cuda.is_available() else "cpu")
    data = work / "data" / f"{model}-{spec['seq']}-{spec['steps']}"
    rows = MICRO * 2 * spec["steps"]
    write_rows(folder, data, docs_lengths(rows, spec["seq"]))
    return data


def _section(section_name: str, **values) -> dict:
    from runner.validate import fill_defaults, schema
    return fill_defaults(json.loads(json.dumps(values)), schema()["$defs"][section_name],
                         top=False)


def train_once(spec: dict, work: Path) -> dict:
    """The training step as the executor calls it, then what its artifacts say."""
    import shutil

    from runner.registry import StepContext, registered
    from runner.train.train_metrics import read_metrics

    data = work / "data" / f"{spec['model']}-{spec['seq']}-{spec['steps']}"
    distributed = {"processes": spec["processes"], "strategy": spec["strategy"],
                   "device": spec["device"], "timeout_s": 300}
    training = _section("training", backend=spec["backend"], per_device_train_batch_size=MICRO,
                        gradient_accumulation_steps=spec["accum"], max_steps=spec["steps"],
                        learning_rate=LR, warmup_steps=2, save_steps=spec["steps"],
                        distributed=distributed)
    model = _section("model", name=str(work / "models" / spec["model"]),
                     max_seq_length=spec["seq"], load_in_4bit=False)
    folder = work / "runs" / f"{spec['model']}-{spec['run']}"
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "out").mkdir(parents=True)
    ctx = StepContext(recipe_name="bench", step="training", key="multigpu" * 4, settings=training,
                      sections={"model": model, "lora": _section("lora", r=16, alpha=16,
                                                                  target_modules=TARGETS),
                                "chat_template": _section("chat_template")},
                      inputs={"chat_template": data / "chat_template"}, out_dir=folder / "out",
                      run_dir=folder, cache_dir=folder / "cache", recipe_dir=folder, quiet=True)
    start = time.time()
    registered()[("training", spec["backend"])].func(ctx)
    summary = json.loads((folder / "out" / "summary.json").read_text())
    rows = [r for r in read_metrics(folder / "out" / "metrics.jsonl") if "loss" in r]
    first = next(r for r in rows if r["step"] == spec["skip"])
    last = next(r for r in rows if r["step"] == spec["steps"])
    per_rank = (summary["distributed"] or {}).get("peak_memory_per_rank") or [summary]
    return {"tokens_per_s": (last["tokens_seen"] - first["tokens_seen"])
            / (last["elapsed_s"] - first["elapsed_s"]),
            "peak_gib_per_device": [r.get("peak_gpu_allocated_gib", r.get("peak_rss_gib"))
                                    for r in per_rank],
            "losses": {str(r["step"]): r["loss"] for r in rows}, "wall_s": time.time() - start,
            "device": summary["device"], "bf16": summary["bf16"],
            "global_batch": MICRO * spec["accum"] * spec["processes"],
            "versions": summary["versions"]}


def run_in_process(spec: dict, args) -> dict:
    """One run in a fresh interpreter (clean GPU memory; Unsloth imported before transformers)."""
    log = args.work / "logs" / f"{spec['model']}-{spec['run']}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    result = log.with_suffix(".json")
    result.unlink(missing_ok=True)
    command = [sys.executable, __file__, "one", "--work", str(args.work), "--spec", json.dumps(spec)]
    with open(log, "w") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT)
        try:
            code = process.wait(timeout=max(30.0, args.deadline - time.time()))
        except subprocess.TimeoutExpired:
            process.kill()
            code = "stopped at the time budget"
    print(f"{spec['model']} {spec['run']}: exit {code}", flush=True)
    if result.is_file():
        return json.loads(result.read_text())
    return {"error": f"exit {code}: " + " / ".join(log.read_text().splitlines()[-3:])[-400:]}


def compare(results: dict) -> dict:
    """Speed-up, per-GPU peak ratio and loss parity of each 2-GPU run against its 1-GPU run."""
    from runner.train.distributed_layout import LOSS_PARITY

    for key, result in results.items():
        model, run = key.split("/")
        backend, processes, strategy = RUNS[run]
        reference = results.get(f"{model}/{backend}-1")
        if processes == 1 or "error" in result or not reference or "error" in reference:
            continue
        want, got = reference["losses"], result["losses"]
        worst = max(abs(got[s] - want[s]) / abs(want[s]) for s in want if s in got)
        tolerance = LOSS_PARITY["bfloat16" if result["bf16"] else "float32"]
        ratio = max(result["peak_gib_per_device"]) / max(reference["peak_gib_per_device"])
        result.update(speedup=result["tokens_per_s"] / reference["tokens_per_s"],
                      peak_ratio=ratio, loss_difference=worst, loss_tolerance=tolerance,
                      same_steps=sorted(got) == sorted(want))
        checks = {"loss": worst <= tolerance and result["same_steps"]}
        if strategy == "ddp":
            checks.update(speedup=result["speedup"] >= GOALS["ddp_speedup"],
                          peak=ratio <= GOALS["ddp_peak_ratio"])
        result["goals_met"] = checks
    return results


def card() -> str:
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                               "--format=csv"], capture_output=True, text=True,
                              timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "no nvidia-smi (CPU)"


def write_report(results: dict, out: Path, argv: list[str]) -> Path:
    shape = next((r["spec"] for r in results.values()), run_spec("", "hf-1", False))
    steps, skip, seq = shape["steps"], shape["skip"], shape["seq"]
    lines = ["# Two GPUs against one: `recipe run`'s training step (DDP, FSDP2)", "",
             f"Machine: {card()}", "", f"Command: `python bench/bench_multi_gpu.py {' '.join(argv)}`",
             "", f"{steps} optimizer steps of {MICRO} rows x 2 accumulation steps (1 GPU) or x 2 "
             f"GPUs, rows of up to {seq} tokens (Python-docs lengths); tokens/s over steps "
             f"{skip}..{steps}; peak: torch's peak allocation per GPU. Goals: DDP >= "
             f"{GOALS['ddp_speedup']}x, per-GPU peak <= {GOALS['ddp_peak_ratio']:.2f}x of 1 GPU, "
             "every logged loss within the stated tolerance of the 1-GPU run.", "",
             "| model | run | tokens/s | speed-up | peak GiB per GPU | peak ratio | max loss diff "
             "(tolerance) | goals |", "|---|---|---:|---:|---|---:|---|---|"]
    for key, r in sorted(results.items()):
        model, run = key.split("/")
        if "error" in r:
            lines.append(f"| {model} | {run} | failed: {r['error'][:200]!r} | | | | | |")
            continue
        peaks = ", ".join(f"{p:.2f}" for p in r["peak_gib_per_device"])
        extra = ([f"{r['speedup']:.2f}x", peaks, f"{r['peak_ratio']:.3f}",
                  f"{r['loss_difference']:.1e} ({r['loss_tolerance']:g})",
                  " ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in r["goals_met"].items())]
                 if "speedup" in r else ["1x (reference)", peaks, "", "", ""])
        lines.append(f"| {model} | {run} | {r['tokens_per_s']:,.0f} | " + " | ".join(extra) + " |")
    versions = next((r["versions"] for r in results.values() if "versions" in r), {})
    lines += ["", f"Versions: {json.dumps(versions)}", ""]
    out.mkdir(parents=True, exist_ok=True)
    path = out / "multi-gpu.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    (out / "multi-gpu.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    return path


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["all", "one"])
    parser.add_argument("--models", default="gpt-oss-20b-4l,llama-3.2-1b")
    parser.add_argument("--runs", default=",".join(RUNS))
    parser.add_argument("--tiny", action="store_true", help="tiny models, CPU processes (check)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench-multi-gpu"))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--budget", type=float, default=540, help="seconds for this call")
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.command == "one":
        spec = json.loads(args.spec)
        result = train_once(spec, args.work)
        (args.work / "logs" / f"{spec['model']}-{spec['run']}.json").write_text(json.dumps(result))
        return 0
    args.deadline = time.time() + args.budget
    models = ["tiny-gpt-oss", "tiny-llama"] if args.tiny else args.models.split(",")
    # On CPU processes only hf with ddp can run (Unsloth and FSDP2 need GPUs).
    runs = [r for r in args.runs.split(",") if not args.tiny or RUNS[r][::2] == ("hf", "ddp")]
    store = args.work / "multi-gpu-results.json"
    results = json.loads(store.read_text()) if store.is_file() else {}
    for model in models:
        for run in runs:
            spec = run_spec(model, run, args.tiny)
            prepare(model, spec, args.work)
            results[f"{model}/{run}"] = {**run_in_process(spec, args), "spec": spec}
            store.write_text(json.dumps(results))
    print(write_report(compare(results), args.out, argv), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
