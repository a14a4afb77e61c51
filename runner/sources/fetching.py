"""Shared async fetch engine for the web sources (brightdata, http).

What it adds on top of a source's single-request function: bounded concurrency, a start-rate
limit, retries with exponential backoff and full jitter on retryable failures (5xx, 429,
timeouts, connection errors), an optional first pass of one attempt per URL for all URLs at
once (the "batch" of the hand-run workflow) followed by per-URL retries with each URL isolated,
the raw-page cache, and one `Outcome` per URL. A `FatalFetchError` (a rejected token) cancels
every request in flight and stops the collection at once.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field

from runner.sources.page_cache import PageCache

MAX_DELAY_S = 300.0


@dataclass(frozen=True)
class FetchPolicy:
    concurrency: int = 10
    rate_limit: float = 0.0       # most attempts started per second; 0 = no limit
    timeout: float = 60.0         # seconds for one attempt, answer included
    retries: int = 4              # extra attempts after a retryable failure
    backoff: float = 1.0          # base delay of the exponential backoff
    batch_first: bool = False
    refresh: bool = False         # ignore the cache and fetch again

    @classmethod
    def from_entry(cls, entry: dict, force: bool = False) -> FetchPolicy:
        return cls(concurrency=int(entry["concurrency"]), rate_limit=float(entry["rate_limit"]),
                   timeout=float(entry["timeout"]), retries=int(entry["retries"]),
                   backoff=float(entry["backoff"]), batch_first=bool(entry.get("batch_first", False)),
                   refresh=bool(entry["refresh"]) or force)


@dataclass
class Fetched:
    """One successful answer."""
    text: str
    status: int = 200
    content_type: str = ""


class FetchFailure(Exception):
    """One failed attempt; `reason` is a short category used for counts (http_500, timeout...)."""

    def __init__(self, reason: str, detail: str = "", *, retryable: bool,
                 status: int | None = None, retry_after: float | None = None):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail, self.retryable = reason, detail, retryable
        self.status, self.retry_after = status, retry_after


class FatalFetchError(Exception):
    """A failure no other URL can escape (credentials rejected): stop everything now."""


@dataclass
class Outcome:
    url: str
    status: str                   # fetched | cached | failed
    attempts: int = 0
    reason: str | None = None
    detail: str = ""
    http_status: int | None = None
    phase: str = ""               # batch | single | cache
    bytes: int = 0
    seconds: float = 0.0
    retryable: bool = field(default=False, repr=False)
    retry_after: float | None = field(default=None, repr=False)

    def to_json(self) -> dict:
        data = asdict(self)
        for private in ("retryable", "retry_after"):
            data.pop(private)
        return data


FetchOne = Callable[[str], Awaitable[Fetched]]


def retry_after_seconds(value: str | None) -> float | None:
    """A Retry-After header in seconds; None when absent or an HTTP date (backoff applies)."""
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def backoff_delay(base: float, retry_number: int, retry_after: float | None = None) -> float:
    """Full jitter: uniform in [0, base * 2**(n-1)], but never before the server's Retry-After."""
    ceiling = min(MAX_DELAY_S, base * 2 ** (retry_number - 1))
    delay = random.uniform(0, ceiling)
    return min(MAX_DELAY_S, max(delay, retry_after or 0.0))


async def collect(urls: list[str], fetch_one: FetchOne, policy: FetchPolicy, cache: PageCache,
                  *, progress=None, log: Callable[[str], None] = lambda _: None,
                  ) -> tuple[list[Outcome], dict[str, int]]:
    """Fetch every URL not already cached.

    Returns one Outcome per URL in the order given, and the failed attempts by reason (each
    retried or final failure counted once per attempt).
    """
    outcomes: dict[str, Outcome] = {}
    todo = []
    for url in urls:
        meta = None if policy.refresh else cache.get(url)
        if meta is None:
            todo.append(url)
            continue
        outcomes[url] = Outcome(url, "cached", phase="cache", bytes=meta["bytes"],
                                http_status=meta.get("status"))
        _tick(progress)
    runner = _Collector(fetch_one, policy, cache, progress)
    if todo:
        try:
            outcomes.update(await runner.run(todo, log))
        except BaseExceptionGroup as group:
            raise _first_leaf(group) from None
    return [outcomes[url] for url in urls], dict(sorted(runner.failed_attempts.items()))


def summarize(outcomes: list[Outcome]) -> dict:
    """Counts for the step's metrics: requested, fetched, cached, failed (by reason), retries."""
    by_status = Counter(o.status for o in outcomes)
    failed = Counter(o.reason for o in outcomes if o.status == "failed")
    attempts = sum(o.attempts for o in outcomes)
    return {"requested": len(outcomes), "fetched": by_status["fetched"],
            "cached": by_status["cached"], "failed": by_status["failed"],
            "failed_by_reason": dict(sorted(failed.items())), "attempts": attempts,
            "retries": sum(max(0, o.attempts - 1) for o in outcomes)}


