"""evaluation: answer the test prompts at each reasoning effort, and compare base vs tuned loss.

Answers are parsed from the harmony format (analysis channel apart from the final answer) and
saved as answers.jsonl; report.md is the readable version; held_out.json holds loss and
perplexity of the base model and of the tuned one on the same rows.
"""

from __future__ import annotations

from runner.artifacts import read_jsonl, write_json, write_jsonl
from runner.registry import StepContext, step


def _prompt_items(settings: dict) -> list[dict]:
    """Each test prompt with its efforts and token limit (its own, else the section's)."""
    items = []
    for entry in settings.get("prompts") or []:
        entry = {"prompt": entry} if isinstance(entry, str) else dict(entry)
        items.append({"prompt": entry["prompt"],
                      "efforts": list(entry.get("efforts") or settings["efforts"]),
                      "max_new_tokens": int(entry.get("max_new_tokens") or settings["max_new_tokens"])})
    return items


def _template_text(ctx: StepContext) -> str | None:
    """The template the dataset was rendered with (the chat_template step keeps a copy)."""
    used = ctx.inputs["chat_template"] / "chat_template.jinja"
    if used.is_file():
        return used.read_text(encoding="utf-8")
    template = ctx.sections.get("chat_template", {}).get("template", "tokenizer")
    if template in ("", "tokenizer"):
        return None
    return (ctx.recipe_dir / template).read_text(encoding="utf-8")


def _held_out_texts(ctx: StepContext, limit: int) -> tuple[list[str], str]:
    """Rows of the training eval split, else the dataset's last rows (seen in training)."""
    eval_file = ctx.inputs["training"] / "eval.jsonl"
    rows = list(read_jsonl(eval_file)) if eval_file.is_file() else []
    source = "training/eval.jsonl (held out from training)"
    if not rows:
        dataset = ctx.inputs["chat_template"] / "dataset.jsonl"
        rows = list(read_jsonl(dataset)) if dataset.is_file() else []
        rows = rows[-limit:] if limit else []
        source = ("chat_template/dataset.jsonl, last rows: the model trained on these; set "
                  "training.eval_fraction > 0 for a true held-out split")
    return [r["text"] for r in rows[:limit] if r.get("text")], source


def _loss_options(ctx: StepContext) -> dict:
    template = ctx.sections.get("chat_template", {})
    responses_only = ctx.sections.get("training", {}).get("train_on_responses_only", True)
    return {"max_length": int(ctx.sections["model"].get("max_seq_length", 1024)),
            "response_part": template.get("response_part") if responses_only else None,
            "instruction_part": template.get("instruction_part", "")}


def _compare_losses(ctx: StepContext, model, tokenizer) -> dict:
    from runner.infer.generation import held_out_loss

    texts, source = _held_out_texts(ctx, int(ctx.settings["held_out_rows"]))
    result = {"source": source, "rows": len(texts), "counted": "answer tokens only"
              if _loss_options(ctx)["response_part"] else "all tokens"}
    if not texts:
        ctx.log("no rows for held-out loss: skipped")
        return result
    options = dict(_loss_options(ctx), progress=ctx.progress)
    if hasattr(model, "disable_adapter"):
        with model.disable_adapter():
            result["base"] = held_out_loss(model, tokenizer, texts, **options)
    else:  # a fully fine-tuned model: the base is a separate load
        base = _load_base(ctx)
        result["base"] = held_out_loss(base, tokenizer, texts, **options)
        del base
    result["tuned"] = held_out_loss(model, tokenizer, texts, **options)
    ctx.log(f"held-out loss: base {result['base']['loss']} -> tuned {result['tuned']['loss']} "
            f"({len(texts)} rows)")
    return result


def _load_base(ctx: StepContext):
    from runner.infer.generation import pick_device
    from runner.models import load_model

    settings = dict(ctx.sections["model"])
    device = pick_device()
    if device == "cpu":
        settings["load_in_4bit"] = False
    return load_model(settings, device=device, base_dir=ctx.recipe_dir)


def _answers(ctx: StepContext, model, tokenizer) -> list[dict]:
    from runner.infer.generation import GenerationSettings, generate, render_prompt

    template, settings = _template_text(ctx), ctx.settings
    date = ctx.sections.get("chat_template", {}).get("current_date")
    jobs = [(item, effort) for item in _prompt_items(settings) for effort in item["efforts"]]
    rows = []
    for item, effort in ctx.progress(jobs, total=len(jobs), desc="answers", unit="answer"):
        text = render_prompt(tokenizer, item["prompt"], effort=effort, chat_template=template,
                             system_prompt=settings.get("system_prompt", ""), current_date=date)
        options = GenerationSettings.from_section({**settings,
                                                   "max_new_tokens": item["max_new_tokens"]})
        result = generate(model, tokenizer, text, options)
        rows.append({"prompt": item["prompt"], "reasoning_effort": effort,
                     "system_prompt": settings.get("system_prompt", ""),
                     **result.as_dict(), "generation": vars(options)})
    return rows


@step("evaluation", inputs=["chat_template", "training"],
      uses=("model", "lora", "chat_template", "training"),
      outputs=["answers.jsonl", "report.md", "held_out.json"])
def evaluate(ctx: StepContext) -> dict:
    """Answer each test prompt at each reasoning effort with the tuned model (answers.jsonl,
    report.md) and compare held-out loss and perplexity of the base and tuned models."""
    from runner.infer.evaluation_report import render_report
    from runner.infer.generation import load_tokenizer_from, load_tuned, pick_device

    adapter = ctx.inputs["training"] / "adapter"
    device = pick_device()
    ctx.log(f"loading the tuned model on {device}")
    tokenizer = load_tokenizer_from(adapter, ctx.sections["model"], ctx.recipe_dir)
    model = load_tuned(ctx.sections["model"], adapter, device=device, base_dir=ctx.recipe_dir)
    model.eval()
    losses = _compare_losses(ctx, model, tokenizer) if ctx.settings["held_out_loss"] else {}
    rows = _answers(ctx, model, tokenizer)
    write_jsonl(ctx.out_dir / "answers.jsonl", rows)
    write_json(ctx.out_dir / "held_out.json", losses)
    (ctx.out_dir / "report.md").write_text(
        render_report(ctx.recipe_name, ctx.settings, rows, losses), encoding="utf-8")
    metrics = {"answers": len(rows), "complete_answers": sum(r["complete"] for r in rows),
               "held_out_rows": losses.get("rows", 0)}
    for which in ("base", "tuned"):
        if losses.get(which):
            metrics[f"{which}_loss"] = losses[which]["loss"]
            metrics[f"{which}_perplexity"] = losses[which]["perplexity"]
    return metrics
