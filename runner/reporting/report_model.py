"""Run report sections of the model half: loss curve and throughput, eval answers, export."""

from __future__ import annotations

from markupsafe import Markup

from runner.reporting.report_data import missing, notice
from runner.reporting.report_html import (
    badge,
    details,
    duration,
    join,
    key_values,
    number,
    paragraph,
    pre,
    size,
    table,
)
from runner.reporting.report_run import RunFolder
from runner.reporting.report_svg import PALETTE, Bar, Series, hbars, line_chart, thin

GIB = "GiB"


def _curve(rows: list[dict], key: str) -> list[tuple[float, float]]:
    return [(row["step"], row[key]) for row in rows
            if isinstance(row.get(key), (int, float)) and isinstance(row.get("step"), (int, float))]


def _charts(rows: list[dict]) -> Markup:
    loss = [Series("train loss", thin(_curve(rows, "loss")), PALETTE[0]),
            Series("eval loss", thin(_curve(rows, "eval_loss")), PALETTE[1])]
    loss = [s for s in loss if s.points]
    charts = [line_chart(loss, "Loss", x_label="step", y_label="loss")] if loss else []
    rate = _curve(rows, "learning_rate")
    if len(rate) > 1:
        charts.append(line_chart([Series("learning rate", thin(rate), PALETTE[2])], "Learning rate",
                                 x_label="step", height=200))
    return join(charts) or paragraph("metrics.jsonl holds no loss values.", "missing")


def _memory(summary: dict) -> str:
    parts = [f"{summary[key]} {GIB} {label}" for key, label in
             (("peak_gpu_allocated_gib", "GPU allocated"), ("peak_gpu_reserved_gib", "GPU reserved"),
              ("peak_rss_gib", "process RSS")) if summary.get(key) is not None]
    return ", ".join(parts) or "-"


def _training_facts(summary: dict) -> Markup:
    losses = " -> ".join(number(summary.get(k)) for k in ("first_loss", "final_loss"))
    trainable = summary.get("trainable_params")
    resumed = summary.get("resumed_from_step")
    return key_values([
        ("backend / device", f"{summary.get('backend')} on {summary.get('device')}"),
        ("model", f"{summary.get('model')} ({summary.get('model_path')})"),
        ("trainable parameters", None if trainable is None else
         f"{trainable:,} of {summary.get('total_params', 0):,} ({summary.get('trainable_pct')}%)"),
        ("rows (train / eval)", f"{summary.get('train_rows', 0):,} / {summary.get('eval_rows', 0):,}"),
        ("steps", f"{summary.get('steps')}" + (f" (resumed from step {resumed})" if resumed else "")),
        ("loss (first -> final)", losses),
        ("lowest train loss", number(summary.get("min_loss"))),
        ("final eval loss", number(summary.get("eval_loss"))),
        ("tokens/s", number(summary.get("tokens_per_s"))),
        ("steps/s", number(summary.get("steps_per_s"))),
        ("training time", duration(summary.get("elapsed_s"))),
        ("tokens seen", number(summary.get("tokens_seen"))),
        ("peak memory", _memory(summary)),
        ("optimizer / precision", f"{summary.get('optim')}, "
                                  f"{'bf16' if summary.get('bf16') else 'fp16' if summary.get('fp16') else 'fp32'}"),
        ("mask check", _mask_check(summary.get("mask") or {})),
    ])


def _mask_check(mask: dict) -> str:
    if not mask.get("checked"):
        return "not checked (train_on_responses_only is false: every token is trained)"
    return f"only answers trained in {mask.get('rows')} rows of {mask.get('batches')} collated batches"


def training_section(run: RunFolder) -> Markup:
    summary = run.json("training", "summary.json")
    if summary is None:
        return missing(run, "training")
    rows = run.rows("training", "metrics.jsonl") or []
    notes = summary.get("notes") or []
    return join([notice(run, "training"), _charts(rows), _training_facts(summary),
                 details(f"{len(notes)} note(s) from training", pre("\n".join(notes))) if notes else None])


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
    largest = max(base.get("loss") or 0, tuned.get("loss") or 0) or 1
    bars = [Bar(name, (item.get("loss") or 0), number(item.get("loss")), color, whole=largest)
            for name, item, color in (("base", base, PALETTE[5]), ("tuned", tuned, PALETTE[0]))]
    return join([hbars(bars, "Held-out loss, base vs tuned", label_width=80),
                 table(["model", "loss", "perplexity", "tokens"], rows, numeric=(1, 2, 3)),
                 paragraph(f"{losses.get('rows')} rows from {losses.get('source')}; "
                           f"counted: {losses.get('counted')}.")])


