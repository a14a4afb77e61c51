"""Run report sections of the evaluation: held-out loss, quality signals, base and tuned answers
side by side, and the gates with each one's value, threshold and verdict."""

from __future__ import annotations

from markupsafe import Markup

from runner.infer.answer_quality import LOOP_REPEATS, LOOP_SHARE, NGRAM, summarize
from runner.infer.evaluation_report import MODELS, efforts_note, flags, sampling
from runner.reporting.report_data import missing, notice
from runner.reporting.report_html import badge, join, number, paragraph, percent, pre, table
from runner.reporting.report_run import RunFolder
from runner.reporting.report_svg import PALETTE, Bar, hbars


def _held_out(losses: dict | None) -> Markup:
    if losses is None:
        return paragraph("evaluation/held_out.json is missing.", "missing")
    if not losses:
        return paragraph("Held-out loss was not computed (evaluation.held_out_loss is false).", "missing")
    if not losses.get("base"):
        return paragraph(f"No rows for held-out loss ({losses.get('source')}).", "missing")
    base, tuned = losses["base"], losses["tuned"]
    rows = [["base", base.get("loss"), base.get("perplexity"), base.get("tokens")],
            ["tuned", tuned.get("loss"), tuned.get("perplexity"), tuned.get("tokens")]]
    if base.get("loss") is not None and tuned.get("loss") is not None:
        rows.append(["change", tuned["loss"] - base["loss"], None, None])
    drop = losses.get("relative_drop")
    largest = max(base.get("loss") or 0, tuned.get("loss") or 0) or 1
    bars = [Bar(name, (item.get("loss") or 0), number(item.get("loss")), color, whole=largest)
            for name, item, color in (("base", base, PALETTE[5]), ("tuned", tuned, PALETTE[0]))]
    return join([hbars(bars, "Held-out loss, base vs tuned", label_width=80),
                 table(["model", "loss", "perplexity", "tokens"], rows, numeric=(1, 2, 3)),
                 paragraph(f"{losses.get('rows')} rows from {losses.get('source')}; "
                           f"counted: {losses.get('counted')}."
                           + (f" Relative drop (base - tuned) / base: {drop:.2%}."
                              if drop is not None else ""))])


def _quality(rows: list[dict]) -> Markup:
    harmony = any(row.get("template_kind") == "harmony" for row in rows)
    lines = []
    for model, item in summarize(rows).items():
        total = item["answers"]

        def share(count: int, whole: int = total) -> str:
            return f"{count} ({percent(count, whole)})"

        lines.append([model, total, share(item["empty"]), share(item["cut_off"]), share(item["loops"]),
                      *([share(item.get("channel_errors", 0))] if harmony else []),
                      item["mean_repeated_ngram_share"]])
    head = ["model", "answers", "empty", "cut off (no end token)", "repetition loop",
            *(["channel errors"] if harmony else []), f"mean repeated {NGRAM}-gram share"]
    return join([table(head, lines, numeric=(1,)), paragraph(
        f"A loop: at least {LOOP_SHARE:.0%} of an answer's word {NGRAM}-grams repeat an earlier "
        f"one, or one {NGRAM}-gram occurs {LOOP_REPEATS} times or more. "
        "Every signal is defined in runner/infer/answer_quality.py.")])


def _answer(row: dict) -> Markup:
    status = badge("complete", "ok") if row.get("complete") else badge(
        "cut off" if (row.get("quality") or {}).get("cut_off", True) else "no final answer", "bad")
    timing = (f"{row.get('new_tokens')} tokens in {row.get('seconds', 0):.2f} s"
              + (f" ({row['tokens_per_s']} tokens/s)" if row.get("tokens_per_s") else ""))
    problems = flags(row, cut_off=False)
    warning = Markup("") if problems == "none" else badge(problems, "bad")
    analysis = row.get("analysis") or ""
    reasoning = Markup("")
    if row.get("template_kind") != "generic":
        reasoning = Markup('<div class="label">Reasoning (analysis channel)</div>{}').format(
            pre(analysis) if analysis else paragraph("(no reasoning)", "missing"))
    return Markup('<div class="answer"><b>{}</b> {} {} <span class="muted">{}</span>'
                  '<div class="label">Final answer</div>{}{}</div>').format(
        row.get("model") or "answer", status, warning, timing, pre(row.get("final") or "(empty)"),
        reasoning)


def _state(row: dict) -> str:
    state = f"{row.get('new_tokens')} tokens, " + ("complete" if row.get("complete") else "cut off")
    return f"{row['model']}: {state}" if row.get("model") else state


