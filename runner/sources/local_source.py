"""`type: local`: files and globs - HTML, Markdown, reStructuredText, plain text, JSONL.

Relative paths and globs start at the recipe's folder; `**` recurses. HTML goes through the same
converter as fetched pages, on every core. JSONL maps its fields (`fields:`) onto documents and
may carry `qa` / `messages` for the `fields` pairing strategy.
"""

from __future__ import annotations

import fnmatch
import glob
import json
from collections import Counter
from pathlib import Path

from runner.artifacts import hash_file
from runner.errors import StepError
from runner.sources.documents import (
    SourceResult,
    convert_html_files,
    document_id,
    failure_outcome,
    make_document,
    markdown_title,
)

FORMATS_BY_SUFFIX = {".html": "html", ".htm": "html", ".xhtml": "html", ".md": "markdown",
                     ".markdown": "markdown", ".rst": "rst", ".rest": "rst", ".txt": "text",
                     ".text": "text", ".jsonl": "jsonl", ".ndjson": "jsonl"}
FIELD_DEFAULTS = {"id": "", "title": "title", "text": "text", "question": "question",
                  "answer": "answer", "messages": "messages"}


def run_local(ctx, entry: dict, index: int) -> SourceResult:
    label = f"sources[{index}] (local)"
    if entry.get("optional") and not _any_match(entry, Path(ctx.recipe_dir)):
        ctx.log(f"{label}: nothing matches {entry['paths']} (optional: skipped)")
        return SourceResult(iter(()), [], {"files": 0, "optional_missing": True})
    files, skipped = matched_files(entry, Path(ctx.recipe_dir), label)
    formats = Counter(file_format(path, entry["format"]) for path in files)
    ctx.log(f"{label}: {len(files)} files ({', '.join(f'{k} {v}' for k, v in formats.items())})"
            + (f"; {skipped} of unknown type left out" if skipped else ""))
    # Filled while the documents stream (the step reads both only after the last document).
    failures: Counter = Counter()
    outcomes: list[dict] = []
    metrics = {"files": len(files), "files_by_format": dict(formats), "unknown_type_skipped": skipped,
               "conversion_failed_by_reason": failures}
    bar = ctx.progress(total=len(files), desc="local files", unit="file")
    documents = _documents(files, entry, Path(ctx.recipe_dir), bar, failures, outcomes)
    return SourceResult(documents, outcomes, metrics)


def fingerprint_files(entry: dict, recipe_dir: Path) -> list[list[str]]:
    """(path, content hash) of every file the entry reads: an edited file re-runs the step."""
    try:
        files, _ = matched_files(entry, recipe_dir, "local")
    except StepError:
        return []      # the step itself reports the problem when it runs
    return [[str(path), hash_file(path)] for path in files]


def _any_match(entry: dict, recipe_dir: Path) -> bool:
    return any(_expand(pattern, recipe_dir) for pattern in entry["paths"])


def matched_files(entry: dict, recipe_dir: Path, label: str) -> tuple[list[Path], int]:
    """The files to read, in the order given (globs sorted), and how many were of unknown type."""
    found: dict[Path, None] = {}
    missing = []
    for pattern in entry["paths"]:
        matches = _expand(pattern, recipe_dir)
        if not matches:
            missing.append(pattern)
        found.update((path, None) for path in matches)
    if missing:
        raise StepError(f"{label}: nothing found for {', '.join(map(repr, missing))} "
                        f"(relative paths start at the recipe folder {recipe_dir}); fix the path "
                        "or glob, or remove it from `paths`")
    kept = [p for p in found if not _excluded(p, entry["exclude"], recipe_dir)]
    known = [p for p in kept if file_format(p, entry["format"]) is not None]
    if not known:
        raise StepError(f"{label}: no readable file among {len(kept)} matched (known types: "
                        f"{', '.join(sorted(FORMATS_BY_SUFFIX))}); set `format:` to read others")
    return known[: entry["max_files"] or None], len(kept) - len(known)


def file_format(path: Path, declared: str) -> str | None:
    return FORMATS_BY_SUFFIX.get(path.suffix.lower()) if declared == "auto" else declared


