"""Building `documents.jsonl` rows, and converting many HTML pages on every core.

A row: {"id", "source", "url", "path", "title", "markdown", "metadata"} (+ "qa" / "messages"
for JSONL sources that carry them). Ids are stable: sha1 of the URL or path, 16 hex digits.
"""

from __future__ import annotations

import hashlib
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


def convert_html_files(items: list[tuple[Path, str]], main_content: bool,
                       progress=None) -> Iterator[tuple[str, str]]:
    """(path, encoding) pairs -> (title, markdown) per file, in order, on every core."""
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


def _convert_file(job: tuple[str, str, bool]) -> tuple[str, str]:
    from runner.sources.html_markdown import html_to_markdown

    path, encoding, main_content = job
    html = Path(path).read_text(encoding=encoding, errors="replace")
    return html_to_markdown(html, main_content=main_content)


def web_documents(outcomes, cache, source: str, main_content: bool = True,
                  progress=None) -> Iterator[dict]:
    """Documents from the cached bodies of the pages fetched (or found cached), in URL order."""
    from runner.sources.html_markdown import tidy_markdown

    pages = [(o, cache.get(o.url)) for o in outcomes if o.status in ("fetched", "cached")]
    pages = [(o, meta) for o, meta in pages if meta is not None]
    html_items = [(cache.body_path(o.url), "utf-8") for o, meta in pages if _is_html(meta)]
    converted = convert_html_files(html_items, main_content)
    for outcome, meta in pages:
        if _is_html(meta):
            title, markdown = next(converted)
        else:
            markdown = tidy_markdown(cache.body(outcome.url))
            title = markdown_title(markdown, "")
        if progress is not None:
            progress.update(1)
        # Nothing run-specific (cached or not, attempts): same pages, same documents, same hash.
        metadata = {key: meta.get(key) for key in ("fetched_at", "status", "bytes", "content_type")}
        yield make_document(source, title=title or outcome.url, markdown=markdown,
                            url=outcome.url, metadata=metadata)


def _is_html(meta: dict) -> bool:
    content_type = (meta.get("content_type") or "").lower()
    return "html" in content_type or "xml" in content_type
