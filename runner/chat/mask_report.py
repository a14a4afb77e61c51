"""The chat_template step's report: counts, share of tokens trained, one decoded example."""

from __future__ import annotations

from runner.chat.loss_mask import trained_text


def build_report(rows, tokenizer, settings: dict, counts: dict, template: dict) -> dict:
    """rows: the kept rows (text, ids, labels); counts: rows_in, fixes and overlong counters."""
    total = sum(len(row.ids) for row in rows)
    trained = sum(sum(label != -100 for label in row.labels) for row in rows)
    example = rows[0]
    return {
        "rows_in": counts["rows_in"],
        "rows_out": len(rows),
        "overlong": counts["overlong"],
        "dropped_overlong": counts["dropped_overlong"],
        "truncated": counts["truncated"],
        "dropped_truncated_without_answer": counts["dropped_truncated_without_answer"],
        "tokens_total": total,
        "tokens_trained": trained,
        "share_trained": trained / total if total else 0.0,
        "avg_text_chars": sum(len(row.text) for row in rows) / len(rows),
        "avg_tokens": total / len(rows),
        "max_tokens": max(len(row.ids) for row in rows),
        "every_row_verified": True,
        "mask": {key: settings[key] for key in ("mask", "instruction_part", "response_part",
                                                "end_token")},
        "markers": {key: {"value": settings[key], "from": settings.get(f"{key}_from", "recipe")}
                    for key in ("instruction_part", "response_part", "end_token")},
        "template_kind": settings.get("template_kind", "harmony"),
        "rendering": {key: settings[key] for key in ("reasoning_effort", "current_date",
                                                     "system_prompt")},
        "template": template,
        "fixes": counts["fixes"],
        "checks": {"require": list(settings["require"]), "forbid": list(settings["forbid"]),
                   "passed": True},
        "example": {"row": example.index, "text": example.text,
                    "tokens": len(example.ids),
                    "trained_tokens": sum(label != -100 for label in example.labels),
                    "trained_text": trained_text(tokenizer, example.ids, example.labels)},
    }


def _fence(text: str) -> str:
    """A code fence longer than any backtick run inside the text."""
    import re
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def _cell(text: str) -> str:
    # GitHub tables split cells at every "|", even inside code spans, unless it is escaped.
    # A newline would end the table row; show it the way the markers are written in YAML.
    return f"`{text}`".replace("|", "\\|").replace("\n", "\\n")


def _origins(report: dict) -> str:
    markers = report.get("markers") or {}
    read = [key for key, entry in markers.items() if entry["from"] == "template"]
    given = [key for key, entry in markers.items() if entry["from"] != "template"]
    parts = ([f"read off the {report.get('template_kind', '')} template: {', '.join(read)}"]
             if read else []) + ([f"set in the recipe: {', '.join(given)}"] if given else [])
    return "; ".join(parts) or "set in the recipe"


def render_markdown(report: dict) -> str:
    mask, example = report["mask"], report["example"]
    text_fence, trained_fence = _fence(example["text"]), _fence(example["trained_text"])
    fixes = "\n".join(f"| {_cell(f['find'])} | {_cell(f['replace'])} | {f['rows_changed']} |"
                      for f in report["fixes"]) or "| (none) | | |"
    return f"""# Chat template and loss mask report

Every row was verified: it has at least one trained token, and its trained tokens decode to
exactly the assistant answer followed by `{mask['end_token']}`.

| | |
|---|---|
| rows in / out | {report['rows_in']} / {report['rows_out']} |
| over max_seq_length | {report['overlong']} (dropped {report['dropped_overlong']}, truncated {report['truncated']}, dropped after truncation {report['dropped_truncated_without_answer']}) |
| tokens trained / total | {report['tokens_trained']} / {report['tokens_total']} ({report['share_trained']:.1%}) |
| average text length | {report['avg_text_chars']:.0f} chars, {report['avg_tokens']:.0f} tokens (max {report['max_tokens']}) |
| mask | {mask['mask']}: instruction_part {_cell(mask['instruction_part'])}, response_part {_cell(mask['response_part'])}, end_token {_cell(mask['end_token'])} |
| markers | {_origins(report)} |
| template | {report['template']['source']} (sha256 {report['template']['sha256'][:12]}) |
| date / reasoning | {report['rendering']['current_date']} / {report['rendering']['reasoning_effort']} |

## Fixes

| find | replace | rows changed |
|---|---|---|
{fixes}

## Example (row {example['row']}, {example['trained_tokens']} of {example['tokens']} tokens trained)

Full text:

{text_fence}text
{example['text']}
{text_fence}

Trained tokens, decoded:

{trained_fence}text
{example['trained_text']}
{trained_fence}
"""
