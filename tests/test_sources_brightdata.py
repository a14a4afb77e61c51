"""`type: brightdata` through the real brightdata-sdk against a fake Bright Data API on 127.0.0.1."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fake_brightdata import DEFAULT_TOKEN, FakeBrightData, scripted_faults
from sources_support import make_ctx, run_sources

from runner.errors import StepError

ROOT = Path(__file__).resolve().parent.parent


def urls(count: int, prefix: str = "p") -> list[str]:
    return [f"https://docs.example.com/{prefix}/{i}" for i in range(count)]


def entry(fake: FakeBrightData, pages: list[str], **settings) -> dict:
    return {"type": "brightdata", "urls": pages, "api_url": fake.url, "backoff": 0.01,
            "timeout": 5, **settings}


@pytest.fixture(autouse=True)
def token(monkeypatch):
    monkeypatch.setenv("BRIGHTDATA_API_TOKEN", DEFAULT_TOKEN)
    return DEFAULT_TOKEN


@pytest.fixture
def fake(request):
    options = getattr(request, "param", {})
    with FakeBrightData(**options) as server:
        yield server


def cached_pages(tmp_path: Path) -> list[Path]:
    return list((tmp_path / "runs" / "test" / "cache" / "pages").glob("*.json"))


def test_200_urls_with_injected_500s_and_429s_all_fetched_with_retry_counts(tmp_path):
    pages = urls(200)
    faults = scripted_faults(pages, seed=1)
    with FakeBrightData(faults=faults) as fake:
        metrics, docs, outcomes = run_sources(make_ctx(tmp_path, [entry(fake, pages)]))
    injected_500 = sum(s.count(500) for s in faults.values())
    injected_429 = sum(s.count(429) for s in faults.values())
    assert injected_500 >= 50 and injected_429 >= 20
    assert metrics["requested"] == metrics["fetched"] == metrics["documents"] == 200
    assert metrics["failed"] == 0
    assert metrics["retries"] == injected_500 + injected_429
    assert metrics["failed_attempts_by_reason"] == {"http_500": injected_500, "http_429": injected_429}
    by_url = {o["url"]: o for o in outcomes}
    assert len(by_url) == 200
    for url in pages:
        assert by_url[url]["status"] == "fetched"
        assert by_url[url]["attempts"] == 1 + len(faults.get(url, [])) == fake.attempts[url]
        assert by_url[url]["phase"] == ("single" if url in faults else "batch")
    # What the SDK sent: markdown asked of /request, in the recipe's zone.
    assert {p["data_format"] for p in fake.payloads} == {"markdown"}
    assert {p["zone"] for p in fake.payloads} == {"sdk_unlocker"}
    assert docs[0]["title"] == "Page 0" and docs[0]["markdown"].startswith("# Page 0")
    assert {d["source"] for d in docs} == {"brightdata"} and len({d["id"] for d in docs}) == 200


def test_rejected_token_stops_at_once_and_caches_nothing(tmp_path):
    with FakeBrightData(reject_requests=True) as fake:
        ctx = make_ctx(tmp_path, [entry(fake, urls(60), concurrency=4)])
        with pytest.raises(StepError) as caught:
            run_sources(ctx)
        requests_made = sum(fake.attempts.values())
    message = str(caught.value)
    assert "rejected the token in $BRIGHTDATA_API_TOKEN" in message and "401" in message
    assert requests_made <= 4          # the ones already in flight, nothing after
    assert cached_pages(tmp_path) == []


def test_rejected_token_at_zone_check_sends_no_page_request(tmp_path):
    with FakeBrightData(reject_all=True) as fake:
        with pytest.raises(StepError, match="rejected the token"):
            run_sources(make_ctx(tmp_path, [entry(fake, urls(5))]))
        assert fake.zone_lists == 1 and sum(fake.attempts.values()) == 0


def test_token_appears_in_no_file_and_no_log_line(tmp_path, capfd, caplog):
    caplog.set_level(logging.DEBUG)
    pages = urls(20)
    with FakeBrightData(faults=scripted_faults(pages), always={pages[0]: 404}) as fake:
        ctx = make_ctx(tmp_path, [entry(fake, pages)])
        ctx.quiet = False
        run_sources(ctx)
        ctx.force = True
        fake.reject_requests = True
        with pytest.raises(StepError) as caught:
            run_sources(ctx)
        assert fake.headers_seen[0]["Authorization"] == f"Bearer {DEFAULT_TOKEN}"
    captured = capfd.readouterr()
    assert "404" in captured.err                # the log lines were there to be searched
    for text in (captured.out, captured.err, caplog.text, str(caught.value)):
        assert DEFAULT_TOKEN not in text and DEFAULT_TOKEN[:10] not in text
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) > 20
    for path in files:
        assert DEFAULT_TOKEN.encode() not in path.read_bytes(), path


def test_missing_token_names_the_variable_before_any_request(tmp_path, monkeypatch, fake):
    monkeypatch.delenv("MY_BD_TOKEN", raising=False)
    with pytest.raises(StepError, match=r"MY_BD_TOKEN") as caught:
        run_sources(make_ctx(tmp_path, [entry(fake, urls(3), token_env="MY_BD_TOKEN")]))
    assert "export MY_BD_TOKEN" in str(caught.value)
    assert fake.zone_lists == 0 and not fake.attempts


def test_token_from_a_configured_variable(tmp_path, monkeypatch, fake):
    monkeypatch.delenv("BRIGHTDATA_API_TOKEN")
    monkeypatch.setenv("TEAM_BD_TOKEN", DEFAULT_TOKEN)
    metrics, _, _ = run_sources(make_ctx(tmp_path, [entry(fake, urls(3), token_env="TEAM_BD_TOKEN")]))
    assert metrics["fetched"] == 3


def test_slow_answers_time_out_and_are_retried(tmp_path):
    pages = urls(4)
    with FakeBrightData(faults={pages[1]: ["slow"]}, slow_seconds=1.0) as fake:
        metrics, _, outcomes = run_sources(make_ctx(tmp_path, [entry(fake, pages, timeout=0.3)]))
    assert metrics["fetched"] == 4
    assert metrics["failed_attempts_by_reason"] == {"timeout": 1}
    assert [o["attempts"] for o in outcomes] == [1, 2, 1, 1]


def test_dropped_connection_is_retried(tmp_path):
    pages = urls(3)
    with FakeBrightData(faults={pages[0]: ["drop", "drop"]}) as fake:
        metrics, _, outcomes = run_sources(make_ctx(tmp_path, [entry(fake, pages)]))
    assert metrics["fetched"] == 3 and outcomes[0]["attempts"] == 3
    assert metrics["failed_attempts_by_reason"] == {"connection": 2}


def test_refused_connection_is_a_clear_error_not_an_ssl_one(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = {"type": "brightdata", "urls": urls(2), "api_url": f"http://127.0.0.1:{port}",
                "retries": 2, "backoff": 0.01}
    started = time.monotonic()
    with pytest.raises(StepError) as caught:
        run_sources(make_ctx(tmp_path, [settings]))
    message = str(caught.value)
    assert "cannot list zones" in message and "connection" in message and "api_url" in message
    assert "ssl" not in message.lower().split("connection")[0]
    assert time.monotonic() - started < 5


def test_one_bad_url_never_stops_the_others(tmp_path):
    pages = urls(10)
    with FakeBrightData(always={pages[2]: 404, pages[5]: 502}) as fake:
        metrics, docs, outcomes = run_sources(make_ctx(tmp_path, [entry(fake, pages, retries=2)]))
    assert metrics["fetched"] == 8 and metrics["documents"] == 8
    assert metrics["failed_by_reason"] == {"http_404": 1, "http_502": 1}
    assert (outcomes[2]["status"], outcomes[2]["attempts"]) == ("failed", 1)       # not retryable
    assert (outcomes[5]["status"], outcomes[5]["attempts"]) == ("failed", 3)       # 1 + retries
    assert fake.attempts[pages[5]] == 3


def test_zero_pages_gives_the_troubleshooting_message(tmp_path):
    pages = urls(3)
    with FakeBrightData(always={u: 503 for u in pages}) as fake:
        with pytest.raises(StepError) as caught:
            run_sources(make_ctx(tmp_path, [entry(fake, pages, retries=1)]))
    message = str(caught.value)
    assert "no page was collected from 3 URL(s)" in message and "http_503 x3" in message
    for hint in ("BRIGHTDATA_API_TOKEN", "credits", "try one URL alone"):
        assert hint in message


def test_cache_spares_the_network_and_refresh_or_force_fetch_again(tmp_path, monkeypatch):
    pages = urls(5)
    with FakeBrightData() as fake:
        first_ctx = make_ctx(tmp_path, [entry(fake, pages)])
        _, first_docs, _ = run_sources(first_ctx)
        assert len(cached_pages(tmp_path)) == 5
        monkeypatch.delenv("BRIGHTDATA_API_TOKEN")      # a fully cached run needs no token
        metrics, docs, outcomes = run_sources(make_ctx(tmp_path, [entry(fake, pages)]))
        assert metrics["cached"] == 5 and metrics["fetched"] == 0
        assert sum(fake.attempts.values()) == 5 and docs == first_docs
        assert {o["status"] for o in outcomes} == {"cached"}
        monkeypatch.setenv("BRIGHTDATA_API_TOKEN", DEFAULT_TOKEN)
        metrics, _, _ = run_sources(make_ctx(tmp_path, [entry(fake, pages, refresh=True)]))
        assert metrics["fetched"] == 5 and sum(fake.attempts.values()) == 10
        metrics, _, _ = run_sources(make_ctx(tmp_path, [entry(fake, pages)], force=True))
        assert metrics["fetched"] == 5 and sum(fake.attempts.values()) == 15
        # Another zone is another page variant: not served from this cache.
        fake.zones.append("other")
        metrics, _, _ = run_sources(make_ctx(tmp_path, [entry(fake, pages, zone="other")]))
        assert metrics["fetched"] == 5


def test_missing_zone_is_an_error_unless_create_zone(tmp_path):
    with FakeBrightData(zones=("someone_elses",)) as fake:
        with pytest.raises(StepError, match="zone 'sdk_unlocker' is not among") as caught:
            run_sources(make_ctx(tmp_path, [entry(fake, urls(2))]))
        assert "create_zone: true" in str(caught.value) and fake.created_zones == []
        metrics, _, _ = run_sources(make_ctx(tmp_path, [entry(fake, urls(2), create_zone=True)]))
    assert fake.created_zones == ["sdk_unlocker"] and metrics["fetched"] == 2


def test_raw_format_is_converted_keeping_main_content(tmp_path, fake):
    _, docs, _ = run_sources(make_ctx(tmp_path, [entry(fake, urls(2), format="raw", country="de")]))
    assert "data_format" not in fake.payloads[0] and fake.payloads[0]["country"] == "DE"
    assert docs[0]["title"] == "Page 0"
    assert docs[0]["markdown"].startswith("# Page 0") and "## Details of 0" in docs[0]["markdown"]
    assert "Copyright" not in docs[0]["markdown"] and "Previous" not in docs[0]["markdown"]


def test_without_batch_first_every_url_is_fetched_on_its_own(tmp_path):
    pages = urls(6)
    with FakeBrightData(faults={pages[0]: [500]}) as fake:
        _, _, outcomes = run_sources(make_ctx(tmp_path, [entry(fake, pages, batch_first=False)]))
    assert {o["phase"] for o in outcomes} == {"single"} and outcomes[0]["attempts"] == 2


def test_rate_limit_spaces_the_requests(tmp_path, fake):
    started = time.monotonic()
    run_sources(make_ctx(tmp_path, [entry(fake, urls(6), rate_limit=20)]))
    assert time.monotonic() - started >= 5 / 20


def test_a_dotenv_file_cannot_inject_variables_at_sdk_import(tmp_path):
    (tmp_path / ".env").write_text("BRIGHTDATA_API_TOKEN=from-a-stray-dotenv-file\n"
                                   "RECIPE_DOTENV_PROBE=injected\n")
    env = {k: v for k, v in os.environ.items()
           if k not in ("BRIGHTDATA_API_TOKEN", "RECIPE_DOTENV_PROBE")}
    env["PYTHONPATH"] = str(ROOT)
    probe = "import os; print(os.environ.get('RECIPE_DOTENV_PROBE'), os.environ.get('BRIGHTDATA_API_TOKEN'))"

    def run(code: str) -> str:
        # `python -c` makes python-dotenv search from the current folder: the stray .env here.
        done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    assert run(f"import brightdata; {probe}") == "injected from-a-stray-dotenv-file"   # the hazard
    guarded = run(f"from runner.sources.brightdata_source import import_sdk; import_sdk(print); {probe}")
    assert guarded.splitlines()[-1] == "None None"
    assert "RECIPE_DOTENV_PROBE" in guarded and "from-a-stray" not in guarded.splitlines()[0]


def test_cli_run_exit_codes_and_no_token_in_the_run_folder(tmp_path, cli):
    pages = urls(12)
    with FakeBrightData(faults=scripted_faults(pages)) as fake:
        listed = "".join(f"\n      - {u}" for u in pages)
        (tmp_path / "r.yaml").write_text(
            f"name: bd\nsources:\n  - type: brightdata\n    api_url: {fake.url}\n"
            f"    backoff: 0.01\n    urls:{listed}\n")
        done = cli("run", tmp_path / "r.yaml", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert "12 fetched" in done.stderr and "retries" in done.stderr
        fake.reject_requests = True
        rejected = cli("run", tmp_path / "r.yaml", "--force", "sources", cwd=tmp_path)
    assert rejected.returncode != 0
    assert "rejected the token in $BRIGHTDATA_API_TOKEN" in rejected.stderr
    assert "Traceback" not in rejected.stderr
    files = [p for p in (tmp_path / "runs").rglob("*") if p.is_file()]
    assert any(p.name == "manifest.json" for p in files)
    for path in files:
        assert DEFAULT_TOKEN.encode() not in path.read_bytes(), path
    for text in (done.stdout, done.stderr, rejected.stdout, rejected.stderr):
        assert DEFAULT_TOKEN not in text