class _Collector:
    def __init__(self, fetch_one: FetchOne, policy: FetchPolicy, cache: PageCache, progress):
        self.fetch_one, self.policy, self.cache, self.progress = fetch_one, policy, cache, progress
        self.semaphore = asyncio.Semaphore(policy.concurrency)
        self.limiter = _rate_limiter(policy.rate_limit)
        self.failed_attempts: Counter = Counter()
        self.stopped: FatalFetchError | None = None

    async def run(self, urls: list[str], log) -> dict[str, Outcome]:
        allowed = 1 + self.policy.retries
        if not self.policy.batch_first:
            return await self._all(urls, "single", allowed, {})
        first = await self._all(urls, "batch", 1, {})
        again = [u for u, o in first.items() if o.status == "failed" and o.retryable and allowed > 1]
        fetched = sum(o.status == "fetched" for o in first.values())
        log(f"batch: {fetched}/{len(urls)} fetched"
            + (f"; {_reasons(self.failed_attempts)}" if self.failed_attempts else ""))
        if again:
            log(f"falling back to one request per URL for {len(again)} URLs")
            first.update(await self._all(again, "single", allowed, first))
        return first

    async def _all(self, urls, phase, allowed, earlier: dict[str, Outcome]) -> dict[str, Outcome]:
        async with asyncio.TaskGroup() as group:
            tasks = {url: group.create_task(self._one(url, phase, allowed, earlier.get(url)))
                     for url in urls}
        return {url: task.result() for url, task in tasks.items()}

    async def _one(self, url: str, phase: str, allowed: int, earlier: Outcome | None) -> Outcome:
        started = time.monotonic()
        attempts = earlier.attempts if earlier else 0
        failure: FetchFailure | None = None
        while attempts < allowed:
            if attempts:
                after = failure.retry_after if failure else earlier.retry_after
                await asyncio.sleep(backoff_delay(self.policy.backoff, attempts, after))
            attempts += 1
            try:
                page = await self._attempt(url)
            except FetchFailure as exc:
                failure = exc
                self.failed_attempts[exc.reason] += 1
                if not exc.retryable:
                    break
                continue
            meta = self.cache.put(url, page.text, status=page.status, attempts=attempts,
                                  content_type=page.content_type)
            _tick(self.progress)
            return Outcome(url, "fetched", attempts, http_status=page.status, phase=phase,
                           bytes=meta["bytes"], seconds=round(time.monotonic() - started, 3))
        if failure is None:      # no attempt left in this phase: keep the earlier result
            failure = FetchFailure(earlier.reason, earlier.detail, retryable=earlier.retryable,
                                   status=earlier.http_status)
        final = not failure.retryable or attempts >= 1 + self.policy.retries
        if final:
            _tick(self.progress)
        return Outcome(url, "failed", attempts, failure.reason, failure.detail, failure.status,
                       phase, seconds=round(time.monotonic() - started, 3),
                       retryable=failure.retryable, retry_after=failure.retry_after)

    async def _attempt(self, url: str) -> Fetched:
        async with self.semaphore:
            if self.limiter is not None:
                await self.limiter.acquire()
            # A slot freed by the fatal failure must not start one more request before the
            # task group gets to cancel the waiting tasks.
            if self.stopped is not None:
                raise self.stopped
            try:
                async with asyncio.timeout(self.policy.timeout):
                    return await self.fetch_one(url)
            except FatalFetchError as exc:
                self.stopped = exc
                raise
            except FetchFailure:
                raise
            except TimeoutError:
                raise FetchFailure("timeout", f"no answer within {self.policy.timeout:g}s",
                                   retryable=True) from None
            except Exception as exc:  # one URL's surprise must never stop the others
                raise FetchFailure("error", f"{type(exc).__name__}: {exc}", retryable=False) from None


def _rate_limiter(rate: float):
    if rate <= 0:
        return None
    from aiolimiter import AsyncLimiter
    # One start per 1/rate seconds: no bursts, and rates below 1/s work too.
    return AsyncLimiter(1, 1.0 / rate)


def _tick(progress) -> None:
    if progress is not None:
        progress.update(1)


def _reasons(counts: Counter) -> str:
    return "failed attempts: " + ", ".join(f"{k} x{v}" for k, v in sorted(counts.items()))


def _first_leaf(group: BaseExceptionGroup) -> BaseException:
    fatal = group.subgroup(lambda e: isinstance(e, FatalFetchError))
    chosen = fatal or group
    while isinstance(chosen, BaseExceptionGroup):
        chosen = chosen.exceptions[0]
    return chosen
