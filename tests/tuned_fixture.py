"""A trained-looking run on the tiny model, built without the trainer: tiny GPT-OSS + a PEFT
adapter with non-zero weights (so tuned differs from base), its tokenizer, a rendered dataset
and held-out rows. Shared by the evaluation, export and serve tests."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

from runner.artifacts import write_jsonl
from runner.registry import StepContext

TINY = {"name": "(set by tiny_model_dir)", "load_in_4bit": False, "dtype": "auto", "attn_implementation": "auto",
        "max_seq_length": 256, "revision": "main", "tiny": {}}
LORA = {"r": 8, "alpha": 16, "dropout": 0, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
        "target_parameters": ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]}
CHAT_TEMPLATE = {"template": "tokenizer", "current_date": "2025-08-05",
                 "instruction_part": "<|start|>user<|message|>",
                 "response_part": "<|start|>assistant<|channel|>final<|message|>"}
TRAINING = {"train_on_responses_only": True}
PAIRS = [("What is a list?", "A list is a mutable sequence of values in square brackets."),
         ("What is a tuple?", "A tuple is an immutable sequence, written with parentheses."),
         ("How do I read a file?", "Use open(path) in a with statement and call read()."),
         ("What does len do?", "len returns the number of items in a container."),
         ("What is a dict?", "A dict maps keys to values and looks keys up by hash.")]


@lru_cache(maxsize=1)
def _scratch() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="recipe-tuned-fixture-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


@lru_cache(maxsize=1)
def tiny_model_dir() -> Path:
    """The tiny GPT-OSS built once per test process (model.name points at the folder)."""
    from runner.tiny_model import build_tiny
    path = build_tiny(_scratch() / "tiny-model", "gpt_oss", seed=0)
    TINY["name"] = str(path)
    return path


@lru_cache(maxsize=1)
def _template_run() -> Path:
    return build_run(_scratch() / "template")


def copy_run(root: Path) -> Path:
    """A fresh copy of the shared run under root (building it once per test process)."""
    run = root / "runs" / "tiny"
    shutil.copytree(_template_run(), run)
    return run


def build_run(root: Path) -> Path:
    """runs/<name>/ with chat_template/ and training/ as those steps would leave them."""
    import torch
    from peft import LoraConfig, get_peft_model

    from runner.models import load_model, load_tokenizer

    tiny_model_dir()
    run = root / "runs" / "tiny"
    tokenizer = load_tokenizer(TINY)
    model = load_model(TINY)
    torch.manual_seed(1)
    config = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], target_modules=LORA["target_modules"],
                        target_parameters=LORA["target_parameters"], init_lora_weights=False)
    tuned = get_peft_model(model, config)
    adapter = run / "training" / "adapter"
    tuned.save_pretrained(adapter)
    tokenizer.save_pretrained(adapter)
    rows = [{"text": tokenizer.apply_chat_template(
                [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                tokenize=False, add_generation_prompt=False),
             "messages": [], "provenance": {}} for q, a in PAIRS]
    (run / "chat_template").mkdir(parents=True)
    write_jsonl(run / "chat_template" / "dataset.jsonl", rows)
    write_jsonl(run / "training" / "eval.jsonl", rows[-2:])
    return run


def make_ctx(run: Path, step: str, settings: dict, inputs: list[str]) -> StepContext:
    out = run / f".{step}.tmp-{os.getpid()}"
    out.mkdir(parents=True, exist_ok=True)
    return StepContext(recipe_name="tiny", step=step, key="test", settings=settings,
                       sections={"model": TINY, "lora": LORA, "chat_template": CHAT_TEMPLATE,
                                 "training": TRAINING},
                       inputs={name: run / name for name in inputs}, out_dir=out, run_dir=run,
                       cache_dir=run / "cache" / step, recipe_dir=run.parent.parent, quiet=True)


def publish(ctx: StepContext) -> Path:
    """What the executor does after success: rename the temp folder into place."""
    final = ctx.run_dir / ctx.step
    os.replace(ctx.out_dir, final)
    return final


def section_settings(section: str, **values) -> dict:
    """A section's settings with the schema's defaults filled in, as the executor hands them."""
    from runner.validate import fill_defaults, schema
    return fill_defaults(dict(values), schema()["$defs"][section], top=False)
