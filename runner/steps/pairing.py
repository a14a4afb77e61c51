"""The pairing step: cleaned documents -> instruction/response pairs; `strategy` picks how.

Every strategy streams documents in and pairs out, writes pairs.jsonl and stats.json (pairs made,
drops per reason, and the cleaning step's statistics carried forward for the data report).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from itertools import pairwise
from pathlib import Path

from runner.artifacts import read_json, read_jsonl, write_json, write_jsonl
from runner.errors import StepError
from runner.registry import StepContext, step

OUTPUTS = ["pairs.jsonl", "stats.json"]


def _cleaned(ctx: StepContext) -> tuple[Path, dict]:
    folder = ctx.inputs["cleaning"]
    path = folder / "documents.jsonl"
    if not path.exists():
        raise StepError(f"pairing: {path} is missing; run the cleaning step first")
    stats_path = folder / "stats.json"
    return path, read_json(stats_path) if stats_path.exists() else {}


def _run(ctx: StepContext, make_pairs: Callable[[dict, Counter], Iterable[dict]],
         cleaning_stats: dict, documents: Path) -> tuple[int, Counter, int]:
    dropped: Counter = Counter()
    counts = {"documents": 0}

    def pairs() -> Iterator[dict]:
        for doc in ctx.progress(read_jsonl(documents), total=cleaning_stats.get("documents"),
                                desc="documents", unit="doc"):
            counts["documents"] += 1
            yield from make_pairs(doc, dropped)

    made = write_jsonl(ctx.out_dir / "pairs.jsonl", pairs())
    write_json(ctx.out_dir / "stats.json", {
        "strategy": ctx.settings["strategy"], "documents": counts["documents"], "pairs": made,
        "dropped": dict(dropped.most_common()), "upstream": {"cleaning": cleaning_stats}})
    ctx.log(f"{made} pairs from {counts['documents']} documents"
            + (f" (dropped: {_reasons(dropped)})" if dropped else ""))
    return made, dropped, counts["documents"]


def _reasons(dropped: Counter) -> str:
    return ", ".join(f"{reason} {count}" for reason, count in dropped.most_common())


def _provenance(doc: dict, heading_path: list | None = None) -> dict:
    return {"document_id": doc.get("id"), "url": doc.get("url"),
            "heading_path": heading_path or []}


@step("pairing", "consecutive_sentences", inputs=["cleaning"], outputs=OUTPUTS, version=2)
def consecutive_sentences(ctx: StepContext) -> dict:
    """The hand-run workflow's pairing: within each document, sentence i (cut to
    `instruction_max_chars`) -> sentence i+1 (cut to `response_max_chars`), kept when the
    instruction is longer than `instruction_min_chars` and the response longer than
    `response_min_chars`. Weak (a sentence is rarely a question); kept for fidelity."""
    s = ctx.settings
    documents, cleaning_stats = _cleaned(ctx)

    def make_pairs(doc: dict, dropped: Counter) -> Iterator[dict]:
        sentences = doc.get("sentences") or []
        for first, second in pairwise(sentences):
            instruction = first[: s["instruction_max_chars"]].strip()
            response = second[: s["response_max_chars"]].strip()
            if len(instruction) <= s["instruction_min_chars"]:
                dropped["instruction_too_short"] += 1
            elif len(response) <= s["response_min_chars"]:
                dropped["response_too_short"] += 1
            else:
                yield {"instruction": instruction, "response": response,
                       "provenance": {**_provenance(doc), "instruction_source": "document_text"}}

    made, _, docs = _run(ctx, make_pairs, cleaning_stats, documents)
    return {"pairs": made, "documents": docs}


@step("pairing", "heading_sections", inputs=["cleaning"], outputs=OUTPUTS, version=2)
def heading_sections(ctx: StepContext) -> dict:
    """Each heading section (levels 1..`max_heading_level`; deeper ones join their parent)
    becomes a pair: instruction = `instruction_template` (sandboxed Jinja; variables heading,
    title, heading_path, url, parent, generic, topic - a generic heading like "Examples" or one
    repeated across documents is qualified by its parent: "Examples for Counter objects"),
    response = the section text up to `response_max_chars`, cut only at a sentence end and
    never ending on ":" or a fragment; code blocks kept whole when `keep_code` (a sentence that
    introduced a left-out block goes with it). Sections shorter than `response_min_chars` are
    dropped. Needs `cleaning.keep_headings: true`."""
    from runner.data.section_pairs import SectionPairer

    documents, cleaning_stats = _cleaned(ctx)
    if cleaning_stats and not cleaning_stats.get("keep_headings"):
        raise _needs_headings()
    pairer = SectionPairer(ctx.settings, frozenset(cleaning_stats.get("repeated_headings", [])))

    def make_pairs(doc: dict, dropped: Counter) -> Iterator[dict]:
        if "sections" not in doc:
            raise _needs_headings()
        return pairer.pairs(doc, dropped)

    made, _, docs = _run(ctx, make_pairs, cleaning_stats, documents)
    return {"pairs": made, "documents": docs}


def _needs_headings() -> StepError:
    return StepError("pairing.strategy heading_sections needs the documents' heading structure, "
                     "which the cleaning step did not keep: set `cleaning.keep_headings: true`")


def _message_pairs(messages, dropped: Counter) -> Iterator[tuple[str, str]]:
    """Each user turn directly answered by an assistant turn is one pair."""
    if not isinstance(messages, list):
        dropped["messages_not_a_list"] += 1
        return
    for asked, answered in pairwise(messages):
        if not (isinstance(asked, dict) and isinstance(answered, dict)):
            continue
        if asked.get("role") == "user" and answered.get("role") == "assistant":
            yield str(asked.get("content") or ""), str(answered.get("content") or "")


@step("pairing", "fields", inputs=["cleaning"], outputs=OUTPUTS, version=2)
def fields(ctx: StepContext) -> dict:
    """Pairs that already exist in a JSONL source: a `qa` object {question, answer} gives one
    pair; a `messages` list gives one pair per user turn answered by an assistant turn (see the
    local source's `fields` setting for which columns hold them)."""
    documents, cleaning_stats = _cleaned(ctx)

    def make_pairs(doc: dict, dropped: Counter) -> Iterator[dict]:
        found = []
        if isinstance(doc.get("qa"), dict):
            found.append((str(doc["qa"].get("question") or ""), str(doc["qa"].get("answer") or "")))
        if "messages" in doc:
            found.extend(_message_pairs(doc["messages"], dropped))
        if not found and "qa" not in doc and "messages" not in doc:
            dropped["no_qa_or_messages"] += 1
        for question, answer in found:
            if question.strip() and answer.strip():
                yield {"instruction": question.strip(), "response": answer.strip(),
                       "provenance": {**_provenance(doc), "instruction_source": "source"}}
            else:
                dropped["empty_question_or_answer"] += 1

    made, dropped, docs = _run(ctx, make_pairs, cleaning_stats, documents)
    if docs and dropped["no_qa_or_messages"] == docs:
        raise StepError("pairing.strategy fields: none of the documents has a `qa` or `messages` "
                        "field; read a JSONL file with a local source (`format: jsonl`) and set "
                        "its `fields.question`/`fields.answer` or `fields.messages`")
    return {"pairs": made, "documents": docs}
