"""evaluation: answer the test prompts with the base and the tuned model, and compare their loss.

Answers are parsed for the run's chat template (harmony: the analysis channel apart from the
final answer, one answer per reasoning effort; any other template: the text before its end
token, one answer per prompt, since efforts mean nothing there). Each answer carries quality
signals (runner.infer.answer_quality). answers.jsonl holds every answer (`model`: base or
tuned); report.md shows base and tuned side by side; held_out.json holds loss and perplexity of
both models on the same rows. How long each answer took is in timings.jsonl (one line per
answer, in the same order), apart from the answers: timings differ every run, the answers do not.
"""

from __future__ import annotations

import gc
from contextlib import contextmanager

from runner.artifacts import read_jsonl, write_json, write_jsonl
from runner.registry import StepContext, step


def _prompt_items(settings: dict, harmony: bool) -> list[dict]:
    """Each test prompt with its efforts ([None] without harmony) and its token limit."""
    items = []
    for entry in settings.get("prompts") or []:
        entry = {"prompt": entry} if isinstance(entry, str) else dict(entry)
        efforts = list(entry.get("efforts") or settings["efforts"]) if harmony else [None]
        items.append({"prompt": entry["prompt"], "efforts": efforts,
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


def _loss_options(ctx: StepContext, chat: dict) -> dict:
    """Count the tokens training learned from: the answers (markers as the mask was verified
    with, from chat.json), or every token without train_on_responses_only."""
    responses_only = ctx.sections.get("training", {}).get("train_on_responses_only", True)
    return {"max_length": int(ctx.sections["model"].get("max_seq_length", 1024)),
            "response_part": chat.get("response_part") if responses_only else None,
            "instruction_part": chat.get("instruction_part") or ""}


def _held_out(ctx: StepContext, chat: dict) -> dict:
    texts, source = _held_out_texts(ctx, int(ctx.settings["held_out_rows"]))
    options = _loss_options(ctx, chat)
    if not texts:
        ctx.log("no rows for held-out loss: skipped")
    return {"source": source, "rows": len(texts), "texts": texts, "options": options,
            "counted": "answer tokens only" if options["response_part"] else "all tokens"}


def _score(ctx: StepContext, model, tokenizer, held_out: dict) -> dict | None:
    from runner.infer.generation import held_out_loss

    if not held_out.get("texts"):
        return None
    return held_out_loss(model, tokenizer, held_out["texts"], **held_out["options"],
                         progress=ctx.progress)


def _load_base(ctx: StepContext):
    from runner.infer.generation import pick_device
    from runner.models import load_model

    settings = dict(ctx.sections["model"])
    device = pick_device()
    if device == "cpu":
        settings["load_in_4bit"] = False
    return load_model(settings, device=device, base_dir=ctx.recipe_dir)


@contextmanager
def _base_model(ctx: StepContext, model):
    """The base model: the tuned one with its adapter switched off, or (after a full fine-tune)
    a separate load, freed on exit."""
    if hasattr(model, "disable_adapter"):
        with model.disable_adapter():
            yield model
        return
    base = _load_base(ctx).eval()
    try:
        yield base
    finally:
        del base
        gc.collect()


def _base_results(ctx: StepContext, model, tokenizer, held_out: dict, answer_format):
    """The base model's held-out loss and answers (None and [] where not asked for)."""
    if not (held_out.get("texts") or ctx.settings["base_answers"]):
        return None, []
    with _base_model(ctx, model) as base:
        loss = _score(ctx, base, tokenizer, held_out)
        rows = (_answers(ctx, base, tokenizer, answer_format, "base")
                if ctx.settings["base_answers"] else [])
    return loss, rows


def _answers(ctx: StepContext, model, tokenizer, answer_format, which: str) -> list[dict]:
    from runner.infer.answer_quality import signals
    from runner.infer.generation import GenerationSettings, generate, render_prompt

    template, settings = _template_text(ctx), ctx.settings
    date = ctx.sections.get("chat_template", {}).get("current_date")
    items = _prompt_items(settings, answer_format.harmony)
    jobs = [(item, effort) for item in items for effort in item["efforts"]]
    rows = []
    for item, effort in ctx.progress(jobs, total=len(jobs), desc=f"{which} answers", unit="answer"):
        text = render_prompt(tokenizer, item["prompt"], effort=effort, chat_template=template,
                             system_prompt=settings.get("system_prompt", ""), current_date=date)
        options = GenerationSettings.from_section({**settings,
                                                   "max_new_tokens": item["max_new_tokens"]})
        result = generate(model, tokenizer, text, options, answer_format=answer_format)
        quality = signals(result.parsed.final, result.parsed.analysis, result.ended,
                          result.parsed if answer_format.harmony else None)
        rows.append({"prompt": item["prompt"], "model": which, "reasoning_effort": effort,
                     "system_prompt": settings.get("system_prompt", ""),
                     "template_kind": "harmony" if answer_format.harmony else "generic",
                     **result.as_dict(), "quality": quality, "generation": vars(options)})
    return rows


def _side_by_side(base: list[dict], tuned: list[dict]) -> list[dict]:
    """Each prompt and effort's base answer, then its tuned one (both lists share job order)."""
    if not base:
        return tuned
    return [row for pair in zip(base, tuned, strict=True) for row in pair]


def _losses(ctx: StepContext, held_out: dict, base: dict | None, tuned: dict | None) -> dict:
    if not ctx.settings["held_out_loss"]:
        return {}
    result = {key: held_out[key] for key in ("source", "rows", "counted")}
    if base and tuned:
        result.update(base=base, tuned=tuned)
        if base["loss"] and tuned["loss"] is not None:
            # The gates' min_held_out_loss_drop compares with this: 0.1 = 10% lower than base.
            result["relative_drop"] = round((base["loss"] - tuned["loss"]) / base["loss"], 5)
        drop = f", {result['relative_drop']:.1%} lower" if "relative_drop" in result else ""
        ctx.log(f"held-out loss: base {base['loss']} -> tuned {tuned['loss']} "
                f"({held_out['rows']} rows{drop})")
    return result


def _metrics(rows: list[dict], losses: dict, jobs: int) -> dict:
    from runner.infer.answer_quality import summarize

    tuned = [r for r in rows if r["model"] == "tuned"]
    metrics = {"answers": jobs, "complete_answers": sum(r["complete"] for r in tuned),
               "held_out_rows": losses.get("rows", 0)}
    for which, summary in summarize(rows).items():
        metrics.update({f"{which}_{key}": value for key, value in summary.items()
                        if key != "answers"})
    for which in ("base", "tuned"):
        if losses.get(which):
            metrics[f"{which}_loss"] = losses[which]["loss"]
            metrics[f"{which}_perplexity"] = losses[which]["perplexity"]
    if "relative_drop" in losses:
        metrics["held_out_loss_drop"] = losses["relative_drop"]
    return metrics


TIMING_KEYS = ("seconds", "tokens_per_s")
# What the step reads of other sections: the whole model (it loads it), the template and date
# prompts are rendered with, the markers of a chat_template folder older than chat.json, and
# whether training learned from answers only (the held-out loss counts the same tokens).
USES = ("model", "chat_template.template", "chat_template.current_date", "chat_template.mask",
        "chat_template.instruction_part", "chat_template.response_part",
        "chat_template.end_token", "training.train_on_responses_only")


def _write_answers(ctx: StepContext, rows: list[dict]) -> None:
    """answers.jsonl without timings, timings.jsonl with them (volatile: not in the content
    hash, so a re-run with the same answers leaves later steps skipped)."""
    write_jsonl(ctx.out_dir / "answers.jsonl",
                [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in rows])
    write_jsonl(ctx.out_dir / "timings.jsonl",
                [{"prompt": row["prompt"], "model": row["model"],
                  "reasoning_effort": row["reasoning_effort"],
                  **{k: row.get(k) for k in TIMING_KEYS}} for row in rows])


@step("evaluation", inputs=["chat_template", "training"], uses=USES,
      outputs=["answers.jsonl", "timings.jsonl", "report.md", "held_out.json"], version=3,
      volatile=["timings.jsonl", "report.md"])   # report.md shows each answer's time
def evaluate(ctx: StepContext) -> dict:
    """Answer each test prompt (at each reasoning effort, for harmony) with the base and the
    tuned model, with quality signals per answer (answers.jsonl, report.md), and compare
    held-out loss and perplexity of the two."""
    from runner.chat.resolved import read_chat
    from runner.infer.answer_format import AnswerFormat
    from runner.infer.evaluation_report import render_report
    from runner.infer.generation import load_tokenizer_from, load_tuned, pick_device

    chat = read_chat(ctx.inputs["chat_template"], ctx.sections.get("chat_template"))
    answer_format = AnswerFormat.from_chat(chat)
    if not answer_format.harmony:
        ctx.log("the chat template is not harmony: reasoning efforts do not apply, one answer "
                f"per prompt, ended at {', '.join(answer_format.stop_tokens) or 'the eos token'}")
    adapter, device = ctx.inputs["training"] / "adapter", pick_device()
    ctx.log(f"loading the tuned model on {device}")
    tokenizer = load_tokenizer_from(adapter, ctx.sections["model"], ctx.recipe_dir)
    model = load_tuned(ctx.sections["model"], adapter, device=device, base_dir=ctx.recipe_dir)
    model.eval()
    held_out = _held_out(ctx, chat) if ctx.settings["held_out_loss"] else {}
    base_loss, base_rows = _base_results(ctx, model, tokenizer, held_out, answer_format)
    tuned_loss = _score(ctx, model, tokenizer, held_out)
    tuned_rows = _answers(ctx, model, tokenizer, answer_format, "tuned")
    rows, losses = _side_by_side(base_rows, tuned_rows), _losses(ctx, held_out, base_loss, tuned_loss)
    _write_answers(ctx, rows)
    write_json(ctx.out_dir / "held_out.json", losses)
    (ctx.out_dir / "report.md").write_text(
        render_report(ctx.recipe_name, ctx.settings, rows, losses), encoding="utf-8")
    return _metrics(rows, losses, len(tuned_rows))
