"""Acceptance, on CPU with the tiny model: `recipe run` through training, evaluation and export
(lora + merged_16bit), then `recipe serve` on the run folder answers a chat completion with a
reasoning effort over real HTTP from 127.0.0.1, streamed and not."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from runner.artifacts import read_json, read_jsonl

ROOT = Path(__file__).resolve().parent.parent
RECIPE = """
name: serve_e2e
sources:
  - type: pydoc
    modules: [json, textwrap]
cleaning: {keep_headings: true, splitter: smart}
pairing: {strategy: heading_sections, response_max_chars: 400, response_min_chars: 40}
validation: {dedup: exact}
chat_template: {reasoning_effort: low, current_date: "2025-08-05"}
model: {name: tiny, max_seq_length: 512, load_in_4bit: false}
lora: {r: 4, alpha: 8, target_modules: [q_proj, v_proj]}
training: {backend: hf, max_steps: 1, per_device_train_batch_size: 2, gradient_accumulation_steps: 1,
           optim: adamw_torch, eval_fraction: 0.2, save_steps: 1, logging_steps: 1}
evaluation:
  system_prompt: "You are an expert Python assistant."
  prompts: ["What does json.dumps do?", {prompt: "Wrap this text.", efforts: [high], max_new_tokens: 4}]
  efforts: [low, medium]
  max_new_tokens: 6
export: {targets: [lora, merged_16bit]}
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_ready(base: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"{base}/v1/models", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"server at {base} never became ready (exit code {process.poll()})")


def test_run_export_serve_and_chat(tmp_path, cli):
    recipe = tmp_path / "serve_e2e.yaml"
    recipe.write_text(RECIPE)
    env = {"RECIPE_CACHE": str(tmp_path / "cache")}
    done = cli("run", recipe, "--run-dir", tmp_path / "runs", "-q", env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "runs" / "serve_e2e"

    answers = list(read_jsonl(run / "evaluation" / "answers.jsonl"))
    assert [(a["prompt"][:4], a["reasoning_effort"], a["model"]) for a in answers] == [
        (prompt, effort, model) for prompt, effort in (("What", "low"), ("What", "medium"), ("Wrap", "high"))
        for model in ("base", "tuned")]
    held_out = read_json(run / "evaluation" / "held_out.json")
    assert held_out["base"]["loss"] and held_out["tuned"]["loss"]
    report = read_json(run / "export" / "export_report.json")
    assert set(report["targets"]) == {"lora", "merged_16bit"}

    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "runner", "serve", str(run), "--port", str(port),
                                "--quiet"], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), **env},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, process)
        request = {"model": "serve_e2e", "reasoning_effort": "high", "max_tokens": 5, "seed": 7,
                   "messages": [{"role": "user", "content": "What is a list?"}]}
        answer = httpx.post(f"{base}/v1/chat/completions", json=request, timeout=60)
        assert answer.status_code == 200 and answer.json()["model"] == "serve_e2e"
        with httpx.stream("POST", f"{base}/v1/chat/completions", json={**request, "stream": True},
                          timeout=60) as stream:
            lines = [line for line in stream.iter_lines() if line.startswith("data: ")]
        assert lines[-1] == "data: [DONE]"
        chunks = [json.loads(line[6:]) for line in lines[:-1]]
        streamed = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
        assert streamed.strip() == answer.json()["choices"][0]["message"]["content"].strip()
    finally:
        process.terminate()
        output = process.communicate(timeout=30)[0]
    assert f"vllm serve {run / 'export' / 'merged_16bit'}" in output
