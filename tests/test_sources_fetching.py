"""The shared fetch engine (concurrency, backoff, isolation, stop-at-once) and the HTML converter."""

from __future__ import annotations

import asyncio
import random

import pytest

from runner.sources.fetching import (
    FatalFetchError,
    Fetched,
    FetchFailure,
    FetchPolicy,
    backoff_delay,
    collect,
    summarize,
)
from runner.sources.html_markdown import html_to_markdown, tidy_markdown
from runner.sources.page_cache import PageCache


def test_backoff_is_full_jitter_doubling_and_respects_retry_after():
    random.seed(3)
    for retry in range(1, 6):
        delays = [backoff_delay(0.5, retry) for _ in range(300)]
        ceiling = 0.5 * 2 ** (retry - 1)
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > 0.8 * ceiling and min(delays) < 0.2 * ceiling   # spread, not fixed
    assert backoff_delay(0.01, 1, retry_after=2.0) == 2.0
    assert backoff_delay(1000, 30) <= 300


def run(coro):
    return asyncio.run(coro)


def test_concurrency_is_bounded_and_surprises_stay_with_their_url(tmp_path):
    in_flight, peak = 0, 0

    async def fetch(url: str) -> Fetched:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        if url.endswith("/7"):
            raise KeyError("a bug in one page's handling")
        return Fetched(f"# {url}\n", 200, "text/markdown")

    urls = [f"https://x/{i}" for i in range(30)]
    policy = FetchPolicy(concurrency=3, retries=2, backoff=0.001)
    outcomes, failed = run(collect(urls, fetch, policy, PageCache(tmp_path, {"v": 1})))
    assert peak == 3
    assert [o.url for o in outcomes] == urls
    assert outcomes[7].status == "failed" and outcomes[7].reason == "error"
    assert "KeyError" in outcomes[7].detail and outcomes[7].attempts == 1
    assert summarize(outcomes)["fetched"] == 29 and failed == {"error": 1}


def test_fatal_error_cancels_everything_in_flight(tmp_path):
    started = []

    async def fetch(url: str) -> Fetched:
        started.append(url)
        if url.endswith("/0"):
            raise FatalFetchError("credentials rejected")
        await asyncio.sleep(5)
        return Fetched("never", 200)

    urls = [f"https://x/{i}" for i in range(50)]
    cache = PageCache(tmp_path, {})
    with pytest.raises(FatalFetchError, match="credentials rejected"):
        run(collect(urls, fetch, FetchPolicy(concurrency=5, timeout=10), cache))
    assert len(started) <= 5
    assert not list(tmp_path.iterdir())


def test_retryable_failures_retry_until_the_limit(tmp_path):
    calls = []

    async def fetch(url: str) -> Fetched:
        calls.append(url)
        raise FetchFailure("http_503", "busy", retryable=True, status=503)

    policy = FetchPolicy(retries=3, backoff=0.001, batch_first=True)
    outcomes, failed = run(collect(["https://x/a"], fetch, policy, PageCache(tmp_path, {})))
    assert len(calls) == 4 and outcomes[0].attempts == 4 and failed == {"http_503": 4}
    assert outcomes[0].to_json()["reason"] == "http_503" and "retryable" not in outcomes[0].to_json()


def test_page_cache_keys_on_url_and_variant_and_ignores_half_written_pages(tmp_path):
    cache = PageCache(tmp_path, {"zone": "a"})
    cache.put("https://x/1", "body", status=200, attempts=2)
    assert cache.get("https://x/1")["attempts"] == 2 and cache.body("https://x/1") == "body"
    assert PageCache(tmp_path, {"zone": "b"}).get("https://x/1") is None
    cache.body_path("https://x/2").write_text("half")          # no metadata file: not complete
    assert cache.get("https://x/2") is None


def test_page_without_main_marker_goes_through_boilerplate_removal():
    paragraph = ("Generators produce values lazily, one at a time, with the yield statement, "
                 "and keep their state between calls to next(). ")
    html = (f"<html><head><title>Post - Blog</title></head><body>"
            f"<div id='menu'><a href='/'>Home</a> <a href='/tags'>Tags</a></div>"
            f"<div class='content'><h1>Understanding generators</h1><p>{paragraph * 3}</p>"
            f"<h2>When to use them</h2><p>{paragraph * 2}</p></div>"
            f"<div id='footer'><p>Copyright 2024 Blog. All rights reserved.</p></div></body></html>")
    title, markdown = html_to_markdown(html)
    assert title == "Understanding generators"
    assert "# Understanding generators" in markdown and "## When to use them" in markdown
    assert "Copyright" not in markdown and "Tags" not in markdown


def test_converter_edge_cases():
    assert html_to_markdown("") == ("", "")
    assert html_to_markdown("   ") == ("", "")
    title, markdown = html_to_markdown("<main><h1>T<a class='headerlink'>¶</a></h1><p>x</p></main>")
    assert (title, markdown) == ("T", "# T\n\nx\n")
    assert tidy_markdown("```\ncode\n```\nnext\n\n\n\n# H ¶\n") == "```\ncode\n```\n\nnext\n\n# H\n"
