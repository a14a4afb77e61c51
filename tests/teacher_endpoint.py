"""A local OpenAI-compatible endpoint for the teacher tests, with faults on demand.

It answers like a careful teacher: each question names the section's heading and each answer
is the section's first sentence, so everything it writes is grounded. A section whose text
contains a FAULT word gets that fault instead, attempt after attempt as the plan says:

    Flaky500 -> 500, 500, then a good answer      RateLimited -> 429 (Retry-After: 1), then good
    SlowOnce -> too slow once, then good          AlwaysDown -> 500 on every attempt
    GarbageBody -> 200 with a body that is not JSON
    NotJson / WrongShape / Truncated -> a 200 answer whose content is unusable that way
    Refusal -> a refusal; Invented -> an answer naming an API the section does not have
As a judge it scores 5, or 2 for a section containing LowScore. Every request is logged (time,
the fault word, the attempt) in `server.log`.
"""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PLANS = {
    "Flaky500": ["500", "500", "ok"], "RateLimited": ["429", "ok"], "SlowOnce": ["slow", "ok"],
    "AlwaysDown": ["500"] * 20, "GarbageBody": ["garbage"] * 20, "NotJson": ["not_json"],
    "WrongShape": ["wrong_shape"], "Truncated": ["truncated"], "Refusal": ["refusal"],
    "Invented": ["invented"],
}
SECTION = re.compile(r"<section>\n(.*?)\n</section>", re.S)
HEADING = re.compile(r"^Section: (.*)$", re.M)


class TeacherEndpoint:
    """Serves on 127.0.0.1 in a thread; `with TeacherEndpoint() as server: server.url`."""

    def __init__(self, status: int | None = None, slow_s: float = 3.0, hold_after: int | None = None):
        self.status = status            # e.g. 401: every request answers that
        self.slow_s = slow_s
        self.hold_after = hold_after    # answer this many requests, then hang (a run to kill)
        self.log: list[dict] = []
        self.attempts: dict[str, int] = {}
        self.lock = threading.Lock()
        self.release = threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> TeacherEndpoint:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    @property
    def requests(self) -> int:
        return len(self.log)

    def answered(self) -> int:
        return sum(1 for entry in self.log if entry["answered"])

    def _handler(self):
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                self._send(200, {"object": "list", "data": [{"id": "fault-teacher"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = body["messages"][-1]["content"]
                endpoint.respond(self, prompt)

            def _send(self, status, payload, headers=None, raw=None):
                data = raw if raw is not None else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

        return Handler

    def respond(self, handler, prompt: str) -> None:
        section = SECTION.search(prompt)
        text = section.group(1) if section else prompt
        if "Rate the answer" in prompt:            # a judge request
            self.log.append({"time": time.monotonic(), "fault": "judge", "attempt": 1,
                             "answered": True})
            score = 2 if "LowScore" in text else 5
            handler._send(200, _chat(json.dumps({"score": score, "reason": "checked"}), "stop",
                                     prompt))
            return
        fault = next((word for word in PLANS if word in text), None)
        with self.lock:
            attempt = self.attempts.get(text, 0)
            self.attempts[text] = attempt + 1
            entry = {"time": time.monotonic(), "fault": fault, "attempt": attempt + 1,
                     "answered": False}
            self.log.append(entry)
            held = self.hold_after is not None and self.answered() >= self.hold_after
        if held:
            self.release.wait(60)
            return
        if self.status:
            handler._send(self.status, {"error": {"message": "invalid api key"}})
            return
        plan = PLANS.get(fault, ["ok"])
        action = plan[min(attempt, len(plan) - 1)]
        if action == "slow":
            time.sleep(self.slow_s)
            action = "ok"
        if action in ("500", "429"):
            handler._send(int(action), {"error": {"message": "try again"}},
                          headers={"Retry-After": "1"} if action == "429" else None)
            return
        if action == "garbage":
            handler._send(200, None, raw=b"<html>upstream proxy error</html>")
            return
        content, finish = self._content(action, text, HEADING.search(prompt))
        entry["answered"] = True
        handler._send(200, _chat(content, finish, prompt))

    @staticmethod
    def _content(action: str, text: str, heading) -> tuple[str, str]:
        topic = heading.group(1).split(" > ")[-1] if heading else "this"
        first_sentence = re.split(r"(?<=\.)\s", text.strip(), maxsplit=1)[0]
        good = {"pairs": [{"question": f"What does the documentation say about {topic}?",
                           "answer": first_sentence}]}
        if action == "not_json":
            return "Sure! Here are some questions about the section.", "stop"
        if action == "wrong_shape":
            return json.dumps({"questions": ["What?"]}), "stop"
        if action == "truncated":
            return json.dumps(good)[:25], "length"
        if action == "refusal":
            return json.dumps({"pairs": [{"question": f"What is {topic}?", "answer":
                               "I'm sorry, the section does not say anything about that."}]}), "stop"
        if action == "invented":
            return json.dumps({"pairs": [{"question": f"How do I use {topic}?", "answer":
                               f"{first_sentence} Call frobnicate_all() to do it."}]}), "stop"
        return "```json\n" + json.dumps(good) + "\n```", "stop"


def _chat(content: str, finish: str, prompt: str) -> dict:
    return {"id": "x", "object": "chat.completion", "model": "fault-teacher",
            "choices": [{"index": 0, "finish_reason": finish,
                         "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": len(prompt.split()), "completion_tokens": len(content.split())}}
