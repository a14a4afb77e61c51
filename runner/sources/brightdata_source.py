"""`type: brightdata`: pages through Bright Data's Web Unlocker with brightdata-sdk 2.5.

The SDK (as installed) gives the session, auth header, zone listing/creation and error types;
markdown comes from POST `/request` with `data_format: markdown`, which the SDK's own
`scrape_url` cannot ask for, so each page is one `engine.post_to_url` call of the real SDK.
What the SDK does not give - retries, backoff, per-URL outcomes, batch then per-URL fallback -
comes from `runner.sources.fetching`. The token is read from the environment only, and is never put in
a message, a log line or a file.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import re
import ssl
from contextlib import asynccontextmanager

from runner.errors import StepError
from runner.secrets import read_env
from runner.sources.documents import SourceResult
from runner.sources.fetching import (
    FatalFetchError,
    Fetched,
    FetchFailure,
    FetchPolicy,
    backoff_delay,
    retry_after_seconds,
)
from runner.sources.web_source import run_web_source

TOKEN_PAGE = "https://brightdata.com/cp/setting/users"


class TokenRejected(FatalFetchError):
    def __init__(self, message: str, status: int | None):
        super().__init__(message)
        self.status = status


def page_variant(entry: dict) -> dict:
    """The settings that change what a page fetch returns: its page-cache key (the pre-flight
    reads the cache with it too: a fully cached entry needs no token)."""
    return {"api_url": entry["api_url"].rstrip("/"), "zone": entry["zone"],
            "format": entry["format"], "country": entry["country"].lower()}


def run_brightdata(ctx, entry: dict, index: int) -> SourceResult:
    variant = page_variant(entry)
    hints = [f"check the token in ${entry['token_env']} is valid and active ({TOKEN_PAGE})",
             f"check the account has credits and the zone '{entry['zone']}' is active",
             f"try one URL alone: --set 'sources.{index}.urls=[\"{entry['urls'][0]}\"]' "
             "and read its error"]
    return run_web_source(ctx, entry, index, source="brightdata", variant=variant,
                          open_fetcher=lambda policy: open_brightdata(entry, policy, ctx.log),
                          hints=hints)


def import_sdk(log=lambda _: None):
    """Import brightdata-sdk without letting its import-time `load_dotenv()` change os.environ.

    A stray `.env` (found from the current folder or above the installed package) would
    otherwise inject variables - even a token - silently. Anything it set is undone.
    """
    before = dict(os.environ)
    try:
        import brightdata
    finally:
        changed = sorted(n for n in set(os.environ) | set(before) if os.environ.get(n) != before.get(n))
        for name in changed:
            if name in before:
                os.environ[name] = before[name]
            else:
                os.environ.pop(name, None)
        if changed:
            log(f"ignored {len(changed)} variable(s) that a .env file set when brightdata-sdk "
                f"was imported ({', '.join(changed)}); only the real environment counts")
    # Its zone manager logs at INFO; keep the run's output to what the step reports.
    logging.getLogger("brightdata").setLevel(logging.WARNING)
    return brightdata


@asynccontextmanager
async def open_brightdata(entry: dict, policy: FetchPolicy, log):
    """An entered SDK client with its zone checked; yields the one-page fetch function."""
    token_env = entry["token_env"]
    try:
        token = read_env(token_env, "the brightdata source")
    except RuntimeError as exc:
        raise StepError(f"{exc}. Get a token at {TOKEN_PAGE}; it is read only from the "
                        "environment, never from the recipe.") from None
    sdk = import_sdk(log)
    try:
        client = sdk.BrightDataClient(token=token, timeout=math.ceil(policy.timeout),
                                      web_unlocker_zone=entry["zone"], auto_create_zones=False,
                                      rate_limit=0)       # our own limiter applies the recipe's
    except sdk.ValidationError:
        raise StepError(f"the token in ${token_env} does not look like a Bright Data API token "
                        f"(too short); copy it again from {TOKEN_PAGE}") from None
    client.engine.BASE_URL = entry["api_url"].rstrip("/")
    session = _Session(sdk, client, entry, policy, token, log)
    async with client:
        await session.check_zone()
        yield session.fetch_page


class _Session:
    def __init__(self, sdk, client, entry: dict, policy: FetchPolicy, token: str, log):
        import aiohttp

        self.sdk, self.engine, self.entry, self.policy = sdk, client.engine, entry, policy
        self.token, self.log = token, log
        self.timeout = aiohttp.ClientTimeout(total=policy.timeout)
        self.base = entry["api_url"].rstrip("/")

    async def fetch_page(self, url: str) -> Fetched:
        payload = {"zone": self.entry["zone"], "url": url, "format": "raw", "method": "GET"}
        if self.entry["format"] == "markdown":
            payload["data_format"] = "markdown"
        if self.entry["country"]:
            payload["country"] = self.entry["country"].upper()
        status, text, headers = await self._call("POST", "/request", payload)
        if status == 200 and text.strip():
            kind = ("text/markdown" if self.entry["format"] == "markdown"
                    else headers.get("content-type", "text/html"))
            return Fetched(text, status, kind)
        if status == 200:
            raise FetchFailure("empty", "Bright Data answered with an empty page", retryable=True,
                               status=status)
        raise _status_failure(status, self._redact(headers.get("x-brd-error") or text[:200]),
                              headers.get("retry-after"))

    async def check_zone(self) -> None:
        """The zone must exist; create it only when the recipe says `create_zone: true`."""
        zones = await self._zone_names()
        zone = self.entry["zone"]
        if zones is None or zone in zones:
            return
        if not self.entry["create_zone"]:
            raise StepError(f"Bright Data zone '{zone}' is not among this account's active zones "
                            f"({', '.join(sorted(zones)) or 'none'}); create it in the control panel "
                            "(Web Unlocker), pick another with `zone:`, or set `create_zone: true`")
        self.log(f"creating Bright Data zone '{zone}' (create_zone: true)")
        try:
            await self.sdk.ZoneManager(self.engine).ensure_required_zones(
                web_unlocker_zone=zone, serp_zone=None)
        except self.sdk.BrightDataError as exc:
            raise StepError(f"could not create Bright Data zone '{zone}': "
                            f"{self._redact(str(exc))}") from None

    async def _zone_names(self) -> set[str] | None:
        """Active zone names (None: the token may not list zones), with the page retry policy."""
        for attempt in range(1, self.policy.retries + 2):
            try:
                status, text, headers = await self._call("GET", "/zone/get_active_zones")
                if status == 200:
                    return {z.get("name") for z in json.loads(text or "[]") if isinstance(z, dict)}
                failure = _status_failure(status, self._redact(text[:200]), headers.get("retry-after"))
            except FetchFailure as exc:
                failure = exc
            except TokenRejected as exc:
                if exc.status == 403:   # a token allowed to scrape but not to list zones
                    self.log("the token may not list zones (HTTP 403); zone check skipped")
                    return None
                raise
            if not failure.retryable or attempt > self.policy.retries:
                break
            await asyncio.sleep(backoff_delay(self.policy.backoff, attempt, failure.retry_after))
        raise StepError(f"cannot list zones at the Bright Data API {self.base}: {failure}. "
                        "Check the network connection and `api_url`, then run again.")

    async def _call(self, method: str, path: str, payload: dict | None = None):
        """One SDK request -> (status, body, headers); SDK exceptions become our failures."""
        url = f"{self.base}{path}"
        try:
            request = (self.engine.post_to_url(url, json_data=payload, timeout=self.timeout)
                       if method == "POST" else self.engine.get_from_url(url, timeout=self.timeout))
            async with request as response:
                return response.status, await response.text(), response.headers
        except self.sdk.AuthenticationError as exc:
            status = _status_in(str(exc))
            raise TokenRejected(
                f"Bright Data rejected the token in ${self.entry['token_env']} "
                f"(HTTP {status or '401/403'} on {path}): it is wrong, expired, or lacks access "
                f"to zone '{self.entry['zone']}'. Check it at {TOKEN_PAGE} and run again. "
                "Pages not fetched were not cached.", status) from None
        except TimeoutError:
            raise FetchFailure("timeout", f"no answer within {self.policy.timeout:g}s",
                               retryable=True) from None
        except Exception as exc:
            raise self._transport_failure(exc) from None

    def _transport_failure(self, exc: Exception) -> FetchFailure:
        # The SDK reports a refused connection as SSLError: look at what it wraps.
        import aiohttp

        cause = exc.__cause__ or exc
        detail = self._redact(f"{type(cause).__name__}: {cause}")
        if isinstance(cause, (aiohttp.ClientConnectorCertificateError, ssl.SSLCertVerificationError)):
            return FetchFailure("ssl_certificate", detail, retryable=False)
        if isinstance(cause, (aiohttp.ClientError, OSError, self.sdk.NetworkError, self.sdk.SSLError)):
            return FetchFailure("connection", detail, retryable=True)
        return FetchFailure("error", detail, retryable=False)

    def _redact(self, text: str) -> str:
        return text.replace(self.token, "***") if self.token else text


def _status_failure(status: int, detail: str, retry_after: str | None) -> FetchFailure:
    retryable = status in (408, 429) or status >= 500
    return FetchFailure(f"http_{status}", detail.strip(), retryable=retryable, status=status,
                        retry_after=retry_after_seconds(retry_after))



def _status_in(message: str) -> int | None:
    found = re.search(r"\((\d{3})\)", message)
    return int(found.group(1)) if found else None
