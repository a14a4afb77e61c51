"""Where a packed GPT-OSS training step's time goes, on a CUDA GPU (the 20B shape, 4 layers).

One Unsloth model per checkpointing setting (as bench_training_engines' bare loop loads it), the
same 8 docs rows per step, a plain loop (forward, backward, clip, AdamW8bit, loss.item()), no
Trainer. Variants:

- padded-8x1:      bare Unsloth's best padded geometry (the reference);
- packed:          runner.train.packed_attention (document BlockMasks, one compiled core),
                   Unsloth's offloaded gradient checkpointing;
- packed-nockpt:   the same without gradient checkpointing (no recomputed forward);
- packed-nockpt-compiled / -graphs: every decoder layer torch.compile'd, in the default mode
                   or "reduce-overhead" (CUDA graphs; each new packed length records a graph);
- runner-<run>:    the registered training step (SFTTrainer) on bench_training's run <run>,
                   profiled from a callback over the same optimizer steps.

For each: milliseconds per optimizer step over --steps steps after --warmup; then a
torch.profiler pass over --profile steps (GPU busy time per step, the top operators by CPU and
GPU time, host syncs and kernel launches per step); then cProfile over the same number of steps
(the Python functions that take the host's time: a step whose GPU idles is bound by them).

    python bench/bench_training_profile.py --work /tmp/bench --out DIR
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent)]


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
        torch.compiler.cudagraph_mark_step_begin()   # a new iteration for CUDA-graph variants
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
    return _torch_summary(prof, len(batches), top)


def _torch_summary(prof, steps: int, top: int) -> dict:
    averages = prof.key_averages()

    def device(event):
        return (getattr(event, "self_device_time_total", 0) or 0) / 1000 / steps
    kernels = [e for e in averages if str(e.device_type).endswith("CUDA")]
    operators = [e for e in averages if not str(e.device_type).endswith("CUDA")]

    def listed(events, measure):
        return [(e.key[:90], round(measure(e), 2), e.count // steps)
                for e in sorted(events, key=measure, reverse=True)[:top]]
    counted = {e.key: e.count / steps for e in averages
               if e.key in ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaMemcpyAsync",
                            "cudaLaunchKernel", "cuLaunchKernel", "cuLaunchKernelEx",
                            "aten::item", "aten::_local_scalar_dense", "aten::nonzero")}
    syncs = {e.key: round(e.self_cpu_time_total / 1000 / steps, 2) for e in averages
             if e.key in ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaMemcpyAsync")}
    return {"gpu_busy_ms_per_step": sum(device(e) for e in kernels),
            "calls_per_step": counted, "sync_wait_ms_per_step": syncs,
            "top_kernels": listed(kernels, device),
            "top_ops_gpu": listed(operators, lambda e: (getattr(e, "device_time_total", 0) or 0)
                                  / 1000 / steps),
            "top_ops_cpu": listed(operators, lambda e: e.self_cpu_time_total / 1000 / steps)}


def _python_profile(model, optimizer, params, batches: list[dict], top: int, dump=None) -> dict:
    """cProfile over a few steps: the Python functions by own time and by cumulative time
    (all of them in `dump`, for pstats)."""
    import cProfile

    profiler = cProfile.Profile()
    profiler.enable()
    _loop(model, optimizer, params, batches)
    profiler.disable()
    if dump:
        profiler.dump_stats(dump)
    return _python_summary(profiler, len(batches), top)


def _python_summary(profiler, steps: int, top: int) -> dict:
    import pstats

    stats = pstats.Stats(profiler)

    def listed(index):   # pstats rows: (calls, primitive calls, own time, cumulative time)
        rows = sorted(stats.stats.items(), key=lambda item: item[1][index], reverse=True)[:top]
        return [(f"{Path(f).name}:{line}:{fn}"[:90], round(1000 * row[index] / steps, 2),
                 row[1] // steps) for (f, line, fn), row in rows]
    return {"py_own_ms": listed(2), "py_cumulative_ms": listed(3),
            "py_callers": _callers(stats, steps)}


# Python-visible calls that read a CUDA tensor back to the host (each waits for the GPU to
# drain), and torch.compile's frame entry (compiled regions and compile-disabled functions).
WATCHED = ("<method 'item' of", "<method 'tolist' of", "<method '__bool__' of",
           "<method '__int__' of", "<method '__index__' of", "<method '__float__' of",
           "<method 'cpu' of", "<built-in method torch.as_tensor>",
           "<built-in method torch.tensor>", "eval_frame.py:_fn")


def _callers(stats, steps: int, top: int = 12) -> dict:
    """{watched function: [(its caller, calls per step)]}: who reads tensors back to the host,
    and who enters compiled or compile-disabled frames."""
    found = {}
    for (path, _line, name), row in stats.stats.items():
        label = f"{Path(path).name}:{name}" if path != "~" else name
        if not label.startswith(WATCHED):
            continue
        callers = sorted(row[4].items(), key=lambda item: -item[1][0])[:top]
        found[label[:60]] = [(f"{Path(f).name}:{ln}:{fn}"[:90], round(c[0] / steps, 1))
                             for (f, ln, fn), c in callers]
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--profile", type=int, default=3)
    parser.add_argument("--top", type=int, default=18)
    parser.add_argument("--trace", action="store_true",
                        help="also write each runner variant's profiled steps as a Chrome trace")
    parser.add_argument("--variants", default="packed,packed-nockpt,padded-8x1")
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
    return 0


# Variant name suffix -> torch.compile mode of every decoder layer.
COMPILE_MODES = {"compiled": "default", "graphs": "reduce-overhead"}


def _load(args, run: dict, checkpointing, compile_mode=None):
    """An Unsloth model with LoRA, as the bare loop loads it, and its optimizer; with
    `compile_mode`, each decoder layer torch.compile'd in that mode ("default",
    "reduce-overhead": CUDA graphs)."""
    from unsloth import FastLanguageModel  # noqa: I001  (before transformers)
    import bitsandbytes as bnb
    from bench_training import ALPHA, ATTN_MLP, LR

    from runner.train import packed_attention

    model, tokenizer = FastLanguageModel.from_pretrained(
        str(args.work / "models" / run["model"]), max_seq_length=run["seq"], dtype=None,
        load_in_4bit=False)
    model = FastLanguageModel.get_peft_model(
        model, r=run["r"], lora_alpha=ALPHA, lora_dropout=0, target_modules=ATTN_MLP,
        bias="none", use_gradient_checkpointing=checkpointing, random_state=3407)
    FastLanguageModel.for_training(model)
    packed_attention.install(model)      # padded batches (with an attention mask) pass through
    if compile_mode:
        for layer in packed_attention.backbone_of(model).layers:
            layer.compile(mode=compile_mode)
    params = [p for p in model.parameters() if p.requires_grad]
    return model, tokenizer, params, bnb.optim.AdamW8bit(params, lr=LR, weight_decay=0.01)


def run_variants(args, run: dict) -> dict:
    import os
    os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")
    import torch
    from bench_training import data_dir

    rows = json.loads((data_dir(run, args.work) / "tokens.json").read_text())
    count = args.warmup + args.steps + 2 * args.profile
    loaded, results = {}, {}
    for name in args.variants.split(","):
        if name.startswith("runner-"):
            results[name] = _profile_runner(args, name)
            print(name, json.dumps({k: v for k, v in results[name].items()
                                    if not k.startswith(("top_", "py_"))}), flush=True)
            (args.out / "training-profile.json").write_text(json.dumps(results, indent=1))
            continue
        checkpointing = False if "-nockpt" in name else "unsloth"
        compile_mode = COMPILE_MODES.get(name.rsplit("-", 1)[-1])
        if (checkpointing, compile_mode) not in loaded:
            loaded[checkpointing, compile_mode] = _load(args, run, checkpointing, compile_mode)
        model, tokenizer, params, optimizer = loaded[checkpointing, compile_mode]
        packed = not name.startswith("padded")
        batches = _batches(rows, tokenizer.pad_token_id or 0, packed, count)
        tokens = [int(b["input_ids"].numel()) for b in batches]
        torch.cuda.reset_peak_memory_stats()
        start = time.time()
        timed = slice(args.warmup, args.warmup + args.steps)
        try:
            _loop(model, optimizer, params, batches[:args.warmup])
            warm = time.time() - start
            times = _loop(model, optimizer, params, batches[timed])
            rest = batches[timed.stop:]
            profiled = _profile(model, optimizer, params, rest[:args.profile], args.top)
            profiled.update(_python_profile(model, optimizer, params, rest[args.profile:],
                                            args.top, args.out / f"{name}.pstats"))
        except Exception as error:  # noqa: BLE001 - recorded, the other variants still run
            results[name] = {"error": f"{type(error).__name__}: {error}"[:800]}
            continue
        real_tokens = [_real_tokens(b, packed) for b in batches]
        results[name] = {"step_ms": 1000 * sum(times) / len(times),
                         "step_ms_each": [round(1000 * t, 1) for t in times],
                         "tokens_per_s": sum(real_tokens[timed]) / sum(times),
                         "computed_tokens_per_step": sum(tokens[timed]) / args.steps,
                         "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
                         "warmup_s": round(warm, 1), "dynamo": _dynamo_counters(), **profiled}
        print(name, json.dumps({k: v for k, v in results[name].items()
                                if not k.startswith(("top_", "py_"))}), flush=True)
        # Written after every variant: a warm-up compiles for 40-90 s on an H200, and a call
        # stopped at its time limit keeps what was measured.
        (args.out / "training-profile.json").write_text(json.dumps(results, indent=1))
    return results


def _profile_runner(args, name: str) -> dict:
    """The registered training step (SFTTrainer) on the benchmark's run `name`, profiled over
    optimizer steps --warmup+1.. as the plain loop is: torch.profiler, then cProfile."""
    import torch
    import transformers
    from bench_training import prepare, run_runner, spec

    run = spec(name)
    prepare(run, args.work)
    first, count = args.warmup + 1, args.profile
    captured: dict = {"step_end": []}

    class StepProfiler(transformers.TrainerCallback):
        def on_step_begin(self, targs, state, control, **kwargs):
            step = state.global_step + 1             # the step about to run
            if step == first:
                captured["torch"] = torch.profiler.profile(activities=[
                    torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA])
                captured["torch"].start()
            elif step == first + count:
                captured["torch"].stop()
                if args.trace:   # the timeline: where the GPU idles and what the host does then
                    captured["torch"].export_chrome_trace(str(args.out / f"{name}.trace.json"))
                import cProfile
                captured["python"] = cProfile.Profile()
                captured["python"].enable()
            elif step == first + 2 * count:
                captured["python"].disable()
                captured["python"].dump_stats(args.out / f"{name}.pstats")

        def on_step_end(self, targs, state, control, **kwargs):
            captured["step_end"].append(time.perf_counter())

    original = transformers.Trainer.train

    def train(self, *positional, **keywords):
        self.add_callback(StepProfiler())
        return original(self, *positional, **keywords)
    transformers.Trainer.train = train
    try:
        result = run_runner(run, args.work)
    finally:
        transformers.Trainer.train = original
    ends = captured["step_end"]
    timed = [b - a for a, b in zip(ends[1:first], ends[2:first + 1], strict=False)]
    return {"tokens_per_s": result["tokens_per_s"], "step_s": result["step_s"],
            "peak_gib": result["peak_gib"],
            "step_ms": 1000 * sum(timed) / max(1, len(timed)), "dynamo": _dynamo_counters(),
            **_torch_summary(captured["torch"], count, args.top),
            **_python_summary(captured["python"], count, args.top)}


def _dynamo_counters() -> dict:
    """torch.compile's counters so far (frames compiled, recompiles, graph breaks): a step that
    recompiles or falls back to eager shows here."""
    from torch._dynamo.utils import counters
    keep = ("stats", "graph_break", "recompiles", "frames", "inductor")
    return {group: dict(sorted(counts.items(), key=lambda kv: -kv[1])[:8])
            for group, counts in counters.items() if group in keep}


def _real_tokens(batch: dict, packed: bool) -> int:
    """Tokens of the rows themselves (no padding), as the benchmark counts them; a packed
    sequence's padding after its 8 rows is one more span, never trained."""
    if not packed:
        return int(batch["attention_mask"].sum())
    from runner.train.packing import row_spans
    return sum(b - a for a, b in row_spans(batch["position_ids"][0].tolist())[:8])


if __name__ == "__main__":
    sys.exit(main())
