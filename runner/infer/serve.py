"""`recipe serve TARGET`: an HTTP server for a run's model (OpenAI-compatible + the original API).

TARGET is a run folder (runs/NAME: its export/merged_16bit, else export/lora, else
training/adapter) or a model/adapter folder. The port opens at once and the model loads in a
background thread; until it is ready, model endpoints answer 503. Invalid requests get 422.

    python -m runner.infer.serve runs/python_docs --port 8000
"""

from __future__ import annotations

import argparse
import itertools
import json
import shlex
import sys
import threading
import time
import uuid
from pathlib import Path

from runner.errors import StepError
from runner.infer.serve_api import ChatRequest, GenerateRequest

RUN_CANDIDATES = ("export/merged_16bit", "export/lora", "training/adapter")


def resolve_target(target: str | Path) -> tuple[Path, str]:
    """(model or adapter folder, served model name) for a run folder or a model path."""
    path = Path(target).expanduser().resolve()
    if (path / "config.json").is_file() or (path / "adapter_config.json").is_file():
        return path, path.name
    if path.is_dir() and any((path / c).is_dir() for c in ("export", "training")):
        for candidate in RUN_CANDIDATES:
            folder = path / candidate
            if (folder / "config.json").is_file() or (folder / "adapter_config.json").is_file():
                return folder, path.name
        raise StepError(f"run folder {path} has no model yet: run the recipe through training "
                        "(or export) first")
    raise StepError(f"{target} is neither a run folder (runs/NAME) nor a model folder "
                    "(config.json or adapter_config.json)")


def vllm_command(model_dir: Path, name: str, port: int = 8000) -> str:
    """The production server line: vLLM's OpenAI-compatible server for the merged model."""
    model_dir = Path(model_dir)
    if (model_dir / "adapter_config.json").is_file():
        config = json.loads((model_dir / "adapter_config.json").read_text())
        return (f"vllm serve {shlex.quote(str(config.get('base_model_name_or_path')))} "
                f"--enable-lora --lora-modules {shlex.quote(name)}={shlex.quote(str(model_dir))} "
                f"--max-lora-rank {config.get('r', 8)} --host 0.0.0.0 --port {port}")
    return (f"vllm serve {shlex.quote(str(model_dir))} --served-model-name {shlex.quote(name)} "
            f"--host 0.0.0.0 --port {port}")


class ModelState:
    """The model and tokenizer once loaded; one generation at a time (the model is shared)."""

    def __init__(self, path: Path, name: str):
        self.path, self.name = path, name
        self.status, self.error = "loading", ""
        self.model = self.tokenizer = None
        self.lock = threading.Lock()
        self.created = int(time.time())

    def load(self) -> None:
        try:
            from runner.infer.generation import load_path, pick_device
            model, tokenizer = load_path(self.path, device=pick_device())
            self.model, self.tokenizer = model.eval(), tokenizer
            self.status = "ready"
        except Exception as error:  # reported by /health and every 503; the server stays up
            self.status, self.error = "failed", f"{type(error).__name__}: {error}"
            print(f"error: loading {self.path} failed: {self.error}", file=sys.stderr)

    def start_loading(self) -> threading.Thread:
        thread = threading.Thread(target=self.load, name="model-loader", daemon=True)
        thread.start()
        return thread


def _unavailable(state: ModelState):
    from fastapi.responses import JSONResponse
    message = (f"model {state.name} is still loading; retry shortly" if state.status == "loading"
               else f"model {state.name} failed to load: {state.error}")
    return JSONResponse({"error": {"message": message, "type": "unavailable", "code": 503}},
                        status_code=503, headers={"Retry-After": "2"})


def _prompt(state: ModelState, messages: list[dict], effort: str) -> str:
    from runner.infer.generation import render_prompt
    return render_prompt(state.tokenizer, "", messages=messages, effort=effort)


def _run_generation(state: ModelState, prompt: str, settings, streamer=None):
    from runner.infer.generation import generate
    with state.lock:
        return generate(state.model, state.tokenizer, prompt, settings, streamer)


def _completion(state: ModelState, request: ChatRequest) -> dict:
    settings = request.generation_settings()
    prompt = _prompt(state, request.message_dicts(), request.reasoning_effort)
    result = _run_generation(state, prompt, settings)
    prompt_tokens = len(state.tokenizer(prompt, add_special_tokens=False)["input_ids"])
    message = {"role": "assistant", "content": result.parsed.final,
               "reasoning_content": result.parsed.analysis or None}
    finish = "length" if result.new_tokens >= settings.max_new_tokens else "stop"
    return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion",
            "created": int(time.time()), "model": state.name,
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": result.new_tokens,
                      "total_tokens": prompt_tokens + result.new_tokens}}