def _expand(pattern: str, recipe_dir: Path) -> list[Path]:
    full = Path(pattern).expanduser()
    full = full if full.is_absolute() else recipe_dir / full
    if glob.has_magic(str(full)):
        return sorted(Path(p).resolve() for p in glob.glob(str(full), recursive=True)
                      if Path(p).is_file())
    if full.is_dir():
        return sorted(p.resolve() for p in full.rglob("*") if p.is_file())
    return [full.resolve()] if full.is_file() else []


def _excluded(path: Path, patterns: list[str], recipe_dir: Path) -> bool:
    shown = _display(path, recipe_dir)
    return any(fnmatch.fnmatch(shown, p) or fnmatch.fnmatch(path.name, p)
               or fnmatch.fnmatch(str(path), p) for p in patterns)


def _display(path: Path, recipe_dir: Path) -> str:
    try:
        return path.relative_to(recipe_dir.resolve()).as_posix()
    except ValueError:
        return str(path)


def _documents(files: list[Path], entry: dict, recipe_dir: Path, bar, failures: Counter,
               outcomes: list[dict]):
    """The files' documents in order; a file that cannot be converted gives an outcome line
    with its reason instead (and is counted in `failures`)."""
    encoding = entry["encoding"]
    html_files = [(p, encoding) for p in files if file_format(p, entry["format"]) == "html"]
    converted = convert_html_files(html_files, entry["main_content"])
    with bar:
        for path in files:
            kind = file_format(path, entry["format"])
            shown = _display(path, recipe_dir)
            meta = {"format": kind, "bytes": path.stat().st_size}
            if kind == "jsonl":
                yield from _jsonl_documents(path, shown, entry)
            elif kind == "html":
                page = next(converted)
                if page.failure is None:
                    yield make_document("local", title=page.title or path.stem,
                                        markdown=page.markdown, path=shown, metadata=meta)
                else:
                    failures[page.failure[0]] += 1
                    outcomes.append(failure_outcome(page.failure, path=shown))
            else:
                text = path.read_text(encoding=encoding, errors="replace")
                markdown = _as_markdown(text, kind)
                title = markdown_title(markdown, path.stem) if kind != "text" else path.stem
                yield make_document("local", title=title, markdown=markdown, path=shown,
                                    metadata=meta)
            bar.update(1)


def _as_markdown(text: str, kind: str) -> str:
    if kind == "rst":
        from runner.sources.rst_markdown import rst_to_markdown
        return rst_to_markdown(text)
    from runner.sources.html_markdown import tidy_markdown
    return tidy_markdown(text)


def _jsonl_documents(path: Path, shown: str, entry: dict):
    fields = entry["fields"]
    with open(path, encoding=entry["encoding"], errors="replace") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise StepError(f"{shown}:{number}: not a JSON object ({exc}); fix the line or "
                                "remove it") from None
            if not isinstance(row, dict):
                raise StepError(f"{shown}:{number}: expected a JSON object, got {type(row).__name__}")
            yield _row_document(row, shown, number, fields)


def _row_document(row: dict, shown: str, number: int, fields: dict) -> dict:
    names = {**FIELD_DEFAULTS, **{k: v for k, v in fields.items() if v}}
    row_id = str(row[names["id"]]) if names["id"] and names["id"] in row else f"line {number}"
    extra = {}
    question, answer = row.get(names["question"]), row.get(names["answer"])
    if isinstance(question, str) and isinstance(answer, str):
        extra["qa"] = {"question": question, "answer": answer}
    if isinstance(row.get(names["messages"]), list):
        extra["messages"] = row[names["messages"]]
    text = row.get(names["text"])
    mapped = set(names.values())
    metadata = {"format": "jsonl", "line": number, **{k: v for k, v in row.items() if k not in mapped}}
    title = row.get(names["title"]) or f"{Path(shown).stem} {number}"
    return make_document("local", doc_id=document_id(shown, row_id), title=str(title),
                         markdown=text if isinstance(text, str) else "", path=shown,
                         metadata=metadata, **extra)