def _overview(rows: list[dict], prompts: list[str]) -> Markup:
    """Prompt x effort at a glance: tokens generated and whether each answer finished."""
    efforts = list(dict.fromkeys(row.get("reasoning_effort") for row in rows))
    found: dict = {}
    for row in rows:
        found.setdefault((row.get("prompt"), row.get("reasoning_effort")), []).append(row)
    head = [f"effort {e}" if e else "answer" for e in efforts]
    return table(["prompt", *head], [[prompt, *("; ".join(_state(r) for r in found.get((prompt, e), []))
                                                for e in efforts)] for prompt in prompts])


def _order(row: dict) -> int:
    return MODELS.index(row["model"]) if row.get("model") in MODELS else len(MODELS)


def _answers(rows: list[dict]) -> Markup:
    first = rows[0]
    generation = first.get("generation") or {}
    system = first.get("system_prompt")
    parts = [paragraph(f"System prompt: {repr(system) if system else '(none)'}. Generation: "
                       f"{sampling(generation)}. {efforts_note(rows)}")]
    prompts = list(dict.fromkeys(row.get("prompt") for row in rows))
    if len(rows) > 1:
        parts.append(_overview(rows, prompts))
    for index, prompt in enumerate(prompts, 1):
        parts.append(Markup("<h3>{}. {}</h3>").format(index, prompt))
        of_prompt = [row for row in rows if row.get("prompt") == prompt]
        for effort in dict.fromkeys(row.get("reasoning_effort") for row in of_prompt):
            found = sorted((r for r in of_prompt if r.get("reasoning_effort") == effort), key=_order)
            parts.append(Markup('<div class="label">{}</div><div class="grid">{}</div>').format(
                f"effort: {effort}" if effort else "answer", join(_answer(r) for r in found)))
    return join(parts)


def evaluation_section(run: RunFolder) -> Markup:
    rows = run.rows("evaluation", "answers.jsonl")
    if rows is None:
        return missing(run, "evaluation")
    timings = run.rows("evaluation", "timings.jsonl") or []   # one per answer, same order
    if len(timings) == len(rows):
        rows = [{**timing, **row} for row, timing in zip(rows, timings, strict=True)]
    losses = run.json("evaluation", "held_out.json")
    if not rows:
        answers = paragraph("No test prompts (evaluation.prompts is empty).", "missing")
    else:
        answers = join([Markup("<h3>Quality signals</h3>"), _quality(rows),
                        Markup("<h3>Answers</h3>"), _answers(rows)])
    tuned = [r for r in rows if r.get("model", "tuned") == "tuned"]
    complete = sum(bool(r.get("complete")) for r in tuned)
    return join([notice(run, "evaluation"), Markup("<h3>Held-out loss</h3>"), _held_out(losses),
                 paragraph(f"{len(tuned)} answers of the tuned model, {complete} finished within "
                           f"the token limit; {len(rows) - len(tuned)} of the base model."),
                 answers])


def _gate_results(run: RunFolder) -> list[dict] | None:
    """This run's gate results: the step's metrics (kept in the manifest even when it failed)."""
    metrics = run.metrics("gates")
    if "gates" in metrics:
        return metrics["gates"]
    report = run.json("gates", "gates.json")
    return report.get("gates") if report else None


def _gate_row(result: dict) -> list:
    wanted = ">=" if result.get("bound") == "min" else "<="
    verdict = badge("met", "ok") if result.get("passed") else badge("not met", "bad")
    return [Markup("<code>gates.{}</code>").format(result.get("gate")), result.get("label"),
            result.get("value"), f"{wanted} {result.get('threshold')}", verdict,
            result.get("problem") or result.get("detail") or ""]


def gates_section(run: RunFolder) -> Markup:
    results = _gate_results(run)
    if results is None:
        return missing(run, "gates")
    if not results:
        return paragraph("The gates section sets no gate (every key is null): nothing was checked.",
                         "missing")
    failed = [r for r in results if not r.get("passed")]
    summary = (paragraph(f"{len(failed)} of {len(results)} gates not met: "
                         + ", ".join(f"gates.{r.get('gate')}" for r in failed) + ".", "error")
               if failed else paragraph(f"All {len(results)} gates met."))
    return join([notice(run, "gates") if not failed else None, summary,
                 table(["gate", "measure", "value", "threshold", "verdict", "detail"],
                       [_gate_row(r) for r in results], numeric=(2,))])
