"""Run report sections of the model half: loss curve and throughput, export (evaluation: report_eval)."""

from __future__ import annotations

from markupsafe import Markup

from runner.reporting.report_data import missing, notice
from runner.reporting.report_html import (
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


def _percent(value) -> str:
    return f"{value:.1%}" if isinstance(value, (int, float)) else "-"


def _gguf_checks(files: dict) -> str:
    """Per GGUF file: its reload check against the merged model (runner/infer/gguf_export.py)."""
    parts = []
    for outtype, file in files.items():
        check = file.get("check")
        if not check:
            parts.append(f"{outtype}: not verified")
            continue
        parts.append(f"{outtype}: {'passed' if check.get('passed') else 'FAILED'}, reloaded in a fresh "
                     f"process; next-token argmax agrees {_percent(check.get('top1_agreement'))} "
                     f"(bound {_percent(check.get('min_top1_agreement'))}), greedy tokens "
                     f"{_percent(check.get('token_agreement'))}, common prefixes "
                     f"{check.get('common_prefix')}, tokenizer "
                     f"{'matches' if check.get('tokenizer_matches') else 'differs'}")
    return "; ".join(parts)


def _gguf_answers(outtype: str, check: dict) -> Markup:
    rows = [[row.get("prompt"), _percent(row.get("token_agreement")),
             f"{row.get('common_prefix')} of {row.get('reference_tokens')}",
             row.get("reference_answer"), row.get("gguf_answer")] for row in check.get("prompts") or []]
    return details(f"gguf {outtype}: greedy answers, merged model vs GGUF file",
                   table(["prompt", "tokens agree", "common prefix", "merged model", "GGUF"], rows))


def _verification(target: dict) -> str:
    if target.get("files"):
        return _gguf_checks(target["files"])
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
        for outtype, file in (target.get("files") or {}).items():
            if file.get("check"):
                parts.append(_gguf_answers(outtype, file["check"]))
        if target.get("pushed"):
            pushed = [[k, v.get("repo_id"), v.get("url"), v.get("files")] for k, v in target["pushed"].items()]
            parts.append(table(["artifact", "Hub repository", "url", "files"], pushed, numeric=(3,)))
    if report.get("vllm_command"):
        parts += [paragraph("Production serving of the merged model:"), pre(report["vllm_command"])]
    return join(parts)
