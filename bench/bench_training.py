"""Training throughput and peak memory, on one GPU, same data / shape / sequence length / LoRA:

- runner:   `recipe run`'s training step (backend unsloth), called as the executor calls it;
- baseline: plain transformers + PEFT + TRL SFTTrainer (gradient checkpointing; sdpa, or eager
            for GPT-OSS, which has no SDPA path in transformers);
- bare:     a hand-written Unsloth loop (forward, backward, clip, AdamW8bit), no Trainer.

Shapes: random-init Llama-3.2-1B, and GPT-OSS-20B with 4 layers (built by runner.tiny_model on
the GPU; throughput does not depend on the weights' values). Every engine runs in its own
process; tokens/s is measured over steps SKIP..STEPS (compilation and warm-up excluded), peak
memory is torch's peak allocation from the start of training (weights included).

    python bench/bench_training.py all --shapes llama-1b,gpt-oss-20b-4l --work /tmp/bench --out DIR
    python bench/bench_training.py all --shapes tiny --engines runner,baseline --work /tmp/b  (CPU check)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

STEPS, SKIP, LR, RANK = 30, 10, 2e-4, 16
ATTN_MLP = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
EXPERTS = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]
SHAPES = {
    "llama-1b": dict(family="llama", preset="llama-3.2-1b", set={}, batch=8, seq=2048),
    "gpt-oss-20b-4l": dict(family="gpt_oss", preset="gpt-oss-20b", set={"num_hidden_layers": 4},
                           batch=4, seq=2048),
    "tiny": dict(family="gpt_oss", preset=None, set={}, batch=2, seq=256),
}
# Dense bf16 tensor-core peak (FLOP/s) by card name, for MFU.
PEAKS = [("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989.4e12), ("H200", 989.4e12),
         ("A100", 312e12), ("L40S", 362e12)]


# --- data ----------------------------------------------------------------------------------

def prepare(shape: str, work: Path) -> None:
    """Model folder, dataset.jsonl (as chat_template writes it) and the same rows tokenized."""
    from runner.tiny_model import build_tiny

    spec, folder = SHAPES[shape], work / shape
    device = "cuda" if _cuda() else "cpu"
    if not (folder / "model" / "tiny_model.json").is_file():
        start = time.time()
        build_tiny(folder / "model", spec["family"], preset=spec["preset"], device=device,
                   dtype="bfloat16" if spec["preset"] else "float32", **spec["set"])
        print(f"[{shape}] built model in {time.time() - start:.0f}s", flush=True)
    if not (folder / "tokens.json").is_file():
        _write_rows(folder, spec["seq"], spec["batch"] * STEPS)


def _write_rows(folder: Path, seq: int, count: int) -> None:
    import random

    from transformers import AutoTokenizer

    from runner.chat.loss_mask import response_only_labels, tokenize_row
    from runner.tiny_model import tokenizer_corpus

    tokenizer = AutoTokenizer.from_pretrained(folder / "model")
    chat = _section("chat_template")
    words = " ".join(tokenizer_corpus()[1:]).split()
    rng, rows, tokens = random.Random(0), [], []
    for index in range(count):
        question = f"Question {index}: " + " ".join(rng.choices(words, k=12))
        answer, text, ids = _fit_answer(tokenizer, chat, question, words, rng, seq)
        labels = response_only_labels(ids, tokenizer, chat["instruction_part"], chat["response_part"])
        rows.append({"text": text, "messages": [{"role": "user", "content": question},
                                                {"role": "assistant", "content": answer}],
                     "provenance": {"document_id": "bench"}})
        tokens.append({"input_ids": ids, "labels": labels})
    assert all(ids == tokenize_row(tokenizer, r["text"]) for ids, r in
               zip([t["input_ids"] for t in tokens[:3]], rows[:3], strict=True))
    (folder / "chat_template").mkdir(parents=True, exist_ok=True)
    (folder / "chat_template" / "dataset.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows))
    (folder / "tokens.json").write_text(json.dumps(tokens))


def _fit_answer(tokenizer, chat, question, words, rng, seq):
    """A random answer as long as the rendered row can be within `seq` tokens."""
    from runner.chat.chat_format import render
    from runner.chat.loss_mask import tokenize_row

    def row(answer):
        messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        text = render(messages, tokenizer, tokenizer.chat_template, chat).text
        return answer, text, tokenize_row(tokenizer, text)

    overhead = len(row("")[2])
    pool = " ".join(rng.choices(words, k=seq * 2))
    encoding = tokenizer(pool, add_special_tokens=False, return_offsets_mapping=True)
    cut = encoding["offset_mapping"][max(1, seq - overhead - 1)][0]
    answer = pool[:cut].rsplit(" ", 1)[0]
    while len((best := row(answer))[2]) > seq:   # tokens can merge differently at the edges
        answer = answer.rsplit(" ", 1)[0]
    return best


def _section(section_name: str, **values) -> dict:
    from runner.validate import fill_defaults, schema
    return fill_defaults(dict(values), schema()["$defs"][section_name], top=False)


def _cuda() -> bool:
    import torch
    return torch.cuda.is_available()


# --- engines -------------------------------------------------------------------------------

def run_runner(shape: str, work: Path) -> dict:
    from runner.registry import StepContext, registered
    from runner.train.train_metrics import read_metrics

    spec, folder = SHAPES[shape], work / shape
    backend = "unsloth" if _cuda() else "hf"
    model = _section("model", name=str(folder / "model"), max_seq_length=spec["seq"],
                     load_in_4bit=False)
    training = _section("training", backend=backend, per_device_train_batch_size=spec["batch"],
                        gradient_accumulation_steps=1, max_steps=STEPS, learning_rate=LR,
                        save_steps=STEPS, warmup_steps=5)
    out = folder / "runner-out"
    import shutil
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(folder / "runner-cache", ignore_errors=True)
    out.mkdir(parents=True)
    ctx = StepContext(recipe_name="bench", step="training", key="bench" * 4, settings=training,
                      sections={"model": model, "lora": _section("lora", r=RANK, alpha=RANK,
                                                                 target_modules=ATTN_MLP),
                                "chat_template": _section("chat_template")},
                      inputs={"chat_template": folder / "chat_template"}, out_dir=out,
                      run_dir=folder, cache_dir=folder / "runner-cache", recipe_dir=folder,
                      quiet=True)
    registered()[("training", backend)].func(ctx)
    summary = json.loads((out / "summary.json").read_text())
    rows = [r for r in read_metrics(out / "metrics.jsonl") if "loss" in r]
    return {"tokens_per_s": _rate(rows, "tokens_seen", "elapsed_s"),
            "step_s": [round(b["elapsed_s"] - a["elapsed_s"], 4) for a, b in zip(rows, rows[1:], strict=False)],
            "peak_gib": summary.get("peak_gpu_allocated_gib", summary.get("peak_rss_gib")),
            "reserved_gib": summary.get("peak_gpu_reserved_gib"),
            "trainable": summary["trainable_params"], "final_loss": summary["final_loss"]}


def _rate(rows: list[dict], tokens_key: str, time_key: str) -> float:
    first = next(r for r in rows if r["step"] == SKIP)
    last = next(r for r in rows if r["step"] == STEPS)
    return (last[tokens_key] - first[tokens_key]) / (last[time_key] - first[time_key])


def _timer_callback():
    from transformers import TrainerCallback

    class Timer(TrainerCallback):
        rows: list = []

        def on_train_begin(self, args, state, control, **kwargs):
            import torch
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if "loss" in (logs or {}):
                self.rows.append({"step": state.global_step, "t": time.perf_counter(),
                                  "tokens": state.num_input_tokens_seen, "loss": logs["loss"]})
    return Timer()


def run_baseline(shape: str, work: Path) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    spec, folder, cuda = SHAPES[shape], work / shape, _cuda()
    if not cuda:
        from runner.train.train_hf import install_logprob_fallback
        install_logprob_fallback()
    gpt_oss = spec["family"] == "gpt_oss"
    model = AutoModelForCausalLM.from_pretrained(
        folder / "model", dtype=torch.bfloat16 if cuda else torch.float32,
        attn_implementation="eager" if gpt_oss else "sdpa", device_map="cuda" if cuda else "cpu")
    tokenizer = AutoTokenizer.from_pretrained(folder / "model")
    lora = LoraConfig(r=RANK, lora_alpha=RANK, lora_dropout=0.0, task_type="CAUSAL_LM",
                      target_modules=ATTN_MLP[:4] if gpt_oss else ATTN_MLP,
                      target_parameters=EXPERTS if gpt_oss else None)
    data = Dataset.from_list(json.loads((folder / "tokens.json").read_text()))
    args = SFTConfig(output_dir=str(folder / "baseline-out"), per_device_train_batch_size=spec["batch"],
                     gradient_accumulation_steps=1, max_steps=STEPS, learning_rate=LR,
                     warmup_steps=5, logging_steps=1, save_strategy="no", bf16=cuda,
                     optim="adamw_8bit" if cuda else "adamw_torch", use_cpu=not cuda,
                     gradient_checkpointing=True, max_length=spec["seq"], report_to="none",
                     include_num_input_tokens_seen="non_padding", disable_tqdm=True,
                     router_aux_loss_coef=0.0 if gpt_oss else None, seed=3407)
    timer = _timer_callback()
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                         peft_config=lora, callbacks=[timer])
    trainer.train()
    trainable, _ = trainer.model.get_nb_trainable_parameters()
    return {"tokens_per_s": _rate(timer.rows, "tokens", "t"), **_peaks(),
            "step_s": [round(b["t"] - a["t"], 4) for a, b in zip(timer.rows, timer.rows[1:], strict=False)],
            "trainable": trainable, "final_loss": timer.rows[-1]["loss"]}


def _peaks() -> dict:
    import resource

    import torch
    if torch.cuda.is_available():
        return {"peak_gib": torch.cuda.max_memory_allocated() / 2**30,
                "reserved_gib": torch.cuda.max_memory_reserved() / 2**30}
    return {"peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "reserved_gib": None}


def run_bare(shape: str, work: Path) -> dict:
    os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")
    from unsloth import FastLanguageModel  # noqa: I001  (before transformers)
    import bitsandbytes as bnb
    import torch

    spec, folder = SHAPES[shape], work / shape
    model, tokenizer = FastLanguageModel.from_pretrained(
        str(folder / "model"), max_seq_length=spec["seq"], dtype=None, load_in_4bit=False)
    model = FastLanguageModel.get_peft_model(
        model, r=RANK, lora_alpha=RANK, lora_dropout=0, target_modules=ATTN_MLP, bias="none",
        use_gradient_checkpointing="unsloth", random_state=3407)
    FastLanguageModel.for_training(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = bnb.optim.AdamW8bit(params, lr=LR, weight_decay=0.01)
    rows, pad = json.loads((folder / "tokens.json").read_text()), tokenizer.pad_token_id or 0
    torch.cuda.reset_peak_memory_stats()
    times, tokens, seen, loss = {}, {}, 0, None
    for step in range(1, STEPS + 1):
        batch = _collate(rows[(step - 1) * spec["batch"]: step * spec["batch"]], pad)
        seen += int(batch["attention_mask"].sum())
        batch = {k: v.to("cuda", non_blocking=True) for k, v in batch.items()}
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss = loss.item()   # a loop that reports its loss syncs every step, as the Trainer does
        times[step], tokens[step] = time.perf_counter(), seen
    trainable = sum(p.numel() for p in params)
    rate = (tokens[STEPS] - tokens[SKIP]) / (times[STEPS] - times[SKIP])
    steps = [round(times[i + 1] - times[i], 4) for i in range(1, STEPS)]
    return {"tokens_per_s": rate, **_peaks(), "trainable": trainable, "final_loss": loss,
            "step_s": steps}


def _collate(rows: list[dict], pad: int) -> dict:
    import torch
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        ids[i, :n], labels[i, :n], mask[i, :n] = (torch.tensor(r["input_ids"]),
                                                  torch.tensor(r["labels"]), 1)
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


ENGINES = {"runner": run_runner, "baseline": run_baseline, "bare": run_bare}


# --- driver --------------------------------------------------------------------------------

def run_engine_process(engine: str, shape: str, work: Path, log_dir: Path) -> dict:
    """One engine in a fresh process: clean memory statistics, Unsloth imported first."""
    result = work / shape / f"{engine}.json"
    result.unlink(missing_ok=True)
    log = log_dir / f"{shape}-{engine}.log"
    start = time.time()
    with open(log, "w") as handle:
        code = subprocess.call([sys.executable, __file__, "engine", "--engine", engine,
                                "--shape", shape, "--work", str(work)],
                               stdout=handle, stderr=subprocess.STDOUT)
    print(f"[{shape}] {engine}: exit {code} in {time.time() - start:.0f}s", flush=True)
    if code != 0 or not result.is_file():
        print(log.read_text()[-3000:], flush=True)
        return {"error": f"exit {code}, see {log.name}"}
    return json.loads(result.read_text())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["all", "prepare", "engine"])
    parser.add_argument("--shapes", default="llama-1b,gpt-oss-20b-4l")
    parser.add_argument("--shape", default="tiny")
    parser.add_argument("--engine", choices=sorted(ENGINES))
    parser.add_argument("--engines", default="baseline,bare,runner")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench-training"))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    if args.command == "prepare":
        prepare(args.shape, args.work)
        return 0
    if args.command == "engine":
        result = ENGINES[args.engine](args.shape, args.work)
        (args.work / args.shape / f"{args.engine}.json").write_text(json.dumps(result))
        return 0
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_training_report import write_report

    args.out.mkdir(parents=True, exist_ok=True)
    results = {}
    for shape in args.shapes.split(","):
        prepare(shape, args.work)
        results[shape] = {e: run_engine_process(e, shape, args.work, args.out)
                          for e in args.engines.split(",")}
        (args.out / f"training-{shape}.json").write_text(json.dumps(results[shape], indent=2))
    print(write_report(results, args.out, SHAPES, STEPS, SKIP, RANK, args.work), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
