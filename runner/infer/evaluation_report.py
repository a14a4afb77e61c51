"""report.md of the evaluation step: held-out loss, quality signals, base and tuned answers side by side."""

from __future__ import annotations

from runner.infer.answer_quality import LOOP_SHARE, NGRAM, summarize

MODELS = ("base", "tuned")


def _number(value, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _loss_table(losses: dict) -> list[str]:
    if not losses:
        return ["Held-out loss was not computed (evaluation.held_out_loss is false).", ""]
    if not losses.get("base"):
        return [f"No rows for held-out loss ({losses.get('source', 'no source')}).", ""]
    base, tuned = losses["base"], losses["tuned"]
    change = (None if base["loss"] is None or tuned["loss"] is None
              else tuned["loss"] - base["loss"])
    drop = losses.get("relative_drop")
    return [f"Rows: {losses['rows']} from {losses['source']}; counted: {losses['counted']} "
            f"({tuned['tokens']} tokens).", "",
            "| model | loss | perplexity |", "| --- | --- | --- |",
            f"| base | {_number(base['loss'])} | {_number(base['perplexity'], 2)} |",
            f"| tuned | {_number(tuned['loss'])} | {_number(tuned['perplexity'], 2)} |",
            f"| change | {_number(change)} | |", "",
            *([f"The tuned loss is {abs(drop):.2%} {'lower' if drop >= 0 else 'higher'} than "
               "the base model's.", ""] if drop is not None else [])]


def _share(count: int, total: int) -> str:
    return f"{count} ({count / total:.0%})" if total else "-"


def _quality_table(rows: list[dict]) -> list[str]:
    summary = summarize(rows)
    harmony = any(row.get("template_kind") == "harmony" for row in rows)
    head = ["model", "answers", "empty", "cut off (no end token)", "repetition loop",
            *(["channel errors"] if harmony else []), f"mean repeated {NGRAM}-gram share"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for model, item in summary.items():
        total = item["answers"]
        cells = [model, str(total), _share(item["empty"], total), _share(item["cut_off"], total),
                 _share(item["loops"], total),
                 *([_share(item.get("channel_errors", 0), total)] if harmony else []),
                 _number(item["mean_repeated_ngram_share"], 3)]
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, "", f"A loop: at least {LOOP_SHARE:.0%} of an answer's word {NGRAM}-grams "
            "repeat an earlier one (runner/infer/answer_quality.py defines every signal).", ""]


def _cell(text: str) -> str:
    text = (text or "").strip() or "(empty)"
    return text.replace("|", "\\|").replace("\r", "").replace("\n", "<br>")


def status(row: dict) -> str:
    if row.get("quality", {}).get("cut_off", not row.get("complete")):
        state = "cut off at the token limit"
    else:
        state = "complete" if row.get("complete") else "ended without a finished final answer"
    return f"{state}, {row['new_tokens']} tokens in {row['seconds']:.2f}s"


def flags(row: dict, cut_off: bool = True) -> str:
    """The answer's quality problems in words ("none" when it has none); cut_off False leaves
    that one out (for a page that shows it already)."""
    quality = row.get("quality") or {}
    found = [name for key, name in (("empty", "empty"), ("cut_off", "cut off"))
             if quality.get(key) and (cut_off or key != "cut_off")]
    if quality.get("loop"):
        found.append(f"loop ({quality['repeated_ngram_share']:.0%} of {NGRAM}-grams repeated)")
    if quality.get("channel_problem"):
        found.append(f"channels: {quality['channel_problem']}")
    elif not row.get("format_ok", True):
        found.append("not in harmony format (raw output shown)")
    return ", ".join(found) or "none"


def _side_by_side(found: list[dict]) -> list[str]:
    names = [row.get("model", "tuned") for row in found]
    lines = ["| | " + " | ".join(names) + " |", "| --- |" + " --- |" * len(found),
             "| answer | " + " | ".join(_cell(row["final"]) for row in found) + " |",
             "| status | " + " | ".join(status(row) for row in found) + " |",
             "| signals | " + " | ".join(flags(row) for row in found) + " |", ""]
    for name, row in zip(names, found, strict=True):
        if row.get("analysis"):
            lines += [f"<details><summary>Reasoning of the {name} model (analysis channel)"
                      "</summary>", "", *_quote(row["analysis"]), "", "</details>", ""]
    return lines


def _quote(text: str) -> list[str]:
    return [f"> {line}" if line else ">" for line in (text.strip() or "(empty)").splitlines()]


def _effort_heading(effort) -> str:
    return f"#### effort: {effort}" if effort else "#### answer"


def _answers(rows: list[dict]) -> list[str]:
    lines = []
    prompts = list(dict.fromkeys(row["prompt"] for row in rows))
    for number, prompt in enumerate(prompts, 1):
        lines += [f"### {number}. {prompt}", ""]
        of_prompt = [row for row in rows if row["prompt"] == prompt]
        for effort in dict.fromkeys(row["reasoning_effort"] for row in of_prompt):
            found = sorted((r for r in of_prompt if r["reasoning_effort"] == effort),
                           key=lambda r: MODELS.index(r.get("model", "tuned")))
            lines += [_effort_heading(effort), "", *_side_by_side(found)]
    return lines


def efforts_note(rows: list[dict]) -> str:
    if any(row.get("template_kind") == "generic" for row in rows):
        return ("The chat template is not harmony: reasoning efforts mean nothing to it, so each "
                "prompt is answered once (evaluation.efforts is not swept).")
    return "Harmony template: each prompt is answered at each of its reasoning efforts."


def sampling(generation: dict) -> str:
    """How answers were drawn, in words (temperature 0 is greedy, as in GenerationSettings)."""
    if not generation.get("do_sample") or not generation.get("temperature"):
        return f"greedy, seed {generation.get('seed')}"
    return (f"sampling at temperature {generation.get('temperature')}, top_p "
            f"{generation.get('top_p')}, seed {generation.get('seed')}")


def render_report(recipe: str, settings: dict, rows: list[dict], losses: dict) -> str:
    lines = [f"# Evaluation: {recipe}", "",
             "## Held-out loss, base vs tuned", "", *_loss_table(losses),
             "## Answers", "",
             f"System prompt: {settings.get('system_prompt') or '(none)'}  ",
             f"Generation: {sampling(settings)}.", ""]
    if not rows:
        return "\n".join([*lines, "No test prompts (evaluation.prompts is empty).", ""])
    lines += [efforts_note(rows), "", "### Quality signals", "", *_quality_table(rows),
              *_answers(rows)]
    return "\n".join(lines).rstrip() + "\n"
