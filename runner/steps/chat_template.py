"""chat_template: pairs -> rendered chat rows with a verified response-only loss mask.

Every row is rendered with the chosen template (pinned date, reasoning effort, optional system
prompt), fixed by the replace rules, checked for required/forbidden text, tokenized the way
training tokenizes it and labelled the way training labels it. Any wrong row stops the run
here, before training, with the row on screen.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from runner.artifacts import hash_bytes, hash_file, read_jsonl, write_json, write_jsonl
from runner.chat.resolved import CHAT_FILE
from runner.errors import StepError
from runner.registry import StepContext, step

SHOWN_ROWS = 3  # offending rows shown in an error
# What chat.json records for later steps: the markers in effect and where each came from.
CHAT_KEYS = ("mask", "template_kind", "instruction_part", "response_part", "end_token",
             "instruction_part_from", "response_part_from", "end_token_from", "require",
             "channel_fix", "stop_tokens")


@dataclass
class Row:
    index: int
    pair: dict
    messages: list[dict]
    text: str
    spans: list[tuple[int, int]]
    ids: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    truncated: bool = False

    @property
    def expected(self) -> str:
        return self.messages[-1]["content"]


def _fingerprint(settings: dict, recipe_dir: Path):
    """A template file's content is part of the cache key."""
    if settings.get("template", "tokenizer") == "tokenizer":
        return None
    path = Path(recipe_dir) / settings["template"]
    return hash_file(path) if path.is_file() else None


# The model settings this step reads (tokenizer, stop tokens, row length); the rest of `model`
# (4-bit loading, dtype, attention...) does not change its output, so it is not in the key.
MODEL_KEYS = ("model.name", "model.revision", "model.tiny", "model.max_seq_length")


@step("chat_template", inputs=["validation"], uses=MODEL_KEYS,
      outputs=["dataset.jsonl", "mask_report.json", "mask_report.md", "chat_template.jinja",
               CHAT_FILE],
      version=2, fingerprint=_fingerprint)
def chat_template(ctx: StepContext) -> dict:
    """Render pairs with the chat template, fix, check, and verify the loss mask of every row.
    Markers left on "auto" are read off the template; chat.json holds the ones in effect."""
    from runner.chat.chat_format import resolve_template
    from runner.models import load_tokenizer

    model = ctx.sections["model"]
    pairs = list(read_jsonl(ctx.inputs["validation"] / "pairs.jsonl"))
    if not pairs:
        raise StepError("validation/pairs.jsonl has no pairs: nothing to format; check the "
                        "counts of the earlier steps")
    tokenizer = load_tokenizer(model, ctx.recipe_dir)
    template, source = resolve_template(ctx.settings, tokenizer, ctx.recipe_dir)
    settings = _effective_settings(ctx, tokenizer, template)
    ctx.log(f"template: {source}; mask: {settings['mask']}; {settings['template_kind']} markers "
            f"{settings['instruction_part']!r} / {settings['response_part']!r} / "
            f"{settings['end_token']!r}")
    rows, fix_counts = _render_rows(ctx, settings, pairs, tokenizer, template)
    _check_format(rows, settings)
    _label_and_verify(ctx, settings, rows, tokenizer)
    kept, overlong = _fit_length(rows, tokenizer, settings, int(model["max_seq_length"]))
    if not kept:
        raise StepError(f"every row is longer than model.max_seq_length "
                        f"({model['max_seq_length']} tokens): raise it, or set "
                        "chat_template.overlong: truncate")
    return _write_outputs(ctx, settings, kept, tokenizer, template, source,
                          {"rows_in": len(pairs), "fixes": fix_counts, **overlong})


def _effective_settings(ctx, tokenizer, template: str) -> dict:
    """The section with its "auto" markers, checks and fixes resolved from the template, after
    checking that the template's end-of-turn token is one the model stops generating at."""
    from runner.chat.chat_format import fix_rules, template_renderer
    from runner.chat.template_markers import derive_markers, end_token_problem, resolve_markers
    from runner.models import stop_token_ids

    specials = special_tokens(tokenizer)
    # Read once as written (is it harmony? that decides the channel fix), then as fixed: the
    # markers must be the ones the fixed rows carry.
    raw = derive_markers(template_renderer(tokenizer, template, ctx.settings, []), specials)
    rules = fix_rules({**ctx.settings, **resolve_markers(ctx.settings, raw)[0]})
    derived = (derive_markers(template_renderer(tokenizer, template, ctx.settings, rules), specials)
               if rules else raw)
    resolved, conflicts = resolve_markers(ctx.settings, derived)
    settings = {**ctx.settings, **resolved}
    _check_markers(settings)
    stop_ids = stop_token_ids(ctx.sections["model"], ctx.recipe_dir, tokenizer)
    problem = end_token_problem(settings["end_token"], tokenizer, stop_ids)
    if conflicts or problem:
        raise StepError("chat_template: the chat settings cannot train this model correctly:\n  - "
                        + "\n  - ".join(conflicts + ([problem] if problem else []))
                        + f"\n  (markers read off the template: {derived.as_dict()})")
    settings["stop_tokens"] = [tokenizer.convert_ids_to_tokens(i) for i in stop_ids]
    return settings


