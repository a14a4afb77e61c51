"""The part the web sources share: cache lookup, collection, outcome counts, zero-page error."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

from runner.errors import StepError
from runner.sources.documents import SourceResult, web_documents
from runner.sources.fetching import FatalFetchError, FetchOne, FetchPolicy, Outcome, collect, summarize
from runner.sources.page_cache import PageCache

SHOWN_FAILURES = 5


def run_web_source(ctx, entry: dict, index: int, *, source: str, variant: dict,
                   open_fetcher: Callable[[FetchPolicy], AbstractAsyncContextManager[FetchOne]],
                   hints: list[str], main_content: bool = True) -> SourceResult:
    """Collect an entry's URLs (cache first) and turn the pages into documents.

    `open_fetcher(policy)` is entered only when some page must come from the network, so a
    fully cached run needs neither a token nor a connection.
    """
    label = f"sources[{index}] ({source})"
    urls = list(dict.fromkeys(entry["urls"]))       # each URL once, first position kept
    policy = FetchPolicy.from_entry(entry, ctx.force)
    cache = PageCache(ctx.run_dir / "cache" / "pages", {"source": source, **variant})
    missing = len(urls) if policy.refresh else sum(cache.get(u) is None for u in urls)
    ctx.log(f"{label}: {len(urls)} URLs, {len(urls) - missing} cached, {missing} to fetch")
    with ctx.progress(total=len(urls), desc=f"{source} pages", unit="page") as bar:
        try:
            outcomes, failed_attempts = asyncio.run(
                _collect(urls, policy, cache, open_fetcher if missing else None, bar, ctx.log))
        except FatalFetchError as exc:
            raise StepError(f"{label}: {exc}") from None
    metrics = {**summarize(outcomes), "failed_attempts_by_reason": failed_attempts}
    _report(ctx, label, outcomes, metrics)
    if metrics["fetched"] + metrics["cached"] == 0:
        raise StepError(_nothing_collected(label, outcomes, metrics, hints))
    metrics["conversion_failed_by_reason"] = Counter()     # filled as the documents stream
    rows = [o.to_json() for o in outcomes]
    documents = web_documents(outcomes, cache, source, main_content=main_content,
                              failures=metrics["conversion_failed_by_reason"],
                              rows={row["url"]: row for row in rows if "url" in row})
    return SourceResult(documents, rows, metrics)


async def _collect(urls, policy, cache, open_fetcher, bar, log):
    if open_fetcher is None:
        return await collect(urls, _never, policy, cache, progress=bar, log=log)
    async with open_fetcher(policy) as fetch_one:
        return await collect(urls, fetch_one, policy, cache, progress=bar, log=log)


async def _never(url: str):
    raise FatalFetchError(f"internal: {url} was expected in the page cache")


def _report(ctx, label: str, outcomes: list[Outcome], metrics: dict) -> None:
    ctx.log(f"{label}: {metrics['fetched']} fetched, {metrics['cached']} from cache, "
            f"{metrics['failed']} failed; {metrics['retries']} retries"
            + (f" ({_counts(metrics['failed_attempts_by_reason'])})"
               if metrics["failed_attempts_by_reason"] else ""))
    for outcome in [o for o in outcomes if o.status == "failed"][:SHOWN_FAILURES]:
        ctx.log(f"  failed: {outcome.url}: {outcome.reason} after {outcome.attempts} attempt(s)"
                + (f" - {outcome.detail}" if outcome.detail else ""))
    if metrics["failed"] > SHOWN_FAILURES:
        ctx.log(f"  ... and {metrics['failed'] - SHOWN_FAILURES} more (see outcomes.jsonl)")


def _nothing_collected(label: str, outcomes: list[Outcome], metrics: dict, hints: list[str]) -> str:
    lines = [f"{label}: no page was collected from {len(outcomes)} URL(s) "
             f"(failures: {_counts(metrics['failed_by_reason'])}).", "Troubleshooting:"]
    lines += [f"  {number}. {hint}" for number, hint in enumerate(hints, 1)]
    lines.append("First failures:")
    lines += [f"  {o.url}: {o.reason} after {o.attempts} attempt(s)"
              + (f" - {o.detail}" if o.detail else "") for o in outcomes[:SHOWN_FAILURES]]
    return "\n".join(lines)


def _counts(counts: dict) -> str:
    return ", ".join(f"{reason} x{count}" for reason, count in counts.items()) or "none"
