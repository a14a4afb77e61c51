"""The sources step: every entry of `sources` -> documents.jsonl (+ outcomes.jsonl per URL)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from runner.errors import StepError
from runner.registry import StepContext, step


def _readers() -> dict:
    # Imported when the step runs: `recipe validate` must stay free of aiohttp, httpx, lxml...
    from runner.sources.brightdata_source import run_brightdata
    from runner.sources.http_source import run_http
    from runner.sources.local_source import run_local
    from runner.sources.pydoc_source import run_pydoc
    return {"brightdata": run_brightdata, "http": run_http, "local": run_local, "pydoc": run_pydoc}


def fingerprint(settings: dict, recipe_dir: Path = Path(".")) -> list:
    """Local files' content hashes and pydoc modules' file hashes; fetched pages are keyed by
    their settings alone (the raw-page cache spares the network on a re-run)."""
    from runner.sources.local_source import fingerprint_files
    from runner.sources.pydoc_source import fingerprint_modules

    found = []
    for entry in settings.get("entries", []):
        if entry.get("type") == "local":
            found.append(fingerprint_files(entry, Path(recipe_dir)))
        elif entry.get("type") == "pydoc":
            found.append(fingerprint_modules(entry))
        else:
            found.append(None)
    return found


@step("sources", outputs=["documents.jsonl", "outcomes.jsonl"], fingerprint=fingerprint, version=3,
      volatile=["outcomes.jsonl"])
def sources(ctx: StepContext) -> dict:
    """Collect documents from every entry in order: `brightdata` (Bright Data Web Unlocker,
    markdown via the SDK, batch then per-URL retries), `http` (plain GET, HTML to markdown
    keeping the main content), `local` (HTML, Markdown, reST, text, JSONL files and globs) and
    `pydoc` (docstrings of installed modules). Fetched pages are cached in
    runs/<name>/cache/pages (`refresh: true` or `--force sources` fetches again). Writes
    documents.jsonl (id, source, url, path, title, markdown, metadata) and outcomes.jsonl (one
    line per URL: fetched / cached / failed with reason and attempts; one per local file that
    could not be converted, with its reason). Fails, naming the reasons, when no entry gave a
    document."""
    readers = _readers()
    seen: set[str] = set()
    totals: Counter = Counter()
    per_entry = []
    with open(ctx.out_dir / "documents.jsonl", "w", encoding="utf-8") as docs, \
            open(ctx.out_dir / "outcomes.jsonl", "w", encoding="utf-8") as outcomes:
        for index, entry in enumerate(ctx.settings["entries"]):
            result = readers[entry["type"]](ctx, entry, index)
            counts = _write_documents(result.documents, docs, seen)
            for outcome in result.outcomes:
                outcomes.write(json.dumps({"entry": index, "source": entry["type"], **outcome},
                                          ensure_ascii=False) + "\n")
            per_entry.append({"type": entry["type"], **result.metrics, **counts})
            _add(totals, result.metrics, counts)
    ctx.log(f"{totals['documents']} documents written"
            + (f" ({totals['empty']} empty and {totals['duplicates']} duplicates left out)"
               if totals["empty"] or totals["duplicates"] else ""))
    for index, entry_metrics in enumerate(per_entry):
        if entry_metrics.get("conversion_failed_by_reason"):
            ctx.log(f"sources[{index}]: {_problems(entry_metrics)} (see outcomes.jsonl)")
    if not totals["documents"]:
        raise StepError(_no_documents(per_entry, ctx.out_dir / "outcomes.jsonl"))
    return {"failed_by_reason": {}, **_plain(totals), "entries": per_entry}


def _problems(metrics: dict) -> str:
    """What kept an entry's pages from becoming documents, by reason."""
    found = [f"{reason} x{count}" for reason, count in
             sorted((metrics.get("conversion_failed_by_reason") or {}).items())]
    if metrics.get("empty"):
        found.append(f"no text left x{metrics['empty']}")
    if metrics.get("duplicates"):
        found.append(f"duplicate id x{metrics['duplicates']}")
    return "conversion failed: " + ", ".join(found) if found else "nothing read"


def _no_documents(per_entry: list[dict], outcomes: Path) -> str:
    """The zero-document error: each entry with what it read and why nothing came of it."""
    lines = ["sources: no document was written, so there is nothing to train on."]
    for index, metrics in enumerate(per_entry):
        read = metrics.get("files", metrics.get("modules", metrics.get("fetched")))
        lines.append(f"  sources[{index}] ({metrics['type']}): "
                     + (f"{read} read; " if read is not None else "") + _problems(metrics))
    first = _first_failure(outcomes)
    if first:
        lines.append(f"First failure: {first}")
    lines.append("Fix the files or pages named in outcomes.jsonl, check `format:` and "
                 "`main_content:`, or point `paths`/`urls` at documents with text.")
    return "\n".join(lines)


def _first_failure(outcomes: Path) -> str:
    with open(outcomes, encoding="utf-8") as handle:
        for line in handle:
            outcome = json.loads(line)
            if outcome.get("status") == "failed":
                where = outcome.get("path") or outcome.get("url")
                return f"{where}: {outcome.get('reason')} - {outcome.get('detail') or ''}".rstrip(" -")
    return ""


def _write_documents(documents, handle, seen: set[str]) -> dict:
    """Stream the documents out; a document without text or with an id already written is left out."""
    counts = Counter(documents=0, empty=0, duplicates=0)
    for doc in documents:
        has_text = doc["markdown"].strip() or doc.get("qa") or doc.get("messages")
        if not has_text:
            counts["empty"] += 1
        elif doc["id"] in seen:
            counts["duplicates"] += 1
        else:
            seen.add(doc["id"])
            handle.write(json.dumps(doc, ensure_ascii=False) + "\n")
            counts["documents"] += 1
    return dict(counts)


def _add(totals: Counter, metrics: dict, counts: dict) -> None:
    for key, value in {**metrics, **counts}.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, int):
            totals[key] += value
        elif isinstance(value, dict):          # counts by reason / by format
            for sub, number in value.items():
                totals[f"{key}.{sub}"] += number


def _plain(totals: Counter) -> dict:
    """Counter with dotted keys -> nested dicts: {"failed_by_reason": {"http_500": 2}, ...}."""
    result: dict = {}
    for key, value in sorted(totals.items()):
        head, _, sub = key.partition(".")
        if sub:
            result.setdefault(head, {})[sub] = value
        else:
            result[head] = value
    return result
