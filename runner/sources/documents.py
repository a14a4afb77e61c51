"""Building `documents.jsonl` rows, and converting many HTML pages on every core.

A row: {"id", "source", "url", "path", "title", "markdown", "metadata"} (+ "qa" / "messages"
for JSONL sources that carry them). Ids are stable: sha1 of the URL or path, 16 hex digits.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

# Below this many pages the start-up of worker processes costs more than it saves.
POOL_THRESHOLD = 8


@dataclass
class SourceResult:
    """What one entry of `sources` produced; `documents` may be lazy (written as it streams)."""
    documents: Iterable[dict]
    outcomes: list[dict] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)


def document_id(*parts: str) -> str:
    return hashlib.sha1("\0".join(parts).encode("utf-8")).hexdigest()[:16]


def make_document(source: str, *, title: str, markdown: str, url: str | None = None,
                  path: str | None = None, metadata: dict | None = None, doc_id: str = "",
                  **extra) -> dict:
    doc = {"id": doc_id or document_id(url or path or title), "source": source, "url": url,
           "path": path, "title": title, "markdown": markdown, "metadata": metadata or {}}
    doc.update(extra)
    return doc


def markdown_title(markdown: str, fallback: str) -> str:
    """The first `#` heading of a markdown text, else the fallback."""
    for line in markdown.splitlines():
        stripped = line.strip()
        if stripped.startswith("#") and stripped.lstrip("#").strip():
            return stripped.lstrip("#").strip()
    return fallback


@dataclass(frozen=True)
class Converted:
    """One converted page; `failure` is (reason, detail) when it could not be converted."""
    title: str
    markdown: str
    failure: tuple[str, str] | None = None


def convert_html_files(items: list[tuple[Path, str]], main_content: bool,
                       progress=None) -> Iterator[Converted]:
    """(path, encoding) pairs -> a Converted per file, in order, on every core."""
    from runner.data.parallel import ordered_map, worker_count

    jobs = [(str(path), encoding, main_content) for path, encoding in items]
    workers = min(worker_count(0), len(jobs)) if len(jobs) >= POOL_THRESHOLD else 1
    # Small chunks: a few pages (genindex, contents) take 20x longer than the rest.
    results = ordered_map(_convert_file, jobs, workers=workers, initializer=_no_setup, chunksize=2)
    yield from _ticked(results, progress)


def _no_setup() -> None:
    """Workers need no state: each job names its file."""


def _ticked(results: Iterable, progress) -> Iterator:
    for result in results:
        if progress is not None:
            progress.update(1)
        yield result


def _convert_file(job: tuple[str, str, bool]) -> Converted:
    from runner.sources.html_markdown import ConversionError, html_to_markdown

    path, encoding, main_content = job
    try:
        html = Path(path).read_text(encoding=encoding, errors="replace")
    except OSError as exc:
        return Converted("", "", ("read_error", f"{type(exc).__name__}: {exc}"))
    except LookupError as exc:      # an encoding Python does not know
        return Converted("", "", ("unknown_encoding", str(exc)))
    try:
        return Converted(*html_to_markdown(html, main_content=main_content))
    except ConversionError as exc:
        return Converted("", "", (exc.reason, exc.detail))


def failure_outcome(failure: tuple[str, str] | None, **where) -> dict | None:
    """An outcomes.jsonl line for a page that gave no document, or None when it converted."""
    if failure is None:
        return None
    return {**where, "status": "failed", "reason": failure[0], "detail": failure[1][:300]}


def web_documents(outcomes, cache, source: str, main_content: bool = True,
                  progress=None, failures: Counter | None = None,
                  rows: dict[str, dict] | None = None) -> Iterator[dict]:
    """Documents from the cached bodies of the pages fetched (or found cached), in URL order;
    a page that cannot be converted is counted in `failures` by reason, noted in its outcome
    row (`rows`, by URL) and gives no document."""
    from runner.sources.html_markdown import tidy_markdown

    pages = [(o, cache.get(o.url)) for o in outcomes if o.status in ("fetched", "cached")]
    pages = [(o, meta) for o, meta in pages if meta is not None]
    html_items = [(cache.body_path(o.url), "utf-8") for o, meta in pages if _is_html(meta)]
    converted = convert_html_files(html_items, main_content)
    for outcome, meta in pages:
        if progress is not None:
            progress.update(1)
        if _is_html(meta):
            page = next(converted)
            title, markdown = page.title, page.markdown
            if page.failure is not None:
                if failures is not None:
                    failures[page.failure[0]] += 1
                if rows is not None and outcome.url in rows:
                    rows[outcome.url]["conversion"] = {"reason": page.failure[0],
                                                       "detail": page.failure[1][:300]}
                continue
        else:
            markdown = tidy_markdown(cache.body(outcome.url))
            title = markdown_title(markdown, "")
        # Nothing run-specific (cached or not, attempts): same pages, same documents, same hash.
        metadata = {key: meta.get(key) for key in ("fetched_at", "status", "bytes", "content_type")}
        yield make_document(source, title=title or outcome.url, markdown=markdown,
                            url=outcome.url, metadata=metadata)


def _is_html(meta: dict) -> bool:
    content_type = (meta.get("content_type") or "").lower()
    return "html" in content_type or "xml" in content_type
