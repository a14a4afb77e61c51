"""`recipe serve` under abuse and load, on the tiny model through the real CLI: 127.0.0.1 only by
default, bearer-token auth from the environment, 404 for an unknown model, body and max_tokens
limits, a bounded queue answering 503 with Retry-After, a run folder without a model explained,
and 200 requests from 20 concurrent clients with nothing crashed and memory bounded."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from conftest import ROOT, run_cli
from tuned_fixture import copy_run

from runner.infer.serve import create_app, resolve_target
from runner.infer.serve_guard import ServeLimits

KEY = "test-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
LIMITS = ["--max-waiting", "16", "--max-body-bytes", "20000", "--max-tokens", "16"]
CHAT = {"model": "tiny", "max_tokens": 2, "seed": 1, "messages": [{"role": "user", "content": "Hi?"}]}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return copy_run(tmp_path_factory.mktemp("serve-limits"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def server(run):
    """`recipe serve RUN` with no --host, small limits and an API key in the environment."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RECIPE_SERVE_API_KEY": KEY,
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen([sys.executable, "-m", "runner", "serve", str(run), "--port", str(port),
                                "--quiet", *LIMITS], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if httpx.get(f"{base}/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        assert process.poll() is None and httpx.get(f"{base}/health").status_code == 200, "not ready"
        yield base, port, process
    finally:
        process.terminate()
        output = process.communicate(timeout=30)[0]
    assert "Traceback" not in output, output


def test_listens_on_loopback_only_by_default(server):
    _, port, _ = server
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass
    # 127.0.0.2 reaches this machine too: a server bound to 0.0.0.0 would accept it
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.2", port), timeout=5):
        pass


def test_bearer_token_from_the_environment(server):
    base = server[0]
    missing = httpx.get(f"{base}/v1/models")
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert missing.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(f"{base}/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.post(f"{base}/generate", json={"prompt": "x"}).status_code == 401
    assert httpx.get(f"{base}/v1/models", headers=AUTH).status_code == 200
    assert httpx.get(f"{base}/health").status_code == 200  # probes need no key


def test_unknown_model_is_404_as_in_openai(server):
    base = server[0]
    wrong = httpx.post(f"{base}/v1/chat/completions", headers=AUTH, timeout=60,
                       json={**CHAT, "model": "gpt-4o"})
    assert wrong.status_code == 404, wrong.text
    assert wrong.json()["error"]["code"] == "model_not_found" and "'tiny'" in wrong.json()["error"]["message"]
    assert httpx.get(f"{base}/v1/models/gpt-4o", headers=AUTH).status_code == 404
    assert httpx.get(f"{base}/v1/models/tiny", headers=AUTH).json()["id"] == "tiny"
    assert httpx.post(f"{base}/v1/chat/completions", headers=AUTH, json=CHAT, timeout=60).status_code == 200


def test_request_body_and_max_tokens_limits(server):
    base = server[0]
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 30_000}]}
    declared = httpx.post(f"{base}/v1/chat/completions", headers=AUTH, json=big, timeout=30)
    assert declared.status_code == 413 and declared.json()["error"]["code"] == "request_too_large"

    def chunks():  # no Content-Length: the limit must hold while the body streams in
        yield b'{"messages": [{"role": "user", "content": "'
        for _ in range(40):
            yield b"y" * 1000
        yield b'"}]}'
    chunked = httpx.post(f"{base}/v1/chat/completions", content=chunks(), timeout=30,
                         headers={**AUTH, "Content-Type": "application/json"})
    assert chunked.status_code == 413
    too_many = httpx.post(f"{base}/v1/chat/completions", headers=AUTH, timeout=30,
                          json={**CHAT, "max_tokens": 17})
    assert too_many.status_code == 400 and "at most 16" in too_many.json()["error"]["message"]
    assert httpx.post(f"{base}/generate", headers=AUTH, timeout=30,
                      json={"prompt": "x", "max_tokens": 17}).status_code == 400
    unasked = httpx.post(f"{base}/v1/chat/completions", headers=AUTH, timeout=60,
                         json={k: v for k, v in CHAT.items() if k != "max_tokens"})
    assert unasked.status_code == 200 and unasked.json()["usage"]["completion_tokens"] <= 16
    assert httpx.get(f"{base}/health").status_code == 200


def test_load_200_requests_from_20_clients(server):
    base, _, process = server
    before = rss_mb(process.pid)
    statuses: list[int] = []
    retry_after: list[str | None] = []

    async def client(number: int):
        async with httpx.AsyncClient(base_url=base, headers=AUTH, timeout=120) as http:
            for index in range(10):
                body = {**CHAT, "seed": index, "stream": (number + index) % 4 == 0}
                response = await http.post("/v1/chat/completions", json=body)
                await response.aread()
                statuses.append(response.status_code)
                retry_after.append(response.headers.get("retry-after"))

    async def load():
        await asyncio.gather(*(client(n) for n in range(20)))

    started = time.monotonic()
    asyncio.run(load())
    wall = time.monotonic() - started
    assert len(statuses) == 200 and set(statuses) <= {200, 503}, sorted(set(statuses))
    assert statuses.count(200) >= 20, statuses.count(200)
    assert all(r and int(r) >= 1 for s, r in zip(statuses, retry_after, strict=True) if s == 503)
    assert wall < 120, wall
    assert process.poll() is None
    assert rss_mb(process.pid) - before < 300, (before, rss_mb(process.pid))
    health = httpx.get(f"{base}/health", timeout=10).json()
    assert health["status"] == "ready" and health["in_progress"] == 0
    assert httpx.post(f"{base}/v1/chat/completions", headers=AUTH, json=CHAT, timeout=60).status_code == 200


def test_full_queue_answers_503_with_retry_after(run):
    """The model busy (its lock held) and one request waiting: the next is turned away at once,
    and once the model is free both waiting requests are answered."""
    from fastapi.testclient import TestClient

    path, name = resolve_target(run)
    app = create_app(path, name, autoload=False, limits=ServeLimits(max_waiting=1))
    state = app.state.model
    with TestClient(app) as client:
        state.load()
        answers: list[int] = []
        with state.lock:
            waiting = [threading.Thread(target=lambda: answers.append(
                client.post("/v1/chat/completions", json=CHAT).status_code)) for _ in range(2)]
            for thread in waiting:
                thread.start()
            deadline = time.monotonic() + 30
            while state.admission.active < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            refused = client.post("/v1/chat/completions", json=CHAT)
            assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1
            assert refused.json()["error"]["code"] == "queue_full"
            assert client.post("/generate", json={"prompt": "hi", "max_tokens": 2}).status_code == 503
        for thread in waiting:
            thread.join(60)
        assert answers == [200, 200]
        assert client.post("/v1/chat/completions", json=CHAT).status_code == 200


def test_run_folder_without_a_model_says_what_is_missing(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "page.md").write_text(
        "# Lists\n\n" + " ".join(f"Python lists keep their items in order, as rule {i} says." for i in range(30)))
    recipe = tmp_path / "data.yaml"
    recipe.write_text('name: data\nsources: [{type: local, paths: ["docs/*.md"]}]\ncleaning: {}\n'
                      "pairing: {}\nvalidation: {min_response_chars: 10}\n")
    assert run_cli("run", recipe, "--run-dir", tmp_path / "runs", "-q").returncode == 0
    result = run_cli("serve", tmp_path / "runs" / "data")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    message = result.stderr
    assert "has nothing to serve" in message and "no export" in message and "training/adapter" in message
    assert "steps finished there: sources, cleaning, pairing, validation" in message
    assert "data.yaml" in message and "neither a run folder" not in message