def special_tokens(tokenizer) -> list[str]:
    added = [token.content for token in tokenizer.added_tokens_decoder.values() if token.special]
    return sorted(set(added) | set(tokenizer.all_special_tokens))


def _check_markers(settings: dict) -> None:
    for key in ("response_part", "end_token") + (("instruction_part",)
                                                 if settings["mask"] == "markers" else ()):
        if not settings.get(key):
            raise StepError(f"chat_template.{key} is empty: set it to the text the template "
                            "writes there, or \"auto\" to read it off the template")


def _render_rows(ctx, settings, pairs, tokenizer, template) -> tuple[list[Row], list[dict]]:
    from jinja2 import TemplateError

    from runner.chat.chat_format import apply_fixes, build_messages, end_at_end_token, fix_rules, render

    rules = fix_rules(settings)
    counts = [0] * len(rules)
    rows = []
    for index, pair in enumerate(ctx.progress(pairs, total=len(pairs), desc="render", unit="row")):
        messages = build_messages(pair, settings["system_prompt"])
        try:
            rendered = render(messages, tokenizer, template, settings)
        except TemplateError as error:
            raise StepError(f"the chat template failed on row {index} "
                            f"({_where(pair)}): {error}") from error
        rendered, fired = apply_fixes(end_at_end_token(rendered, settings["end_token"]), rules)
        for rule in fired:
            counts[rule] += 1
        rows.append(Row(index, pair, messages, rendered.text, rendered.spans))
    return rows, [{**rule, "rows_changed": count} for rule, count in zip(rules, counts, strict=True)]


def _check_format(rows: list[Row], settings: dict) -> None:
    from runner.chat.chat_format import check_failures

    failing: dict[str, list[Row]] = {}
    for row in rows:
        for failure in check_failures(row.text, settings["require"], settings["forbid"]):
            failing.setdefault(failure, []).append(row)
    if not failing:
        return
    lines = ["chat_template: rendered rows fail the format checks (chat_template.require / "
             "forbid), so training would learn a broken format:"]
    for failure, bad in failing.items():
        lines.append(f"  {failure}: {len(bad)} of {len(rows)} rows "
                     f"(rows {', '.join(str(r.index) for r in bad[:10])}"
                     f"{', ...' if len(bad) > 10 else ''})")
    shown = {row.index: row for bad in failing.values() for row in bad[:SHOWN_ROWS]}
    for row in list(shown.values())[:SHOWN_ROWS]:
        lines.append(f"  row {row.index} ({_where(row.pair)}):\n    {_excerpt(row.text)}")
    lines.append("  hint: fix the template, add a chat_template.fixes rule, or correct the "
                 "check list")
    raise StepError("\n".join(lines))


def _label_and_verify(ctx, settings: dict, rows: list[Row], tokenizer) -> None:
    """Tokenize and label every full row, then demand the trained text be exactly the answer."""
    from runner.chat.loss_mask import labels_problem

    prefix = settings["response_part"] if settings["mask"] == "template" else ""
    problems = []
    for row in ctx.progress(rows, total=len(rows), desc="verify mask", unit="row"):
        row.ids, row.labels = _tokenize_and_label(row, tokenizer, settings)
        problem = labels_problem(tokenizer, row.ids, row.labels,
                                 row.expected + settings["end_token"], allowed_prefix=prefix)
        if problem:
            problems.append((row, _explain(row, problem, settings)))
    if problems:
        raise StepError(_mask_error(problems, len(rows), settings))


def _tokenize_and_label(row: Row, tokenizer, settings: dict) -> tuple[list[int], list[int]]:
    from runner.chat.loss_mask import encode_with_spans, response_only_labels

    if settings["mask"] == "template":
        return encode_with_spans(tokenizer, row.text, row.spans)
    ids = list(tokenizer(row.text, add_special_tokens=False)["input_ids"])
    return ids, response_only_labels(ids, tokenizer, settings["instruction_part"],
                                     settings["response_part"])


def _explain(row: Row, problem: str, settings: dict) -> str:
    marker = settings["response_part"]
    if settings["mask"] == "markers" and marker not in row.text:
        return (f"response_part {marker!r} never appears in the rendered text, so no token "
                "of the answer is trained")
    if settings["mask"] == "markers" and problem.startswith("no token"):
        return (f"response_part {marker!r} is in the text but not as the same tokens (it "
                "tokenizes differently in context): no token is trained")
    if settings["mask"] == "template" and not row.spans:
        return "the template marks no {% generation %} block in this row: " + problem
    if settings["end_token"] not in row.text:
        return f"end_token {settings['end_token']!r} never appears in the row: {problem}"
    return problem


