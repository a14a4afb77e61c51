"""`recipe serve TARGET`: an HTTP server for a run's model (OpenAI-compatible + the original API).

TARGET is a run folder (runs/NAME: its export/merged_16bit, else export/lora, else
training/adapter) or a model/adapter folder. The port opens at once (127.0.0.1 unless --host
says otherwise) and the model loads in a background thread; until it is ready, model endpoints
answer 503. Invalid requests get 422, an unknown model 404, a body or max_tokens over the
limits 413 or 400, a full queue 503 with Retry-After; with RECIPE_SERVE_API_KEY set, a request
without `Authorization: Bearer <key>` gets 401.

    python -m runner.infer.serve runs/python_docs --port 8000
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import threading
import time
import uuid
from pathlib import Path

from runner.errors import StepError
from runner.infer.serve_api import DEFAULT_MAX_TOKENS, ChatRequest, GenerateRequest
from runner.infer.serve_guard import (
    API_KEY_ENV,
    DEFAULT_LIMITS,
    Admission,
    GuardMiddleware,
    ServeLimits,
    add_limit_arguments,
    error_response,
    limits_from_env,
    overloaded,
)
from runner.infer.serve_target import resolve_target, vllm_command

__all__ = ["create_app", "main", "resolve_target", "serve", "vllm_command"]

class ModelState:
    """The model and tokenizer once loaded; one generation at a time (the model is shared)."""

    def __init__(self, path: Path, name: str, limits: ServeLimits):
        self.path, self.name, self.limits = path, name, limits
        self.status, self.error = "loading", ""
        self.model = self.tokenizer = self.format = None
        self.lock = threading.Lock()
        self.admission = Admission(limits.max_waiting)
        self.created = int(time.time())

    def load(self) -> None:
        try:
            from runner.infer.generation import load_path, pick_device
            from runner.infer.serve_format import served_format
            model, tokenizer = load_path(self.path, device=pick_device())
            self.format = served_format(self.path, tokenizer)
            self.model, self.tokenizer = model.eval(), tokenizer
            self.status = "ready"
            kind = "harmony" if self.format.answer.harmony else "plain"
            print(f"answers: {kind}, ending at {', '.join(self.format.answer.stop_tokens)} "
                  f"(from {self.format.source})", flush=True)
        except Exception as error:  # reported by /health and every 503; the server stays up
            self.status, self.error = "failed", f"{type(error).__name__}: {error}"
            print(f"error: loading {self.path} failed: {self.error}", file=sys.stderr)

    def start_loading(self) -> threading.Thread:
        thread = threading.Thread(target=self.load, name="model-loader", daemon=True)
        thread.start()
        return thread


def _unavailable(state: ModelState):
    message = (f"model {state.name} is still loading; retry shortly" if state.status == "loading"
               else f"model {state.name} failed to load: {state.error}")
    return error_response(503, message, "unavailable", 503, headers={"Retry-After": "2"})


def _refusal(state: ModelState, model: str | None, max_tokens: int):
    """The answer to a request this server will not take on, or None to go ahead."""
    if state.status != "ready":
        return _unavailable(state)
    if model is not None and model != state.name:
        return error_response(404, f"the model '{model}' does not exist here; this server serves "
                              f"'{state.name}' (GET /v1/models)", "invalid_request_error",
                              "model_not_found")
    if max_tokens > state.limits.max_tokens:
        return error_response(400, f"max_tokens is too large: {max_tokens}; this server allows at "
                              f"most {state.limits.max_tokens} (its --max-tokens)",
                              "invalid_request_error", "max_tokens_too_large")
    return None


def _prompt(state: ModelState, messages: list[dict], effort: str) -> str:
    from runner.infer.generation import render_prompt
    harmony = state.format.answer.harmony   # reasoning effort means nothing to other templates
    return render_prompt(state.tokenizer, "", messages=messages, effort=effort if harmony else None,
                         chat_template=state.format.template)


def _run_generation(state: ModelState, prompt: str, settings, streamer=None):
    from runner.infer.generation import generate
    with state.lock:
        started = time.monotonic()
        try:
            return generate(state.model, state.tokenizer, prompt, settings, streamer,
                            answer_format=state.format.answer)
        finally:
            state.admission.note_generation(time.monotonic() - started)


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


async def _admitted_completion(state: ModelState, request: ChatRequest):
    """_completion in a worker thread, if the queue has room; the worker gives the place back."""
    from fastapi.concurrency import run_in_threadpool
    if not state.admission.try_enter():
        return overloaded(state.admission)
    started = threading.Event()

    def work():
        started.set()
        try:
            return _completion(state, request)
        finally:
            state.admission.leave()
    try:
        return await run_in_threadpool(work)
    except BaseException:
        if not started.is_set():  # cancelled before a thread took it: nobody else will
            state.admission.leave()
        raise


def _chunk(base: dict, delta: dict, finish: str | None = None) -> bytes:
    from fastapi.sse import format_sse_event
    body = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return format_sse_event(data_str=json.dumps(body, ensure_ascii=False))


def _start_stream(state: ModelState, request: ChatRequest):
    """Start generating now (the worker thread gives the queue place back, whatever the client
    does); return the OpenAI chunk stream: role, reasoning_content / content deltas, finish."""
    from transformers import TextIteratorStreamer

    try:
        settings = request.generation_settings()
        prompt = _prompt(state, request.message_dicts(), request.reasoning_effort)
        streamer = TextIteratorStreamer(state.tokenizer, skip_prompt=True, skip_special_tokens=False)
    except BaseException:
        state.admission.leave()  # no worker will
        raise
    outcome: dict = {}

    def work():
        try:
            outcome["result"] = _run_generation(state, prompt, settings, streamer)
        except Exception as error:  # surfaced as the stream's last event
            outcome["error"] = f"{type(error).__name__}: {error}"
            streamer.end()
        finally:
            state.admission.leave()

    threading.Thread(target=work, daemon=True).start()
    return _stream_chunks(state, settings, streamer, outcome)


def _stream_chunks(state: ModelState, settings, streamer, outcome: dict):
    from fastapi.sse import format_sse_event

    from runner.infer.serve_format import stream_parser

    base = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk",
            "created": int(time.time()), "model": state.name}
    yield _chunk(base, {"role": "assistant", "content": ""})
    parser = stream_parser(state.format.answer)
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


def create_app(path: Path, name: str, *, autoload: bool = True, limits: ServeLimits = DEFAULT_LIMITS):
    """The FastAPI app; app.state.model is the ModelState (autoload=False: call .load() yourself)."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI

    state = ModelState(path, name, limits)

    @asynccontextmanager
    async def lifespan(_app):
        if autoload:
            state.start_loading()
        yield

    app = FastAPI(title=f"recipe serve: {name}", lifespan=lifespan)
    app.add_middleware(GuardMiddleware, limits=limits)
    app.state.model = state

    def model_card() -> dict:
        return {"id": name, "object": "model", "created": state.created, "owned_by": "recipe",
                "root": str(path)}

    @app.get("/health")
    async def health():
        if state.status != "ready":
            return _unavailable(state)
        return {"status": "ready", "model": name, "in_progress": state.admission.active}

    @app.get("/v1/models")
    async def models():
        if state.status != "ready":
            return _unavailable(state)
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model}")
    async def one_model(model: str):
        return _refusal(state, model, 0) or model_card()

    @app.post("/v1/chat/completions")
    async def chat(request: ChatRequest):
        return await _chat(state, request)

    @app.post("/generate")
    async def generate_original(request: GenerateRequest):
        """The original notebook's API: {prompt, reasoning_effort, max_tokens} -> {response}."""
        return await _generate(state, request)

    return app


