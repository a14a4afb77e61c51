"""Training throughput, peak memory and the memory plan, on one GPU, same rows and LoRA:

- runner:   `recipe run`'s training step (backend unsloth), called as the executor calls it,
            padded (the hand-run geometry, 2 rows x grad-accum 4) or packed (the same 8 rows per
            optimizer step in one sequence with document masks);
- bare:     a hand-written Unsloth loop (forward, backward, clip, AdamW8bit), no Trainer, padded;
- baseline: transformers + PEFT + TRL SFTTrainer (eager attention, gradient checkpointing);
            these two live in bench_training_engines.py.

Model: random-init GPT-OSS-20B with 4 layers (and all 24 for the hand-run memory check), built
by runner.tiny_model on the GPU. Rows: `docs` (the offline Python-docs length distribution) or
`full` (2,048-token rows, the throughput ceiling); see bench_training_data.py. Every engine runs
in its own process (Unsloth imported first), the bare runs one after another on one loaded model
per checkpointing setting, the runner runs one after another in one process (one import and
one warm compiler cache: the whole set fits in one 600 s device call); reference runs (not
compared by a target) go last, when the time budget still allows; runner runs keep
the recipe default use_gradient_checkpointing "auto" (decided from the memory plan) unless a
run sets `checkpointing`; tokens/s counts real
(non-padding) tokens over optimizer steps SKIP..STEPS; peak is torch's peak allocation from the
start of training, weights included; the plan is runner.train.memory_plan's estimate.

    python bench/bench_training.py all --work /tmp/bench --out DIR        (the GPU session)
    python bench/bench_training.py all --runs runner-padded,runner-packed,baseline-2x4 --tiny
                                                                          (CPU check, tiny model)
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

STEPS, SKIP, LR = 30, 10, 2e-4
ATTN = ["q_proj", "k_proj", "v_proj", "o_proj"]
ATTN_MLP = ATTN + ["gate_proj", "up_proj", "down_proj"]
EXPERTS = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]
MODELS = {"gpt-oss-20b-4l": ("gpt-oss-20b", {"num_hidden_layers": 4}),
          "gpt-oss-20b-24l": ("gpt-oss-20b", {}),
          "tiny": (None, {})}
DATA = {"docs": 512, "full": 2048}            # sequence length of each kind of rows
BASE = dict(model="gpt-oss-20b-4l", r=16, load_in_4bit=False, steps=STEPS, skip=SKIP)
ALPHA = 16                                    # the hand-run notebook's lora_alpha
RUNS = {
    "bare-2x4": dict(engine="bare", data="docs", micro=2, accum=4),
    "bare-8x1": dict(engine="bare", data="docs", micro=8, accum=1),
    "bare-full": dict(engine="bare", data="full", micro=4, accum=1),
    # Bare Unsloth's best padded geometry without checkpointing (what runner-packed's "auto"
    # decides on this card), so the speed-up from packing alone shows.
    "bare-8x1-nockpt": dict(engine="bare", data="docs", micro=8, accum=1, checkpointing=False,
                            reference=True),
    # Runner runs keep the recipe default, use_gradient_checkpointing "auto" (off where the
    # memory plan says the step fits without it), unless they say otherwise.
    "runner-packed": dict(engine="runner", data="docs", micro=8, accum=1, packing=True),
    "runner-packed-ckpt": dict(engine="runner", data="docs", micro=8, accum=1, packing=True,
                               checkpointing="unsloth"),
    # runner-packed with the backend's own MoE forward (Unsloth's expert path), for the
    # grouped forward's share of the speed-up.
    "runner-packed-library": dict(engine="runner", data="docs", micro=8, accum=1, packing=True,
                                  moe_forward="library", reference=True),
    # runner-packed with its decoder layers compiled (training.compile_layers on), for the
    # whole-layer compile's share.
    "runner-packed-compiled": dict(engine="runner", data="docs", micro=8, accum=1, packing=True,
                                   compile_layers="on", reference=True),
    # runner-packed logging every 10th step: what the per-step log's host sync costs.
    "runner-packed-log10": dict(engine="runner", data="docs", micro=8, accum=1, packing=True,
                                logging_steps=10, reference=True),
    # runner-packed with the LM head on every position (the model's own fused loss), for the
    # share of running it on the trained positions only.
    "runner-packed-allhead": dict(engine="runner", data="docs", micro=8, accum=1, packing=True,
                                  lm_head_positions="all", reference=True),
    "runner-padded": dict(engine="runner", data="docs", micro=2, accum=4),
    "runner-full": dict(engine="runner", data="full", micro=4, accum=1),
    "baseline-2x4": dict(engine="baseline", data="docs", micro=2, accum=4),
    # The hand-run notebook's settings on the whole 24-layer model: memory, a few steps.
    "runner-handrun-24l": dict(engine="runner", data="docs", micro=2, accum=4, r=8,
                               model="gpt-oss-20b-24l", load_in_4bit=True, seq=1024, steps=6,
                               skip=2),
}
# In the order they run (engines bare, runner, baseline, then reference runs): the runs the
# targets compare first.
DEFAULT_RUNS = "bare-2x4,bare-8x1,bare-full,runner-packed,runner-full,runner-padded,baseline-2x4"


def spec(name: str, tiny: bool = False) -> dict:
    run = {**BASE, "packing": False, **RUNS[name], "name": name}
    run.setdefault("seq", DATA[run["data"]])
    if tiny:
        run.update(model="tiny", steps=6, skip=2, seq=min(run["seq"], 256))
    return run


def _cuda() -> bool:
    import torch
    return torch.cuda.is_available()


def prepare(run: dict, work: Path) -> None:
    from bench_training_data import build_model, docs_lengths, write_rows

    preset, shape = MODELS[run["model"]]
    build_model(work / "models" / run["model"], "gpt_oss", preset, shape,
                "cuda" if _cuda() else "cpu")
    count = 8 * run["steps"] if run["data"] == "docs" else run["micro"] * run["accum"] * run["steps"]
    lengths = (docs_lengths(count, run["seq"]) if run["data"] == "docs" else [run["seq"]] * count)
    write_rows(work / "models" / run["model"], data_dir(run, work), lengths)


def data_dir(run: dict, work: Path) -> Path:
    return work / "data" / f"{run['data']}-{run['seq']}-{run['steps']}"


def _section(section_name: str, **values) -> dict:
    from runner.validate import fill_defaults, schema
    return fill_defaults(dict(values), schema()["$defs"][section_name], top=False)


def recipe_sections(run: dict, work: Path, backend: str) -> dict:
    """The model / lora / training sections a recipe for this run would have."""
    model = _section("model", name=str(work / "models" / run["model"]), max_seq_length=run["seq"],
                     load_in_4bit=run["load_in_4bit"])
    lora = _section("lora", r=run["r"], alpha=ALPHA, target_modules=ATTN_MLP,
                    use_gradient_checkpointing=run.get("checkpointing", "auto"))
    training = _section("training", backend=backend, per_device_train_batch_size=run["micro"],
                        gradient_accumulation_steps=run["accum"], max_steps=run["steps"],
                        learning_rate=LR, save_steps=run["steps"], warmup_steps=2,
                        packing=run["packing"], moe_forward=run.get("moe_forward", "auto"),
                        compile_layers=run.get("compile_layers", "off"),
                        logging_steps=run.get("logging_steps", 1),
                        lm_head_positions=run.get("lm_head_positions", "trained"))
    return {"model": model, "lora": lora, "training": training}


# --- engines -------------------------------------------------------------------------------

def run_runner(run: dict, work: Path) -> dict:
    import shutil

    from runner.registry import StepContext, registered
    from runner.train.train_metrics import read_metrics

    backend = "unsloth" if _cuda() else "hf"
    sections = recipe_sections(run, work, backend)
    folder = work / "runner" / run["name"]
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "out").mkdir(parents=True)
    ctx = StepContext(recipe_name="bench", step="training", key="bench" * 4,
                      settings=sections["training"],
                      sections={"model": sections["model"], "lora": sections["lora"],
                                "chat_template": _section("chat_template")},
                      inputs={"chat_template": data_dir(run, work) / "chat_template"},
                      out_dir=folder / "out", run_dir=folder, cache_dir=folder / "cache",
                      recipe_dir=folder, quiet=True)
    registered()[("training", backend)].func(ctx)
    summary = json.loads((folder / "out" / "summary.json").read_text())
    rows = [r for r in read_metrics(folder / "out" / "metrics.jsonl") if "loss" in r]
    contract = summary["contract"]
    # Cumulative peak after each logged step: when the run reached its peak (the first step
    # holds the contract's checks).
    peaks = [r.get("peak_gpu_allocated_gib") for r in rows]
    return {"tokens_per_s": _rate(rows, "tokens_seen", "elapsed_s", run),
            "peak_by_step": peaks[:3] + peaks[-1:],
            "step_s": [round(b["elapsed_s"] - a["elapsed_s"], 4) for a, b in zip(rows, rows[1:], strict=False)],
            "peak_gib": summary.get("peak_gpu_allocated_gib", summary.get("peak_rss_gib")),
            "reserved_gib": summary.get("peak_gpu_reserved_gib"),
            "trainable": summary["trainable_params"], "final_loss": summary["final_loss"],
            "checkpointing": summary["gradient_checkpointing"],
            "micro_tokens": contract.get("largest_micro_batch_tokens"),
            "moe": summary.get("moe"), "compile_layers": summary.get("compile_layers"),
            "logging": summary.get("logging"),
            "contract": {k: contract.get(k) for k in ("packing", "loss_check", "loss",
                                                      "router_aux_loss_coef", "targets")}}


def _rate(rows: list[dict], tokens_key: str, time_key: str, run: dict) -> float:
    first = next(r for r in rows if r["step"] == run["skip"])
    last = next(r for r in rows if r["step"] == run["steps"])
    return (last[tokens_key] - first[tokens_key]) / (last[time_key] - first[time_key])


def run_group(engine: str, runs: list[dict], work: Path) -> dict:
    from bench_training_engines import run_bare_group, run_baseline

    if engine == "bare":
        return run_bare_group(runs, work)
    import gc

    function = run_runner if engine == "runner" else run_baseline
    results = {}
    for run in runs:
        held = _held_gib()
        result = results[run["name"]] = function(run, work)
        # Runs after the first in one process start with what the earlier ones left allocated
        # (compiled graphs and caches that keep tensors alive): torch's peak counts it, this
        # run did not allocate it.
        if held and result.get("peak_gib") is not None:
            result.update(peak_gib=round(result["peak_gib"] - held, 3), held_before_gib=held)
        gc.collect()
        if _cuda():
            import torch
            torch.cuda.empty_cache()
    return results


def _held_gib() -> float:
    """GiB torch has allocated on the GPU now (0 without one)."""
    if not _cuda():
        return 0.0
    import torch
    return round(torch.cuda.memory_allocated() / 2**30, 3)


# --- driver --------------------------------------------------------------------------------

def schedule(runs: list[dict]) -> list[tuple[str, list[str]]]:
    """(engine, run names) per process, in order: the compared runs engine by engine (bare,
    runner, baseline), then the reference runs the same way."""
    order = []
    for reference in (False, True):
        for engine in ("bare", "runner", "baseline"):
            names = [run["name"] for run in runs
                     if run["engine"] == engine and bool(run.get("reference")) == reference]
            if names:
                order.append((engine, names))
    return order


def run_engine_process(engine: str, names: list[str], args, log_dir: Path) -> dict:
    """One engine's runs in a fresh process: clean memory statistics, Unsloth imported first."""
    result = args.work / f"{engine}.json"
    result.unlink(missing_ok=True)
    if args.deadline - time.time() < 45:   # an engine's start alone takes longer
        print(f"{engine} {names}: not started, the time budget is spent", flush=True)
        return {name: {"error": "not run: the call's time budget was spent"} for name in names}
    command = [sys.executable, __file__, "engine", "--engine", engine, "--runs", ",".join(names),
               "--work", str(args.work)] + (["--tiny"] if args.tiny else [])
    log = log_dir / f"engine-{engine}-{names[0]}.log"
    start = time.time()
    with open(log, "w") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT)
        try:
            code = process.wait(timeout=max(30.0, args.deadline - start))
        except subprocess.TimeoutExpired:
            process.kill()
            code = "killed at the time budget"
    print(f"{engine} {names}: exit {code} in {time.time() - start:.0f}s", flush=True)
    done = json.loads(result.read_text()) if result.is_file() else {}
    if code != 0:
        print(log.read_text()[-3000:], flush=True)
    return {name: done.get(name, {"error": f"exit {code}, see {log.name}"}) for name in names}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["all", "engine", "prepare"])
    parser.add_argument("--runs", default=DEFAULT_RUNS)
    parser.add_argument("--engine", choices=["runner", "bare", "baseline"])
    parser.add_argument("--tiny", action="store_true", help="the tiny model, a few steps (CPU)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench-training"))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--name", default="training", help="results file stem")
    parser.add_argument("--budget", type=float, default=3600,
                        help="seconds for everything; an engine still running then is stopped")
    args = parser.parse_args(argv)
    args.deadline = time.time() + args.budget
    args.work.mkdir(parents=True, exist_ok=True)
    runs = [spec(name, args.tiny) for name in args.runs.split(",")]
    if args.command == "engine":
        groups = [runs] if args.engine == "bare" else [[run] for run in runs]
        results = {}
        for group in groups:        # one run failing leaves the others' results
            began = time.time()
            try:
                results.update(run_group(args.engine, group, args.work))
                print(f"[bench] {[run['name'] for run in group]}: {time.time() - began:.0f}s",
                      flush=True)
            except Exception as error:  # noqa: BLE001 - recorded per run in the results
                import traceback
                traceback.print_exc()
                results.update({run["name"]: {"error": f"{type(error).__name__}: {error}"[:600]}
                                for run in group})
            (args.work / f"{args.engine}.json").write_text(json.dumps(results))
        return 0
    from bench_training_report import write_report

    args.out.mkdir(parents=True, exist_ok=True)
    for run in runs:
        prepare(run, args.work)
    if args.command == "prepare":
        return 0
    results = {}
    for engine, names in schedule(runs):
        results.update(run_engine_process(engine, names, args, args.out))
    for run in runs:
        results[run["name"]]["spec"] = run
    print(write_report(results, args.out, args.work, args.name), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
