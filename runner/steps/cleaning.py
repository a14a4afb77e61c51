"""The cleaning step: ordered text rules per document, then sentence splitting and filtering."""

from __future__ import annotations

from pathlib import Path

from runner.artifacts import write_json
from runner.errors import StepError
from runner.registry import StepContext, step


def _numbered_lines(path: Path):
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                yield number, line


def _count_lines(path: Path) -> int:
    with open(path, "rb") as handle:
        return sum(block.count(b"\n") for block in iter(lambda: handle.read(1 << 22), b""))


def documents_path(ctx: StepContext) -> Path:
    path = ctx.inputs["sources"] / "documents.jsonl"
    if not path.exists():
        raise StepError(f"cleaning: {path} is missing; run the sources step first "
                        "(`recipe run RECIPE --until sources`)")
    return path


@step("cleaning", inputs=["sources"], outputs=["documents.jsonl", "stats.json"], version=2)
def clean(ctx: StepContext) -> dict:
    """Apply the text rules (`cleaning.rules`, in order) to each document's markdown, split it
    into sentences (`splitter`) and keep those longer than `min_sentence_chars`, not longer than
    `max_sentence_chars` and containing no `drop_sentences_containing` word. With
    `keep_headings`, also record the heading sections (heading path, prose blocks cleaned by the
    same rules, code blocks verbatim) for `pairing.strategy: heading_sections`. Writes
    documents.jsonl and stats.json (characters removed per rule, sentences dropped per reason).
    `workers` > 1 cleans documents in a process pool, keeping their order."""
    from runner.data.doc_cleaner import CleaningStats, DocumentCleaner, clean_line, init_worker
    from runner.data.parallel import ordered_map, worker_count

    settings = ctx.settings
    source = documents_path(ctx)
    DocumentCleaner(settings)   # a bad rule fails here, before any worker starts
    workers = worker_count(settings["workers"])
    stats = CleaningStats(settings)
    results = ordered_map(clean_line, _numbered_lines(source), workers=workers,
                          initializer=init_worker, initargs=(settings,))
    with open(ctx.out_dir / "documents.jsonl", "w", encoding="utf-8") as out:
        for number, line, doc_stats in ctx.progress(results, total=_count_lines(source),
                                                    desc="documents", unit="doc"):
            if line is None:
                raise StepError(f"cleaning: line {number} of {source} is not a JSON object; "
                                "re-run the sources step (`--force sources`)")
            out.write(line + "\n")
            stats.add(doc_stats)
    summary = stats.as_dict()
    summary["workers"] = workers
    write_json(ctx.out_dir / "stats.json", summary)
    ctx.log(f"{stats.documents} documents -> {stats.kept} sentences kept of {stats.pieces}"
            + (f", {stats.sections} sections" if settings["keep_headings"] else ""))
    if stats.documents and stats.documents == stats.empty_documents:
        ctx.log("warning: no document kept any text; check cleaning.rules and "
                "drop_sentences_containing")
    return {"documents": stats.documents, "sentences": stats.kept, "sections": stats.sections}