def _chunk(base: dict, delta: dict, finish: str | None = None) -> bytes:
    from fastapi.sse import format_sse_event
    body = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return format_sse_event(data_str=json.dumps(body, ensure_ascii=False))


def _stream(state: ModelState, request: ChatRequest):
    """OpenAI chunk stream: role, then reasoning_content / content deltas, then finish_reason."""
    from fastapi.sse import format_sse_event
    from transformers import TextIteratorStreamer

    from runner.infer.harmony_parse import HarmonyStream

    settings = request.generation_settings()
    prompt = _prompt(state, request.message_dicts(), request.reasoning_effort)
    streamer = TextIteratorStreamer(state.tokenizer, skip_prompt=True, skip_special_tokens=False)
    outcome: dict = {}

    def work():
        try:
            outcome["result"] = _run_generation(state, prompt, settings, streamer)
        except Exception as error:  # surfaced as the stream's last event
            outcome["error"] = f"{type(error).__name__}: {error}"
            streamer.end()

    threading.Thread(target=work, daemon=True).start()
    base = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk",
            "created": int(time.time()), "model": state.name}
    yield _chunk(base, {"role": "assistant", "content": ""})
    parser = HarmonyStream()
    for piece in itertools.chain(streamer, [None]):  # None: flush what was held back
        for channel, text in parser.feed(piece) if piece is not None else parser.finish():
            if channel in ("final", "analysis"):
                key = "content" if channel == "final" else "reasoning_content"
                yield _chunk(base, {key: text})
    if "error" in outcome:
        yield format_sse_event(data_str=json.dumps({"error": {"message": outcome["error"]}}))
    else:
        new_tokens = outcome["result"].new_tokens if "result" in outcome else 0
        yield _chunk(base, {}, "length" if new_tokens >= settings.max_new_tokens else "stop")
    yield format_sse_event(data_str="[DONE]")


def create_app(path: Path, name: str, *, autoload: bool = True):
    """The FastAPI app; app.state.model is the ModelState (autoload=False: call .load() yourself)."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI
    from fastapi.concurrency import iterate_in_threadpool, run_in_threadpool
    from fastapi.sse import EventSourceResponse

    state = ModelState(path, name)

    @asynccontextmanager
    async def lifespan(_app):
        if autoload:
            state.start_loading()
        yield

    app = FastAPI(title=f"recipe serve: {name}", lifespan=lifespan)
    app.state.model = state

    @app.get("/health")
    async def health():
        if state.status != "ready":
            return _unavailable(state)
        return {"status": "ready", "model": name}

    @app.get("/v1/models")
    async def models():
        if state.status != "ready":
            return _unavailable(state)
        return {"object": "list", "data": [{"id": name, "object": "model", "created": state.created,
                                            "owned_by": "recipe", "root": str(path)}]}

    @app.post("/v1/chat/completions")
    async def chat(request: ChatRequest):
        if state.status != "ready":
            return _unavailable(state)
        if request.stream:
            return EventSourceResponse(iterate_in_threadpool(_stream(state, request)))
        return await run_in_threadpool(_completion, state, request)

    @app.post("/generate")
    async def generate_original(request: GenerateRequest):
        """The original notebook's API: {prompt, reasoning_effort, max_tokens} -> {response}."""
        if state.status != "ready":
            return _unavailable(state)
        chat_request = request.as_chat()
        result = await run_in_threadpool(_completion, state, chat_request)
        message = result["choices"][0]["message"]
        return {"response": message["content"], "reasoning": message["reasoning_content"] or ""}

    return app


def serve(target: str, host: str = "127.0.0.1", port: int = 8000, quiet: bool = False) -> None:
    """Start the server (blocks); prints where it listens and the vLLM command for production."""
    import uvicorn

    try:
        path, name = resolve_target(target)
    except StepError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"serving {path} as '{name}' on http://{host}:{port} (OpenAI API under /v1, "
          f"POST /generate); the model loads in the background, 503 until it is ready", flush=True)
    print(f"production: {vllm_command(path, name)}", flush=True)
    uvicorn.run(create_app(path, name), host=host, port=port,
                log_level="warning" if quiet else "info")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m runner.infer.serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", help="run folder (runs/NAME) or model/adapter folder")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--quiet", "-q", action="store_true")
    args = parser.parse_args(argv)
    serve(args.target, host=args.host, port=args.port, quiet=args.quiet)


if __name__ == "__main__":
    main()
