"""Run report sections of the data half: funnel with drop reasons, the data-quality scorecard,
the teacher's requests and costs, length histograms, mask example."""

from __future__ import annotations

from collections import Counter

from markupsafe import Markup

from runner.reporting.report_html import details, join, key_values, number, paragraph, percent, pre, table
from runner.reporting.report_run import RunFolder
from runner.reporting.report_svg import PALETTE, Bar, hbars, histogram

STAGE_LABELS = {"sources": "documents collected", "documents": "documents with text",
                "sentences": "sentences", "sections": "heading sections", "pairs": "pairs",
                "kept": "pairs kept (validation)", "rows": "chat rows (chat_template)"}
SHOWN_FAILURES = 20


def notice(run: RunFolder, name: str) -> Markup:
    """A warning when the artifacts shown come from an earlier run."""
    stale = run.stale(name)
    return Markup('<div class="warn">{}: {}</div>').format(name, stale) if stale else Markup("")


def missing(run: RunFolder, name: str) -> Markup:
    return paragraph(f"Nothing to show: {run.absence(name)}.", "missing")


def _source_stage(run: RunFolder) -> dict | None:
    if run.folder("sources") is None:
        return None
    metrics = run.metrics("sources")
    documents = metrics.get("documents")
    if documents is None:
        return None
    dropped = {"empty document": metrics.get("empty", 0),
               "duplicate id": metrics.get("duplicates", 0)}
    dropped.update({f"fetch failed: {reason}": count
                    for reason, count in (metrics.get("failed_by_reason") or {}).items()})
    return {"stage": "sources", "in": documents + sum(dropped.values()), "out": documents,
            "dropped": dropped}


def _middle_stages(run: RunFolder) -> list[dict]:
    """documents -> sentences (-> sections) -> pairs -> kept, as the data report counts them."""
    data_report = run.json("validation", "data_report.json")
    if data_report:
        return data_report.get("stages", [])
    from runner.data.data_report import build_report

    found = {name: run.json(name, "stats.json") for name in ("cleaning", "pairing", "validation")}
    if not any(found.values()):
        return []
    stages = build_report(found["cleaning"] or {}, found["pairing"] or {},
                          found["validation"] or {}, {}, [])["stages"]
    made_by = {"documents": "cleaning", "sentences": "cleaning", "sections": "cleaning",
               "pairs": "pairing", "kept": "validation"}
    return [s for s in stages if found[made_by[s["stage"]]]]


def funnel_stages(run: RunFolder) -> list[dict]:
    stages = [s for s in [_source_stage(run)] if s] + _middle_stages(run)
    mask = run.json("chat_template", "mask_report.json")
    if mask:
        stages.append({"stage": "rows", "in": mask.get("rows_in"), "out": mask.get("rows_out"),
                       "dropped": {"over max_seq_length": mask.get("dropped_overlong", 0),
                                   "no answer left after truncation":
                                       mask.get("dropped_truncated_without_answer", 0)}})
    return stages


def _reasons(dropped: dict) -> str:
    return ", ".join(f"{reason}: {count:,}" for reason, count in dropped.items() if count) or "-"


def _funnel_chart(stages: list[dict]) -> Markup:
    bars = []
    for stage in stages:
        whole = stage["in"] if stage["in"] else (stage["out"] or 1)
        shown = (f"{stage['out']:,} of {stage['in']:,} ({percent(stage['out'], stage['in'])})"
                 if stage["in"] is not None else f"{stage['out']:,}")
        bars.append(Bar(STAGE_LABELS.get(stage["stage"], stage["stage"]), stage["out"] or 0, shown,
                        PALETTE[0], whole=whole, tooltip=f"dropped: {_reasons(stage['dropped'])}"))
    return hbars(bars, "Data funnel: share kept at each stage")


