"""What keeps `recipe serve` standing under load and abuse: auth, body size, a bounded queue."""

from __future__ import annotations

import argparse
import hmac
import json
import math
import os
import threading
from dataclasses import dataclass

API_KEY_ENV = "RECIPE_SERVE_API_KEY"
OPEN_PATHS = ("/health",)  # a load balancer's probe needs no key


@dataclass(frozen=True)
class ServeLimits:
    """The server's limits; the defaults suit one model on one machine."""
    max_waiting: int = 8              # requests queued behind the one generating; more get 503
    max_body_bytes: int = 1_048_576   # a larger request body gets 413
    max_tokens: int = 4096            # a larger max_tokens gets 400
    api_key: str | None = None        # set: every request but /health needs `Bearer <key>`


DEFAULT_LIMITS = ServeLimits()


def limits_from_env(max_waiting: int, max_body_bytes: int, max_tokens: int,
                    api_key_env: str = API_KEY_ENV) -> ServeLimits:
    """The limits, with the API key read from the environment (never from the command line,
    where other users of the machine could read it)."""
    return ServeLimits(max_waiting=max_waiting, max_body_bytes=max_body_bytes,
                       max_tokens=max_tokens, api_key=os.environ.get(api_key_env) or None)


def add_limit_arguments(parser: argparse.ArgumentParser) -> None:
    """The limit options of `python -m runner.infer.serve` (`recipe serve` has the same)."""
    defaults = DEFAULT_LIMITS
    parser.add_argument("--max-waiting", type=_at_least(0), default=defaults.max_waiting)
    parser.add_argument("--max-body-bytes", type=_at_least(1), default=defaults.max_body_bytes)
    parser.add_argument("--max-tokens", type=_at_least(1), default=defaults.max_tokens)
    parser.add_argument("--api-key-env", default=API_KEY_ENV)


def _at_least(low: int):
    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is below {low}")
        return value
    return parse


def error_body(message: str, kind: str, code: str | int) -> dict:
    """An error in OpenAI's shape, which its clients parse."""
    return {"error": {"message": message, "type": kind, "code": code}}


def error_response(status: int, message: str, kind: str, code: str | int, headers=None):
    from fastapi.responses import JSONResponse
    return JSONResponse(error_body(message, kind, code), status_code=status, headers=headers)


class Admission:
    """One generation at a time, at most `max_waiting` behind it; the rest are turned away.

    A place is given back by whoever ends the generation (the worker thread), not by the
    request, so a client that hangs up does not free a slot its generation still holds.
    """

    def __init__(self, max_waiting: int):
        self.capacity = 1 + max_waiting
        self.active = 0
        self.mean_seconds = 1.0
        self._lock = threading.Lock()

    def try_enter(self) -> bool:
        """Take a place (give it back with leave()); False when the queue is full."""
        with self._lock:
            if self.active >= self.capacity:
                return False
            self.active += 1
            return True

    def leave(self) -> None:
        with self._lock:
            self.active -= 1

    def note_generation(self, seconds: float) -> None:
        """How long one generation took, for the Retry-After estimate."""
        with self._lock:
            self.mean_seconds = 0.8 * self.mean_seconds + 0.2 * seconds

    def retry_after(self) -> int:
        """Seconds until the queue has likely moved on: its length times a recent request."""
        return max(1, min(60, math.ceil(self.mean_seconds * self.active)))


def overloaded(admission: Admission):
    seconds = admission.retry_after()
    return error_response(503, f"the server is busy ({admission.capacity} requests in progress "
                          f"or waiting); retry in {seconds} s", "overloaded", "queue_full",
                          headers={"Retry-After": str(seconds)})


class GuardMiddleware:
    """ASGI middleware: bearer-token auth and the request body limit, before any handler runs.

    The body is counted as it arrives, so a request without Content-Length (chunked) cannot
    get past the limit either.
    """

    def __init__(self, app, limits: ServeLimits):
        self.app, self.limits = app, limits

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if self.limits.api_key and scope.get("path") not in OPEN_PATHS \
                and not _bearer_matches(headers.get(b"authorization", b""), self.limits.api_key):
            return await _reply(send, 401, error_body(
                "missing or wrong API key: send the header `Authorization: Bearer <key>`",
                "invalid_request_error", "invalid_api_key"), [(b"www-authenticate", b"Bearer")])
        declared = headers.get(b"content-length")
        limit = self.limits.max_body_bytes
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            return await _reply(send, 413, _too_large(limit))
        state = {"seen": 0, "started": False, "refused": False}

        async def counted_receive():
            if state["refused"]:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                state["seen"] += len(message.get("body", b""))
                if state["seen"] > limit:
                    # answer 413 here, then tell the app the client left: it stops reading and
                    # whatever it still tries to send is dropped
                    state["refused"] = True
                    if not state["started"]:
                        await _reply(send, 413, _too_large(limit))
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message):
            if state["refused"]:
                return
            state["started"] = state["started"] or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, counted_receive, guarded_send)


def _too_large(limit: int) -> dict:
    return error_body(f"the request body is larger than {limit:,} bytes (the server's "
                      "--max-body-bytes)", "invalid_request_error", "request_too_large")


def _bearer_matches(header: bytes, key: str) -> bool:
    scheme, _, token = header.decode("latin-1").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key.encode())


async def _reply(send, status: int, body: dict, extra_headers=()) -> None:
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(payload)).encode()), *extra_headers]})
    await send({"type": "http.response.body", "body": payload})
