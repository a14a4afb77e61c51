"""An OpenAI-compatible /v1/chat/completions client for teacher models: bounded concurrency, a
rate limit, retries with exponential backoff and full jitter on 429 / 5xx / timeouts (a
Retry-After header is honoured), and failures reported by reason instead of raised.

An endpoint that refuses the key (401, 403) or does not know the model (404) stops the run:
every further request would fail the same way.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field

RETRYABLE_STATUS = frozenset([408, 409, 425, 429, 500, 502, 503, 504])
FATAL_STATUS = {401: "auth_failed", 403: "auth_failed", 404: "not_found"}


@dataclass
class Completion:
    text: str
    finish_reason: str
    usage: dict
    attempts: int


@dataclass
class RequestFailed(Exception):
    """The request failed after its retries (or could not be retried)."""
    reason: str
    detail: str
    attempts: int


class FatalEndpointError(Exception):
    """The endpoint refuses every request (wrong key, wrong URL or model): stop."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


@dataclass
class ClientPolicy:
    concurrency: int = 4
    requests_per_minute: float = 0.0
    timeout_s: float = 60.0
    max_retries: int = 4
    backoff_s: float = 1.0
    backoff_max_s: float = 30.0

    @classmethod
    def from_settings(cls, s: dict) -> ClientPolicy:
        return cls(s["concurrency"], s["requests_per_minute"], s["timeout_s"], s["max_retries"],
                   s["backoff_s"], s["backoff_max_s"])


@dataclass
class ClientCounts:
    """What went over the wire: every attempt, and the failed ones by reason."""
    requests: int = 0
    failed_attempts: Counter = field(default_factory=Counter)


class RateLimiter:
    """At most `per_minute` request starts per minute, evenly spaced (0: no limit)."""

    def __init__(self, per_minute: float):
        self.interval = 60.0 / per_minute if per_minute > 0 else 0.0
        self.next_start = 0.0
        self.lock = asyncio.Lock()

    async def wait(self) -> None:
        if not self.interval:
            return
        async with self.lock:
            now = time.monotonic()
            delay = self.next_start - now
            self.next_start = max(now, self.next_start) + self.interval
        if delay > 0:
            await asyncio.sleep(delay)


class ChatClient:
    """Use as `async with ChatClient(...) as client: await client.complete(messages, params)`."""

    def __init__(self, base_url: str, api_key: str, policy: ClientPolicy, seed: int = 0):
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.policy = policy
        self.counts = ClientCounts()
        self.random = random.Random(seed)
        self.limiter = RateLimiter(policy.requests_per_minute)
        self.slots = asyncio.Semaphore(max(1, policy.concurrency))
        self.http = None

    async def __aenter__(self) -> ChatClient:
        import httpx

        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        limits = httpx.Limits(max_connections=self.policy.concurrency,
                              max_keepalive_connections=self.policy.concurrency)
        self.http = httpx.AsyncClient(headers=headers, limits=limits,
                                      timeout=httpx.Timeout(self.policy.timeout_s))
        return self

    async def __aexit__(self, *exc) -> None:
        await self.http.aclose()

    async def first_model(self) -> str:
        """The first model the endpoint lists (GET /models), for `model: ""`."""
        import httpx

        try:
            response = await self.http.get(f"{self.base_url}/models")
        except httpx.HTTPError as exc:
            raise FatalEndpointError("unreachable", f"GET {self.base_url}/models: "
                                     f"{type(exc).__name__}: {exc}") from None
        if response.status_code in FATAL_STATUS or response.status_code >= 400:
            raise FatalEndpointError(FATAL_STATUS.get(response.status_code, "no_models"),
                                     f"GET {self.base_url}/models answered {response.status_code}")
        try:
            return str(response.json()["data"][0]["id"])
        except (ValueError, KeyError, IndexError, TypeError):
            raise FatalEndpointError("no_models", f"GET {self.base_url}/models listed no model; "
                                     "set `model:`") from None

    async def complete(self, body: dict) -> Completion:
        """POST /chat/completions with retries; RequestFailed or FatalEndpointError otherwise."""
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self._attempt(body, attempt)
            except _Retryable as failure:
                self.counts.failed_attempts[failure.reason] += 1
                if attempt > self.policy.max_retries:
                    raise RequestFailed(failure.reason, failure.detail, attempt) from None
                await asyncio.sleep(self._backoff(attempt, failure.retry_after))
            except RequestFailed as failure:
                self.counts.failed_attempts[failure.reason] += 1
                failure.attempts = attempt
                raise

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.policy.backoff_max_s)
        ceiling = min(self.policy.backoff_max_s, self.policy.backoff_s * 2 ** (attempt - 1))
        return self.random.uniform(0, ceiling)      # full jitter: clients do not retry in step

    async def _attempt(self, body: dict, attempt: int) -> Completion:
        import httpx

        await self.limiter.wait()
        async with self.slots:
            self.counts.requests += 1
            try:
                response = await self.http.post(f"{self.base_url}/chat/completions", json=body)
            except httpx.TimeoutException as exc:
                raise _Retryable("timeout", type(exc).__name__) from None
            except httpx.TransportError as exc:
                raise _Retryable("connection", f"{type(exc).__name__}: {exc}") from None
        status = response.status_code
        if status in FATAL_STATUS:
            raise FatalEndpointError(FATAL_STATUS[status], f"HTTP {status} from {self.base_url}: "
                                     f"{response.text[:200]}")
        if status in RETRYABLE_STATUS:
            raise _Retryable(f"http_{status}", response.text[:200],
                             _retry_after(response.headers.get("retry-after")))
        if status >= 400:
            raise RequestFailed(f"http_{status}", response.text[:200], attempt)
        return _completion(response, attempt)


class _Retryable(Exception):
    def __init__(self, reason: str, detail: str, retry_after: float | None = None):
        super().__init__(reason)
        self.reason, self.detail, self.retry_after = reason, detail, retry_after


def _retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (an HTTP date counts from now); None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        from email.utils import parsedate_to_datetime
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def _completion(response, attempt: int) -> Completion:
    """The first choice of a chat.completion body; a body of another shape is a failure."""
    try:
        body = response.json()
        choice = body["choices"][0]
        text = choice["message"].get("content") or ""
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        raise RequestFailed("bad_response", f"not a chat.completion body: {response.text[:200]!r}",
                            attempt) from None
    usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
    return Completion(str(text), str(choice.get("finish_reason") or ""), usage, attempt)