def _mask_error(problems, total: int, settings: dict) -> str:
    markers = (f"instruction_part {settings['instruction_part']!r}, "
               if settings["mask"] == "markers" else "")
    lines = [f"chat_template: the response-only loss mask is wrong in {len(problems)} of "
             f"{total} rows (mask: {settings['mask']}, {markers}response_part "
             f"{settings['response_part']!r}, end_token {settings['end_token']!r}):"]
    for row, reason in problems[:SHOWN_ROWS]:
        lines.append(f"  row {row.index} ({_where(row.pair)}): {reason}\n    text: "
                     f"{_excerpt(row.text)}")
    lines.append("  hint: set chat_template.response_part / instruction_part / end_token to "
                 "the exact text around the answer in the rows above, or fix the template")
    return "\n".join(lines)


def _fit_length(rows: list[Row], tokenizer, settings: dict, limit: int) -> tuple[list[Row], dict]:
    """Drop or cut rows over the limit; a cut row that keeps no answer token is dropped."""
    counts = {"overlong": 0, "dropped_overlong": 0, "truncated": 0,
              "dropped_truncated_without_answer": 0}
    kept = []
    for row in rows:
        if len(row.ids) <= limit:
            kept.append(row)
            continue
        counts["overlong"] += 1
        if settings["overlong"] == "drop" or not _truncate(row, tokenizer, settings, limit):
            counts["dropped_overlong" if settings["overlong"] == "drop"
                   else "dropped_truncated_without_answer"] += 1
            continue
        counts["truncated"] += 1
        kept.append(row)
    return kept, counts


def _truncate(row: Row, tokenizer, settings: dict, limit: int) -> bool:
    """Cut the row to `limit` tokens as text that re-tokenizes to exactly those tokens."""
    from runner.chat.loss_mask import labels_problem

    for length in range(limit, 0, -1):
        text = tokenizer.decode(row.ids[:length], skip_special_tokens=False,
                                clean_up_tokenization_spaces=False)
        if list(tokenizer(text, add_special_tokens=False)["input_ids"]) == row.ids[:length]:
            break
    else:
        return False
    row.text, row.truncated = text, True
    row.ids, row.labels = _tokenize_and_label(row, tokenizer, settings)
    prefix = settings["response_part"] if settings["mask"] == "template" else ""
    return labels_problem(tokenizer, row.ids, row.labels, row.expected + settings["end_token"],
                          allowed_prefix=prefix, truncated=True) is None


def _write_outputs(ctx, settings: dict, rows: list[Row], tokenizer, template: str, source: str,
                   counts: dict) -> dict:
    from runner.chat.mask_report import build_report, render_markdown

    def records():
        for row in rows:
            record = {"text": row.text, "messages": row.messages,
                      "provenance": row.pair.get("provenance", {}),
                      "num_tokens": len(row.ids),
                      "num_trained_tokens": sum(label != -100 for label in row.labels)}
            if settings["mask"] == "template":
                record["trained_spans"] = [list(span) for span in row.spans]
            yield record

    write_jsonl(ctx.out_dir / "dataset.jsonl", records())
    (ctx.out_dir / "chat_template.jinja").write_text(template, encoding="utf-8")
    write_json(ctx.out_dir / CHAT_FILE, {key: settings[key] for key in CHAT_KEYS})
    report = build_report(rows, tokenizer, settings, counts,
                          {"source": source, "sha256": hash_bytes(template.encode())})
    write_json(ctx.out_dir / "mask_report.json", report)
    (ctx.out_dir / "mask_report.md").write_text(render_markdown(report), encoding="utf-8")
    ctx.log(f"{report['rows_out']} rows, {report['share_trained']:.1%} of tokens trained; "
            f"dropped {counts['dropped_overlong'] + counts['dropped_truncated_without_answer']},"
            f" truncated {counts['truncated']}")
    ctx.log(f"row {report['example']['row']} trains: {report['example']['trained_text'][:200]!r}")
    return {key: report[key] for key in ("rows_in", "rows_out", "share_trained", "tokens_total",
                                         "tokens_trained", "dropped_overlong", "truncated")}


def _where(pair: dict) -> str:
    provenance = pair.get("provenance") or {}
    parts = [f"document {provenance['document_id']}" if provenance.get("document_id") else "",
             provenance.get("url") or "",
             " > ".join(provenance.get("heading_path") or [])]
    return ", ".join(p for p in parts if p) or "no provenance"


def _excerpt(text: str, head: int = 160, tail: int = 320) -> str:
    return repr(text if len(text) <= head + tail else text[:head] + " … " + text[-tail:])