def funnel_section(run: RunFolder) -> Markup:
    stages = funnel_stages(run)
    if not stages:
        return missing(run, "sources")
    rows = [[STAGE_LABELS.get(s["stage"], s["stage"]), s["in"], s["out"],
             percent(s["out"], s["in"]) if s["in"] is not None else "-", _reasons(s["dropped"])]
            for s in stages]
    parts = [join(notice(run, n) for n in ("sources", "cleaning", "pairing", "validation")),
             _funnel_chart(stages),
             table(["stage", "in", "out", "kept", "dropped (reason: count)"], rows, numeric=(1, 2, 3)),
             _strategy_note(run), _split_note(run), _scorecard(run), _teacher(run),
             _outcomes(run), _rules(run)]
    for name in ("cleaning", "pairing", "validation", "chat_template"):
        if name in run.recipe and run.folder(name) is None:
            parts.append(paragraph(f"{name}: {run.absence(name)}.", "missing"))
    return join(parts)


def _strategy_note(run: RunFolder) -> Markup:
    pairing = run.json("pairing", "stats.json") or {}
    return paragraph(f"Pairing strategy: {pairing['strategy']}.") if pairing.get("strategy") else Markup("")


def _scorecard(run: RunFolder) -> Markup:
    from runner.data.scorecard import rows

    card = (run.json("validation", "stats.json") or {}).get("scorecard")
    if not card:
        return Markup("")
    return join([Markup("<h3>Data-quality scorecard ({} kept pairs)</h3>").format(f"{card['pairs']:,}"),
                 table(["measure", "share", "count"], [list(row) for row in rows(card)], numeric=(1,))])


def _teacher(run: RunFolder) -> Markup:
    from runner.data.teacher_stats import teacher_rows

    teacher = (run.json("pairing", "stats.json") or {}).get("teacher")
    if not teacher:
        return Markup("")
    return join([Markup("<h3>Teacher model</h3>"), key_values(teacher_rows(teacher))])


def _split_note(run: RunFolder) -> Markup:
    summary = run.json("training", "summary.json") or {}
    if "train_rows" not in summary:
        return Markup("")
    return paragraph(f"Training used {summary['train_rows']:,} rows; {summary['eval_rows']:,} "
                     "were held out for evaluation (training.eval_fraction).")


def _outcomes(run: RunFolder) -> Markup:
    outcomes = run.rows("sources", "outcomes.jsonl") or []
    if not outcomes:
        return Markup("")
    counts = Counter(o.get("status") for o in outcomes)
    failed = [o for o in outcomes if o.get("status") == "failed"]
    summary = ", ".join(f"{status}: {count:,}" for status, count in counts.most_common())
    parts = [paragraph(f"URLs requested: {len(outcomes):,} ({summary}).")]
    if failed:
        rows = [[o.get("url"), o.get("reason"), o.get("attempts"), o.get("detail")]
                for o in failed[:SHOWN_FAILURES]]
        more = f" (first {SHOWN_FAILURES}; see sources/outcomes.jsonl)" if len(failed) > SHOWN_FAILURES else ""
        parts.append(details(f"{len(failed):,} failed URLs{more}",
                             table(["url", "reason", "attempts", "detail"], rows, numeric=(2,))))
    return join(parts)


def _rules(run: RunFolder) -> Markup:
    stats = run.json("cleaning", "stats.json") or {}
    rules = stats.get("rules") or []
    if not rules:
        return Markup("")
    both = bool(stats.get("keep_headings"))
    headers = ["rule", "characters removed"] + (["from sections"] if both else [])
    rows = [[r.get("rule"), r.get("chars_removed")] + ([r.get("chars_removed_in_sections")] if both else [])
            for r in rules]
    return details(f"Cleaning rules, in order ({number(stats.get('chars_in'))} characters in)",
                   table(headers, rows, numeric=(1, 2)))


def _trimmed_bins(bins: dict) -> list[tuple[str, int]]:
    items = list(bins.items())
    used = [i for i, (_, count) in enumerate(items) if count]
    return items[used[0]: used[-1] + 1] if used else []