def _answer(row: dict) -> Markup:
    complete = row.get("complete")
    status = badge("complete", "ok") if complete else badge("cut off", "bad")
    timing = (f"{row.get('new_tokens')} tokens in {row.get('seconds', 0):.2f} s"
              + (f" ({row['tokens_per_s']} tokens/s)" if row.get("tokens_per_s") else ""))
    warning = ("" if row.get("format_ok", True) else
               " - not in harmony format: the raw output is shown as the final answer")
    analysis = row.get("analysis") or ""
    return Markup('<div class="answer"><b>effort: {}</b> {} <span class="muted">{}{}</span>'
                  '<div class="label">Final answer</div>{}<div class="label">Reasoning '
                  '(analysis channel)</div>{}</div>').format(
        row.get("reasoning_effort"), status, timing, warning, pre(row.get("final") or "(empty)"),
        pre(analysis) if analysis else paragraph("(no reasoning)", "missing"))


def _overview(rows: list[dict], prompts: list[str]) -> Markup:
    """Prompt x effort at a glance: tokens generated and whether the answer finished."""
    efforts = list(dict.fromkeys(row.get("reasoning_effort") for row in rows))
    found = {(row.get("prompt"), row.get("reasoning_effort")): row for row in rows}

    def state(row: dict | None) -> str:
        if row is None:
            return ""
        return f"{row.get('new_tokens')} tokens, " + ("complete" if row.get("complete") else "cut off")

    return table(["prompt", *efforts], [[prompt, *(state(found.get((prompt, e))) for e in efforts)]
                                        for prompt in prompts])


def _answers(rows: list[dict]) -> Markup:
    if not rows:
        return paragraph("No test prompts (evaluation.prompts is empty).", "missing")
    first = rows[0]
    generation = first.get("generation") or {}
    system = first.get("system_prompt")
    parts = [paragraph(f"System prompt: {repr(system) if system else '(none)'}. Generation: "
                       f"temperature {generation.get('temperature')}, top_p {generation.get('top_p')}, "
                       f"{'sampling' if generation.get('do_sample') else 'greedy'}, "
                       f"seed {generation.get('seed')}.")]
    prompts = list(dict.fromkeys(row.get("prompt") for row in rows))
    if len(rows) > 1:
        parts.append(_overview(rows, prompts))
    for index, prompt in enumerate(prompts, 1):
        parts.append(Markup("<h3>{}. {}</h3>").format(index, prompt))
        parts += [_answer(row) for row in rows if row.get("prompt") == prompt]
    return join(parts)


def evaluation_section(run: RunFolder) -> Markup:
    rows = run.rows("evaluation", "answers.jsonl")
    if rows is None:
        return missing(run, "evaluation")
    losses = run.json("evaluation", "held_out.json")
    complete = sum(bool(r.get("complete")) for r in rows)
    return join([notice(run, "evaluation"), Markup("<h3>Held-out loss</h3>"), _held_out(losses),
                 Markup("<h3>Answers</h3>"),
                 paragraph(f"{len(rows)} answers, {complete} finished within the token limit."),
                 _answers(rows)])


def _verification(target: dict) -> str:
    verify = target.get("verify")
    if not verify:
        return "not verified" if "path" in target else "-"
    return f"reloaded, generated {verify.get('new_tokens')} tokens"


def _logits(target: dict) -> str:
    found = []
    for key, label in (("logits_float32_merge_vs_adapter", "float32 merge"),
                       ("logits_vs_adapter", "reloaded")):
        item = target.get(key)
        if item:
            found.append(f"{label}: max |diff| {number(item.get('max_abs_diff'))}, mean "
                         f"{number(item.get('mean_abs_diff'))}, top-1 agreement "
                         f"{number(item.get('top1_agreement'))}")
    return "; ".join(found) or "-"


def export_section(run: RunFolder) -> Markup:
    report = run.json("export", "export_report.json")
    if report is None:
        return missing(run, "export")
    targets = report.get("targets") or {}
    rows = [[name, t.get("path"), Markup("{}<br><span class=\"muted\">{} bytes</span>").format(
        size(t.get("size_bytes")), number(t.get("size_bytes"))) if "size_bytes" in t else "-",
        _verification(t), _logits(t)] for name, t in targets.items()]
    sized = [(n, t["size_bytes"]) for n, t in targets.items() if t.get("size_bytes") is not None]
    parts = [notice(run, "export"),
             hbars([Bar(n, b, size(b), PALETTE[3]) for n, b in sized], "Export sizes") if sized else None,
             table(["target", "path", "size", "verification", "logits vs base + adapter"], rows,
                   numeric=(2,)),
             paragraph(f"Verify prompt: {report.get('verify_prompt')!r}.")]
    for name, target in targets.items():
        if target.get("verify"):
            parts.append(details(f"{name}: reloaded model's answer", pre(target["verify"].get("final") or "(empty)")))
        if target.get("pushed"):
            pushed = [[k, v.get("repo_id"), v.get("url"), v.get("files")] for k, v in target["pushed"].items()]
            parts.append(table(["artifact", "Hub repository", "url", "files"], pushed, numeric=(3,)))
    if report.get("vllm_command"):
        parts += [paragraph("Production serving of the merged model:"), pre(report["vllm_command"])]
    return join(parts)
