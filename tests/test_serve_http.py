"""`recipe serve` on the tiny model: real HTTP on 127.0.0.1 (OpenAI chat completions, streamed
and not, /v1/models, the original /generate), 503 while loading, 422 for invalid requests."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from tuned_fixture import copy_run, make_ctx, publish, section_settings

from runner.errors import StepError
from runner.infer.serve import create_app, resolve_target, vllm_command
from runner.steps.export import export

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run through export (lora + merged_16bit), as `recipe run` leaves it."""
    run = copy_run(tmp_path_factory.mktemp("serve"))
    ctx = make_ctx(run, "export", section_settings("export", targets=["lora", "merged_16bit"],
                                                   verify=False), ["training"])
    export(ctx)
    publish(ctx)
    return run


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(run):
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "runner.infer.serve", str(run), "--port", str(port),
                                "--quiet"], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    statuses = []
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and process.poll() is None:
            try:
                statuses.append(httpx.get(f"{base}/v1/models", timeout=5).status_code)
            except httpx.TransportError:
                pass
            if statuses and statuses[-1] == 200:
                break
            time.sleep(0.2)
        assert statuses and statuses[-1] == 200, f"server never got ready: {statuses}"
        yield base, statuses
    finally:
        process.terminate()
        output = process.communicate(timeout=30)[0]
    assert "vllm serve" in output and "merged_16bit" in output


def test_models_lists_the_run(server):
    base, statuses = server
    assert set(statuses) <= {503, 200}  # 503 while loading, never anything else
    body = httpx.get(f"{base}/v1/models").json()
    assert body["object"] == "list" and body["data"][0]["id"] == "tiny"
    assert body["data"][0]["root"].endswith("export/merged_16bit")


def test_chat_completion_with_reasoning_effort(server):
    base, _ = server
    response = httpx.post(f"{base}/v1/chat/completions", timeout=60, json={
        "model": "tiny", "reasoning_effort": "high", "max_tokens": 6, "seed": 1,
        "messages": [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": "What is a list?"}]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "chat.completion" and body["model"] == "tiny"
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant" and isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] in ("stop", "length")
    assert 0 < body["usage"]["completion_tokens"] <= 6 and body["usage"]["prompt_tokens"] > 0


def test_chat_completion_streams_openai_chunks(server):
    base, _ = server
    request = {"reasoning_effort": "low", "max_tokens": 6, "stream": True, "seed": 1,
               "messages": [{"role": "user", "content": "What is a tuple?"}]}
    with httpx.stream("POST", f"{base}/v1/chat/completions", json=request, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line[len("data: "):] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    streamed = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    # The same request without streaming gives the same answer (same seed).
    plain = httpx.post(f"{base}/v1/chat/completions", json={**request, "stream": False}, timeout=60)
    assert streamed.strip() == plain.json()["choices"][0]["message"]["content"].strip()


def test_original_generate_endpoint(server):
    base, _ = server
    response = httpx.post(f"{base}/generate", timeout=60,
                          json={"prompt": "What is a dict?", "reasoning_effort": "low", "max_tokens": 5})
    assert response.status_code == 200 and isinstance(response.json()["response"], str)


@pytest.mark.parametrize("path,body", [
    ("/generate", {"prompt": ""}),
    ("/generate", {"prompt": "x", "reasoning_effort": "extreme"}),
    ("/generate", {"prompt": "x", "max_tokens": 0}),
    ("/v1/chat/completions", {"messages": []}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "n": 2}),
    ("/v1/chat/completions", {"messages": [{"role": "robot", "content": "x"}]}),
])
def test_invalid_requests_get_422(server, path, body):
    base, _ = server
    assert httpx.post(f"{base}{path}", json=body, timeout=30).status_code == 422


def test_503_until_the_model_is_loaded(run):
    from fastapi.testclient import TestClient

    path, name = resolve_target(run / "export" / "lora")  # an adapter folder as the target
    app = create_app(path, name, autoload=False)
    with TestClient(app) as client:
        request = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
        for response in (client.get("/v1/models"), client.post("/v1/chat/completions", json=request),
                         client.post("/generate", json={"prompt": "hi"}), client.get("/health")):
            assert response.status_code == 503 and "loading" in response.json()["error"]["message"]
        app.state.model.load()
        assert client.post("/v1/chat/completions", json=request).status_code == 200
        assert client.get("/health").json()["status"] == "ready"


def test_targets_and_vllm_command(run, tmp_path):
    assert resolve_target(run)[0] == run / "export" / "merged_16bit"
    assert resolve_target(run / "training" / "adapter")[0] == run / "training" / "adapter"
    with pytest.raises(StepError, match="neither a run folder"):
        resolve_target(tmp_path)
    adapter_line = vllm_command(run / "export" / "lora", "tiny")
    assert "--enable-lora" in adapter_line and "tiny=" in adapter_line
