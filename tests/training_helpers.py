"""Shared by the training tests: schema-default settings, a rendered dataset on the tiny GPT-OSS
tokenizer, and a StepContext for the training step built by hand (as the executor builds it)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from runner.registry import StepContext, registered
from runner.validate import fill_defaults, schema

ROOT = Path(__file__).resolve().parent.parent

PAIRS = [(f"What does helper number {i} return?", f"Helper {i} returns {i} times two, which is {2 * i}.")
         for i in range(24)]


def section(section_name: str, **values) -> dict:
    """A recipe section with the schema's defaults under the given values."""
    return fill_defaults(json.loads(json.dumps(values)), schema()["$defs"][section_name], top=False)


def tiny_model(**values) -> dict:
    return section("model", **{"name": "tiny", "load_in_4bit": False, "max_seq_length": 256, **values})


def tiny_lora(**values) -> dict:
    return section("lora", **values)


def chat_settings(**values) -> dict:
    return section("chat_template", **values)


def fast_training(**values) -> dict:
    """Defaults of the notebook, shortened to seconds of CPU time."""
    base = dict(backend="hf", per_device_train_batch_size=2, gradient_accumulation_steps=2,
                warmup_steps=2, max_steps=12, learning_rate=3e-3, save_steps=4)
    return section("training", **{**base, **values})


def write_dataset(folder: Path, model: dict, chat: dict, pairs=PAIRS) -> list[dict]:
    """dataset.jsonl and chat.json as the chat_template step writes them, rendered with the
    model's template and its markers read off that template."""
    from runner.chat.chat_format import render, resolve_template, template_renderer
    from runner.chat.resolved import CHAT_FILE
    from runner.chat.template_markers import derive_markers, resolve_markers
    from runner.models import load_tokenizer
    from runner.steps.chat_template import special_tokens

    tokenizer = load_tokenizer(model)
    template, _ = resolve_template(chat, tokenizer, folder)
    markers = derive_markers(template_renderer(tokenizer, template, chat, []), special_tokens(tokenizer))
    resolved = {**chat, **resolve_markers(chat, markers)[0]}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CHAT_FILE).write_text(json.dumps(resolved))
    rows = []
    for question, answer in pairs:
        messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        rendered = render(messages, tokenizer, template, chat)
        rows.append({"text": rendered.text, "messages": messages,
                     "provenance": {"document_id": "t"}})
        if chat["mask"] == "template":
            rows[-1]["trained_spans"] = [list(span) for span in rendered.spans]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dataset.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def make_ctx(tmp: Path, training: dict, *, model=None, lora=None, chat=None, key="k" * 64,
             force: bool = False) -> StepContext:
    model, lora, chat = model or tiny_model(), lora or tiny_lora(), chat or chat_settings()
    data = tmp / "chat_template"
    if not (data / "dataset.jsonl").is_file():
        write_dataset(data, model, chat)
    out = tmp / f".training.tmp-{os.getpid()}"
    out.mkdir(parents=True, exist_ok=True)
    return StepContext(recipe_name="test", step="training", key=key, settings=training,
                       sections={"model": model, "lora": lora, "chat_template": chat},
                       inputs={"chat_template": data}, out_dir=out, run_dir=tmp,
                       cache_dir=tmp / "cache" / "training", recipe_dir=tmp, force=force,
                       quiet=True)


def run_step(ctx: StepContext) -> dict:
    return registered()[("training", ctx.settings["backend"])].func(ctx)


def run_step_capturing_log(ctx: StepContext) -> tuple[dict, str]:
    """run_step, plus what the step logged (ctx.log writes to stderr)."""
    import contextlib
    import io
    log = io.StringIO()
    with contextlib.redirect_stderr(log):
        metrics = run_step(ctx)
    return metrics, log.getvalue()


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def subprocess_env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
            "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


PYTHON = sys.executable