async def _chat(state: ModelState, request: ChatRequest):
    from fastapi.concurrency import iterate_in_threadpool
    from fastapi.sse import EventSourceResponse

    if not {"max_tokens", "max_completion_tokens"} & request.model_fields_set:
        request.max_tokens = min(DEFAULT_MAX_TOKENS, state.limits.max_tokens)  # unasked: within limits
    refusal = _refusal(state, request.model, request.requested_tokens())
    if refusal:
        return refusal
    if not request.stream:
        return await _admitted_completion(state, request)
    if not state.admission.try_enter():
        return overloaded(state.admission)
    return EventSourceResponse(iterate_in_threadpool(_start_stream(state, request)))


async def _generate(state: ModelState, request: GenerateRequest):
    if "max_tokens" not in request.model_fields_set:
        request.max_tokens = min(DEFAULT_MAX_TOKENS, state.limits.max_tokens)
    refusal = _refusal(state, None, request.max_tokens)
    if refusal:
        return refusal
    result = await _admitted_completion(state, request.as_chat())
    if not isinstance(result, dict):  # refused: the queue is full
        return result
    message = result["choices"][0]["message"]
    return {"response": message["content"], "reasoning": message["reasoning_content"] or ""}


def serve(target: str, host: str = "127.0.0.1", port: int = 8000, quiet: bool = False,
          limits: ServeLimits = DEFAULT_LIMITS) -> None:
    """Start the server (blocks); prints where it listens and the vLLM command for production."""
    import uvicorn

    try:
        path, name = resolve_target(target)
    except StepError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"serving {path} as '{name}' on http://{host}:{port} (OpenAI API under /v1, "
          f"POST /generate); the model loads in the background, 503 until it is ready", flush=True)
    print(f"limits: {limits.max_waiting} waiting, bodies up to {limits.max_body_bytes:,} bytes, "
          f"max_tokens up to {limits.max_tokens}; "
          + ("API key required" if limits.api_key else f"no API key ({API_KEY_ENV} unset)"), flush=True)
    if host not in ("127.0.0.1", "localhost", "::1") and not limits.api_key:
        print(f"warning: listening on {host} without an API key: anyone who reaches this machine "
              f"can use the model; set {API_KEY_ENV}", file=sys.stderr, flush=True)
    print(f"production: {vllm_command(path, name)}", flush=True)
    # a connection cap well above the queue bounds memory under a flood of connections
    uvicorn.run(create_app(path, name, limits=limits), host=host, port=port,
                limit_concurrency=max(64, 4 * (limits.max_waiting + 1)),
                log_level="warning" if quiet else "info")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m runner.infer.serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", help="run folder (runs/NAME) or model/adapter folder")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--quiet", "-q", action="store_true")
    add_limit_arguments(parser)
    args = parser.parse_args(argv)
    limits = limits_from_env(args.max_waiting, args.max_body_bytes, args.max_tokens, args.api_key_env)
    serve(args.target, host=args.host, port=args.port, quiet=args.quiet, limits=limits)


if __name__ == "__main__":
    main()