def lengths_section(run: RunFolder) -> Markup:
    report = run.json("validation", "data_report.json")
    if not report:
        return missing(run, "validation")
    charts = []
    for index, (name, hist) in enumerate((report.get("lengths") or {}).items()):
        stats = (f"{hist.get('count', 0):,} pairs; mean {hist.get('mean')}, min {hist.get('min')}, "
                 f"max {hist.get('max')} characters")
        chart = (histogram(_trimmed_bins(hist.get("bins", {})), f"{name.capitalize()} length",
                           color=PALETTE[index % 2], x_label="characters")
                 if hist.get("count") else Markup(""))
        charts.append(Markup("<div>{}{}</div>").format(chart, paragraph(stats)))
    examples = report.get("examples") or []
    return join([notice(run, "validation"), Markup('<div class="grid">{}</div>').format(join(charts)),
                 details(f"{len(examples)} random kept pairs", _examples(examples)) if examples else None])


def _examples(examples: list[dict]) -> Markup:
    parts = []
    for number_, pair in enumerate(examples, 1):
        source = pair.get("provenance") or {}
        where = " > ".join(source.get("heading_path") or []) or source.get("url") or source.get("document_id") or ""
        parts += [Markup("<h3>Example {}{}</h3>").format(number_, f" ({where})" if where else ""),
                  Markup('<div class="label muted">Instruction</div>'), pre(pair.get("instruction", "")),
                  Markup('<div class="label muted">Response</div>'), pre(pair.get("response", ""))]
    return join(parts)


def _highlighted(text: str, trained: str) -> Markup:
    """The full row with its trained part marked (the trained text is the row's answer)."""
    start = text.rfind(trained) if trained else -1
    if start < 0:
        return pre(text)
    return Markup("<pre>{}<mark>{}</mark>{}</pre>").format(
        text[:start], trained, text[start + len(trained):])


def mask_section(run: RunFolder) -> Markup:
    report = run.json("chat_template", "mask_report.json")
    if not report:
        return missing(run, "chat_template")
    example, mask = report.get("example") or {}, report.get("mask") or {}
    share = report.get("share_trained") or 0.0
    bars = [Bar("tokens trained", report.get("tokens_trained", 0),
                f"{report.get('tokens_trained', 0):,} of {report.get('tokens_total', 0):,} "
                f"({share:.1%})", PALETTE[2], whole=report.get("tokens_total") or 1)]
    facts = key_values([
        ("rows in / out", f"{report.get('rows_in', 0):,} / {report.get('rows_out', 0):,}"),
        ("over max_seq_length", f"{report.get('overlong', 0)} (dropped {report.get('dropped_overlong', 0)}, "
                                f"truncated {report.get('truncated', 0)})"),
        ("share of tokens trained", f"{share:.1%}"),
        ("average row", f"{report.get('avg_tokens', 0):.0f} tokens, {report.get('avg_text_chars', 0):.0f} "
                        f"characters (longest {report.get('max_tokens', 0)} tokens)"),
        ("mask", f"{mask.get('mask')}: response_part {mask.get('response_part')!r}, "
                 f"end_token {mask.get('end_token')!r}"),
        ("template", (report.get("template") or {}).get("source")),
        ("every row verified", report.get("every_row_verified")),
    ])
    return join([notice(run, "chat_template"), hbars(bars, "Share of tokens trained"), facts,
                 Markup("<h3>Example: row {} ({} of {} tokens trained)</h3>").format(
                     example.get("row"), example.get("trained_tokens"), example.get("tokens")),
                 paragraph("Trained tokens, decoded:"), pre(example.get("trained_text", "")),
                 paragraph("The full row (the highlighted part is trained, the rest is masked):"),
                 _highlighted(example.get("text", ""), example.get("trained_text", ""))])
