"""report.md of the evaluation step: settings, base vs tuned held-out loss, every answer."""

from __future__ import annotations


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
    return [f"Rows: {losses['rows']} from {losses['source']}; counted: {losses['counted']} "
            f"({tuned['tokens']} tokens).", "",
            "| model | loss | perplexity |", "| --- | --- | --- |",
            f"| base | {_number(base['loss'])} | {_number(base['perplexity'], 2)} |",
            f"| tuned | {_number(tuned['loss'])} | {_number(tuned['perplexity'], 2)} |",
            f"| change | {_number(change)} | |", ""]


def _quote(text: str) -> list[str]:
    return [f"> {line}" if line else ">" for line in (text.strip() or "(empty)").splitlines()]


def _answer(row: dict) -> list[str]:
    status = "complete" if row["complete"] else "cut off at the token limit (no finished final answer)"
    if not row.get("format_ok", True):
        status += "; output was not in harmony format, shown as the answer"
    lines = [f"#### effort: {row['reasoning_effort']}", "",
             f"{row['new_tokens']} tokens in {row['seconds']:.2f}s - {status}", "",
             "**Final answer**", "", *_quote(row["final"]), ""]
    if row["analysis"]:
        lines += ["<details><summary>Reasoning (analysis channel)</summary>", "",
                  *_quote(row["analysis"]), "", "</details>", ""]
    return lines


def render_report(recipe: str, settings: dict, rows: list[dict], losses: dict) -> str:
    lines = [f"# Evaluation: {recipe}", "",
             "## Held-out loss, base vs tuned", "", *_loss_table(losses),
             "## Answers", "",
             f"System prompt: {settings.get('system_prompt') or '(none)'}  ",
             f"Generation: temperature {settings['temperature']}, top_p {settings['top_p']}, "
             f"{'sampling' if settings['do_sample'] else 'greedy'}, seed {settings['seed']}.", ""]
    if not rows:
        lines += ["No test prompts (evaluation.prompts is empty).", ""]
    prompts = list(dict.fromkeys(row["prompt"] for row in rows))
    for number, prompt in enumerate(prompts, 1):
        lines += [f"### {number}. {prompt}", ""]
        for row in rows:
            if row["prompt"] == prompt:
                lines += _answer(row)
    return "\n".join(lines).rstrip() + "\n"
