"""A fake Bright Data API on 127.0.0.1 that speaks what brightdata-sdk 2.5 sends.

Endpoints (as the SDK calls them): `GET /zone/get_active_zones`, `POST /zone` (zone creation),
`POST /request` with {"zone", "url", "format": "raw", "data_format": "markdown"?, "country"?}.
Every call needs `Authorization: Bearer <token>`. Faults are scripted per URL: a list of what
the successive attempts get - an HTTP status (500, 429, 401, 404...), "slow" (answer after
`slow_seconds`) or "drop" (close the connection without an answer); later attempts succeed.
`GET /_fake/stats` returns the counters (used by the benchmark, which runs this in a process).
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
from collections import Counter

DEFAULT_TOKEN = "fake-token-7f3a9c1e5b2d4a6f8e0c"


def page_markdown(url: str) -> str:
    name = url.rstrip("/").rsplit("/", 1)[-1] or "index"
    return (f"# Page {name}\n\nThis page at {url} explains {name} in a few sentences for tests.\n\n"
            f"## Details of {name}\n\nThe details section has enough words to make a pair.\n")


def page_html(url: str) -> str:
    name = url.rstrip("/").rsplit("/", 1)[-1] or "index"
    return (f"<html><head><title>{name} - Site</title></head><body><nav>Home | Next | Previous</nav>"
            f"<main><h1>Page {name}</h1><p>This page at {url} explains {name}.</p>"
            f"<h2>Details of {name}</h2><p>The details section has enough words.</p></main>"
            "<footer>Copyright footer text</footer></body></html>")


def scripted_faults(urls: list[str], *, seed: int = 0, share_500: float = 1 / 3,
                    share_429: float = 0.1) -> dict[str, list]:
    """Deterministic faults: `share_500` of the URLs get a 500 first, `share_429` get 429 twice."""
    rng = random.Random(seed)
    faults = {}
    for url in urls:
        draw = rng.random()
        if draw < share_500:
            faults[url] = [500]
        elif draw < share_500 + share_429:
            faults[url] = [429, 429]
    return faults


class FakeBrightData:
    def __init__(self, *, token: str = DEFAULT_TOKEN, zones=("sdk_unlocker",),
                 faults: dict[str, list] | None = None, always: dict[str, int] | None = None,
                 reject_all: bool = False, reject_requests: bool = False,
                 slow_seconds: float = 0.0, latency: float = 0.0):
        self.token, self.zones = token, list(zones)
        self.faults, self.always = faults or {}, always or {}
        self.reject_all, self.reject_requests = reject_all, reject_requests
        self.slow_seconds, self.latency = slow_seconds, latency
        self.attempts: Counter = Counter()        # url -> /request calls
        self.statuses: Counter = Counter()        # status answered by /request
        self.payloads: list[dict] = []
        self.zone_lists = 0
        self.created_zones: list[str] = []
        self.headers_seen: list[dict] = []
        self.url = ""

    # --- the API ---------------------------------------------------------------------------
    def _app(self):
        from aiohttp import web

        app = web.Application()
        app.router.add_get("/zone/get_active_zones", self._zones)
        app.router.add_post("/zone", self._create_zone)
        app.router.add_post("/request", self._request)
        app.router.add_get("/_fake/stats", self._stats)
        return app

    def _authorized(self, request) -> bool:
        self.headers_seen.append(dict(request.headers))
        return not self.reject_all and request.headers.get("Authorization") == f"Bearer {self.token}"

    async def _zones(self, request):
        from aiohttp import web
        self.zone_lists += 1
        if not self._authorized(request):
            return web.Response(status=401, text="Invalid API token")
        return web.json_response([{"name": z, "type": "unblocker"} for z in self.zones])

    async def _create_zone(self, request):
        from aiohttp import web
        if not self._authorized(request):
            return web.Response(status=401, text="Invalid API token")
        payload = await request.json()
        name = payload["zone"]["name"]
        self.created_zones.append(name)
        self.zones.append(name)
        return web.json_response({"created": name})

    async def _request(self, request):
        from aiohttp import web
        payload = await request.json()
        url = payload.get("url", "")
        self.payloads.append(payload)
        self.attempts[url] += 1
        if not self._authorized(request) or self.reject_requests:
            return self._answer(web.Response(status=401, text="Invalid API token"))
        if payload.get("zone") not in self.zones:
            return self._answer(web.Response(status=400, text="zone not found",
                                             headers={"x-brd-error": "zone not found"}))
        if self.latency:
            await asyncio.sleep(self.latency)
        script = self.faults.get(url, [])
        action = self.always.get(url) or (script[self.attempts[url] - 1]
                                          if self.attempts[url] <= len(script) else None)
        if action == "drop":
            request.transport.close()
            return self._answer(web.Response(status=599))
        if action == "slow":
            await asyncio.sleep(self.slow_seconds)
        elif isinstance(action, int):
            return self._answer(web.Response(status=action, text=f"injected {action}"))
        if payload.get("data_format") == "markdown":
            return self._answer(web.Response(text=page_markdown(url), content_type="text/plain"))
        return self._answer(web.Response(text=page_html(url), content_type="text/html"))

    def _answer(self, response):
        self.statuses[response.status] += 1
        return response

    async def _stats(self, request):
        from aiohttp import web
        return web.json_response({"requests": sum(self.attempts.values()),
                                  "urls": len(self.attempts),
                                  "statuses": {str(k): v for k, v in self.statuses.items()}})

    # --- running it in a thread -----------------------------------------------------------
    def start(self) -> str:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        port = asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(timeout=10)
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def _serve(self, port: int = 0) -> int:
        from aiohttp import web
        self._runner = web.AppRunner(self._app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        return site._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()


def serve_in_process(options: dict, port_queue) -> None:
    """Entry point of a benchmark's server process: serve until terminated."""
    fake = FakeBrightData(**options)

    async def main():
        port_queue.put(await fake._serve())
        await asyncio.Event().wait()

    asyncio.run(main())


if __name__ == "__main__":
    with FakeBrightData() as fake:
        print(json.dumps({"url": fake.url, "token": fake.token}))
        threading.Event().wait()
