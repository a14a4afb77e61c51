"""`type: http` against a local HTTP server serving real documentation HTML.

The pages are Debian's python3.11-doc when installed, and Sphinx-like generated pages always
(so CI without that package still runs every test)."""

from __future__ import annotations

import functools
import threading
from collections import Counter
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from sources_support import PYTHON_DOCS, make_ctx, run_sources, sphinx_page

from runner.errors import StepError

TUTORIAL = {"introduction": "An Informal Introduction to Python",
            "controlflow": "More Control Flow Tools", "datastructures": "Data Structures",
            "modules": "Modules", "classes": "Classes"}
FURNITURE = ("Previous topic", "Table of Contents", "This Page", "Copyright", "Navigation")


def generated_docs(root: Path) -> Path:
    (root / "tutorial").mkdir(parents=True)
    for number, (name, title) in enumerate(TUTORIAL.items(), 3):
        (root / "tutorial" / f"{name}.html").write_text(sphinx_page(title, number))
    return root


class DocServer:
    """ThreadingHTTPServer over a folder, with scripted failures and the headers it saw."""

    def __init__(self, root: Path, faults: dict[str, list[int]] | None = None):
        self.faults, self.hits, self.agents = faults or {}, Counter(), []
        outer = self

        class Handler(SimpleHTTPRequestHandler):
            def do_GET(self):
                outer.hits[self.path] += 1
                outer.agents.append(self.headers.get("User-Agent"))
                script = outer.faults.get(self.path, [])
                if outer.hits[self.path] <= len(script):
                    self.send_error(script[outer.hits[self.path] - 1])
                    return
                super().do_GET()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0),
                                          functools.partial(Handler, directory=str(root)))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(params=["python3.11-doc", "generated"])
def docs_root(request, tmp_path):
    if request.param == "generated":
        return generated_docs(tmp_path / "site")
    if not (PYTHON_DOCS / "tutorial" / "controlflow.html").exists():
        pytest.skip("python3.11-doc is not installed (the generated pages still run)")
    return PYTHON_DOCS


def http_entry(server: DocServer, paths: list[str], **settings) -> dict:
    return {"type": "http", "urls": [server.url + p for p in paths], "backoff": 0.01, **settings}


def test_pages_become_markdown_with_headings_and_no_page_furniture(tmp_path, docs_root):
    paths = [f"/tutorial/{name}.html" for name in TUTORIAL]
    faults = {paths[0]: [503], paths[1]: [429, 500]}
    with DocServer(docs_root, faults) as server:
        metrics, docs, outcomes = run_sources(make_ctx(tmp_path, [http_entry(server, paths)]))
        assert set(server.agents) == {"recipe-runner/0.1 (+fine-tuning data collection)"}
    assert metrics["fetched"] == 5 and metrics["retries"] == 3
    assert [o["attempts"] for o in outcomes] == [2, 3, 1, 1, 1]
    control_flow = docs[1]
    assert control_flow["source"] == "http" and control_flow["url"].endswith("controlflow.html")
    assert "Control Flow" in control_flow["title"]
    headings = [line for line in control_flow["markdown"].splitlines() if line.startswith("#")]
    assert headings[0].startswith("# ") and "Control Flow" in headings[0]
    assert any(h.startswith("## ") for h in headings) and not any("¶" in h for h in headings)
    assert "```" in control_flow["markdown"] and ">>> " in control_flow["markdown"]
    for doc in docs:
        for furniture in FURNITURE:
            assert furniture not in doc["markdown"], (doc["url"], furniture)


def test_main_content_off_keeps_the_whole_page(tmp_path):
    root = generated_docs(tmp_path / "site")
    with DocServer(root) as server:
        _, docs, _ = run_sources(make_ctx(tmp_path, [http_entry(
            server, ["/tutorial/classes.html"], main_content=False, user_agent="probe/1")]))
        assert server.agents == ["probe/1"]
    assert "Table of Contents" in docs[0]["markdown"] and "# 7. Classes" in docs[0]["markdown"]
    assert "var x" not in docs[0]["markdown"]


def test_missing_pages_and_non_text_files_fail_alone(tmp_path):
    root = generated_docs(tmp_path / "site")
    (root / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    (root / "notes.md").write_text("# Notes\n\nPlain markdown served as is.\n")
    paths = ["/tutorial/modules.html", "/missing.html", "/logo.png", "/notes.md"]
    with DocServer(root) as server:
        metrics, docs, outcomes = run_sources(make_ctx(tmp_path, [http_entry(server, paths)]))
        assert server.hits["/missing.html"] == 1          # a 404 is not retried
    assert metrics["failed_by_reason"] == {"content_type": 1, "http_404": 1}
    assert [o["status"] for o in outcomes] == ["fetched", "failed", "failed", "fetched"]
    assert docs[1]["title"] == "Notes" and docs[1]["markdown"].startswith("# Notes")


def test_unreachable_server_gives_the_troubleshooting_message(tmp_path):
    root = generated_docs(tmp_path / "site")
    with DocServer(root) as server:
        url = server.url
    with pytest.raises(StepError) as caught:
        run_sources(make_ctx(tmp_path, [{"type": "http", "urls": [url + "/a.html"],
                                         "retries": 1, "backoff": 0.01}]))
    message = str(caught.value)
    assert "no page was collected" in message and "connection x1" in message
    assert "Troubleshooting" in message and "attempt(s)" in message


def test_a_fetched_page_that_cannot_be_converted_is_counted_not_swallowed(tmp_path):
    root = generated_docs(tmp_path / "site")
    (root / "broken.html").write_text("<?xml version='1.0'?><!-- nothing but a comment -->")
    with DocServer(root) as server:
        metrics, docs, outcomes = run_sources(make_ctx(tmp_path, [
            http_entry(server, ["/tutorial/modules.html", "/broken.html"])]))
    assert [d["url"].rsplit("/", 1)[1] for d in docs] == ["modules.html"]
    assert metrics["entries"][0]["conversion_failed_by_reason"] == {"html_parse_error": 1}
    broken = next(o for o in outcomes if o["url"].endswith("/broken.html"))
    assert broken["status"] == "fetched" and broken["conversion"]["reason"] == "html_parse_error"
