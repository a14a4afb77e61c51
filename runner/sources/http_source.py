"""`type: http`: plain GET with httpx, through the shared fetch engine (retries, cache, outcomes)."""

from __future__ import annotations

from contextlib import asynccontextmanager

from runner.sources.documents import SourceResult
from runner.sources.fetching import Fetched, FetchFailure, FetchPolicy, retry_after_seconds
from runner.sources.web_source import run_web_source

# What a page may be; anything else (PDF, images, JSON) is a failed URL, not a document.
HTML_TYPES = ("text/html", "application/xhtml+xml")
TEXT_TYPES = ("text/markdown", "text/x-markdown", "text/plain")


def run_http(ctx, entry: dict, index: int) -> SourceResult:
    hints = ["open one of the URLs in a browser or with curl from this machine",
             "check proxy variables (HTTP_PROXY, HTTPS_PROXY, NO_PROXY) if the network needs one",
             "raise `timeout` or lower `concurrency` if the site is slow or limits clients"]
    return run_web_source(ctx, entry, index, source="http",
                          variant={"user_agent": entry["user_agent"]},
                          open_fetcher=lambda policy: open_http(entry, policy), hints=hints,
                          main_content=entry["main_content"])


@asynccontextmanager
async def open_http(entry: dict, policy: FetchPolicy):
    import httpx

    limits = httpx.Limits(max_connections=policy.concurrency,
                          max_keepalive_connections=policy.concurrency)
    async with httpx.AsyncClient(headers={"User-Agent": entry["user_agent"]}, limits=limits,
                                 timeout=httpx.Timeout(policy.timeout), follow_redirects=True) as client:
        async def fetch_page(url: str) -> Fetched:
            return await _get(client, url)
        yield fetch_page


async def _get(client, url: str) -> Fetched:
    import httpx

    try:
        response = await client.get(url)
    except httpx.TimeoutException as exc:
        raise FetchFailure("timeout", type(exc).__name__, retryable=True) from None
    except httpx.TransportError as exc:
        raise FetchFailure("connection", f"{type(exc).__name__}: {exc}", retryable=True) from None
    status = response.status_code
    if status >= 400:
        retryable = status in (408, 429) or status >= 500
        raise FetchFailure(f"http_{status}", response.reason_phrase, retryable=retryable,
                           status=status, retry_after=retry_after_seconds(response.headers.get("retry-after")))
    content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
    text = response.text
    if not content_type:
        content_type = "text/html" if text.lstrip()[:1] == "<" else "text/plain"
    if content_type not in HTML_TYPES + TEXT_TYPES:
        raise FetchFailure("content_type", f"{content_type} is not a page of text", retryable=False,
                           status=status)
    if not text.strip():
        raise FetchFailure("empty", "the server answered with an empty page", retryable=False,
                           status=status)
    return Fetched(text, status, content_type)
