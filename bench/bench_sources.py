"""Benchmark of the sources step, run as a user runs it (`python -m runner run`):

1. brightdata: N URLs (default 2,000) through the real brightdata-sdk against the fake Bright Data
   API (tests/fake_brightdata.py, in its own process), a third of first attempts answered 500
   and a tenth 429 twice; reports wall time, peak memory of the run and that every URL is
   accounted for (fetched + failed == requested, one outcome line each);
2. the same recipe again with one fetch setting changed: every page from the raw-page cache;
3. local: all of Debian's python3.11-doc HTML (~530 pages) to markdown on every core.

Results go to bench/results/sources.md (and stdout as JSON).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
PYTHON_DOCS = Path("/usr/share/doc/python3.11/html")


def run_cli(recipe: Path, *extra: str, env: dict) -> dict:
    """One `python -m runner run` in a child: wall time, CPU time and that child's peak RSS."""
    with tempfile.TemporaryFile() as errors:
        started = time.perf_counter()
        child = subprocess.Popen([sys.executable, "-m", "runner", "run", str(recipe), "--quiet",
                                  *extra], cwd=recipe.parent, env=env,
                                 stdout=subprocess.DEVNULL, stderr=errors)
        _, status, usage = os.wait4(child.pid, 0)      # this child's own resource usage
        wall = time.perf_counter() - started
        child.returncode = os.waitstatus_to_exitcode(status)
        if child.returncode != 0:
            errors.seek(0)
            raise SystemExit(f"run failed ({child.returncode}):\n{errors.read().decode()[-3000:]}")
    # wait4's usage covers the child and the descendants it waited for (the pool's workers).
    return {"wall_s": round(wall, 2), "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


def accounted(run_dir: Path, urls: list[str]) -> dict:
    outcomes = [json.loads(line) for line in (run_dir / "sources" / "outcomes.jsonl").open()]
    documents = sum(1 for _ in (run_dir / "sources" / "documents.jsonl").open())
    statuses = {}
    for outcome in outcomes:
        statuses[outcome["status"]] = statuses.get(outcome["status"], 0) + 1
    metrics = json.loads((run_dir / "sources" / ".complete.json").read_text())["metrics"]
    return {"requested": len(urls), "outcome_lines": len(outcomes),
            "every_url_once": sorted(o["url"] for o in outcomes) == sorted(urls),
            "statuses": statuses, "documents": documents, "retries": metrics["retries"],
            "failed_attempts_by_reason": metrics.get("failed_attempts_by_reason", {})}


def bench_brightdata(work: Path, count: int, concurrency: int, latency: float) -> dict:
    from fake_brightdata import DEFAULT_TOKEN, scripted_faults, serve_in_process

    urls = [f"https://docs.example.com/page/{i}" for i in range(count)]
    options = {"faults": scripted_faults(urls, seed=7), "latency": latency}
    ports = multiprocessing.get_context("fork").Queue()
    server = multiprocessing.get_context("fork").Process(target=serve_in_process,
                                                         args=(options, ports), daemon=True)
    server.start()
    try:
        api = f"http://127.0.0.1:{ports.get(timeout=30)}"
        recipe = work / "bd.yaml"
        listed = "".join(f"\n      - {u}" for u in urls)
        recipe.write_text(f"name: bench_bd\nsources:\n  - type: brightdata\n    api_url: {api}\n"
                          f"    concurrency: {concurrency}\n    backoff: 0.05\n    urls:{listed}\n")
        env = {**os.environ, "PYTHONPATH": str(ROOT), "BRIGHTDATA_API_TOKEN": DEFAULT_TOKEN}
        first = run_cli(recipe, env=env)
        first["accounting"] = accounted(work / "runs" / "bench_bd", urls)
        cached = run_cli(recipe, "--set", f"sources.0.concurrency={concurrency + 1}", env=env)
        cached["accounting"] = accounted(work / "runs" / "bench_bd", urls)
    finally:
        server.terminate()
        server.join()
    return {"urls": count, "concurrency": concurrency, "server_latency_s": latency,
            "fetch": first, "all_cached": cached}


def bench_local_html(work: Path) -> dict | None:
    if not PYTHON_DOCS.is_dir():
        return None
    recipe = work / "local.yaml"
    recipe.write_text(f"name: bench_local\nsources:\n  - type: local\n"
                      f"    paths: ['{PYTHON_DOCS}/**/*.html']\n")
    result = run_cli(recipe, env={**os.environ, "PYTHONPATH": str(ROOT)})
    metrics = json.loads((work / "runs" / "bench_local" / "sources" / ".complete.json")
                         .read_text())["metrics"]
    size = sum(p.stat().st_size for p in PYTHON_DOCS.rglob("*.html"))
    return {**result, "files": metrics["files"], "documents": metrics["documents"],
            "html_mb": round(size / 1e6, 1)}


def machine() -> dict:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    return {"cores": os.cpu_count(), "memory_gib": round(memory, 1), "python": platform.python_version(),
            "platform": platform.platform(), "load_avg_at_start": [round(x, 2) for x in os.getloadavg()]}


def write_report(result: dict, path: Path) -> None:
    bd, local, m = result["brightdata"], result["local_html"], result["machine"]
    fetch, cached = bd["fetch"], bd["all_cached"]
    lines = ["# Sources benchmark", "",
             f"Machine: {m['cores']} cores, {m['memory_gib']} GiB, Python {m['python']}, "
             f"{m['platform']}; load average at start {m['load_avg_at_start']} (shared machine).",
             f"Command: `python bench/bench_sources.py` ({result['date']}).", "",
             f"## brightdata: {bd['urls']} URLs, real brightdata-sdk -> fake API on 127.0.0.1",
             "", f"Fake API: {bd['server_latency_s'] * 1000:.0f} ms per answer, a third of first "
             "attempts 500, a tenth of URLs 429 twice; `concurrency: "
             f"{bd['concurrency']}`, `backoff: 0.05`, default `retries: 4`, `batch_first: true`.", "",
             "| run | wall s | CPU s | peak RSS MB | fetched | cached | failed | retries |",
             "|---|---|---|---|---|---|---|---|"]
    for label, run in (("fetch (cold cache)", fetch), ("re-run, all cached", cached)):
        s = run["accounting"]["statuses"]
        lines.append(f"| {label} | {run['wall_s']} | {run['cpu_s']} | {run['peak_rss_mb']} | "
                     f"{s.get('fetched', 0)} | {s.get('cached', 0)} | {s.get('failed', 0)} | "
                     f"{run['accounting']['retries']} |")
    acc = fetch["accounting"]
    lines += ["", f"Every URL accounted for: {acc['every_url_once']} ({acc['outcome_lines']} outcome "
              f"lines for {acc['requested']} URLs, {acc['documents']} documents). Failed attempts "
              f"retried, by reason: {acc['failed_attempts_by_reason']}.", ""]
    if local:
        lines += ["## local: python3.11-doc HTML -> markdown", "",
                  f"{local['files']} files ({local['html_mb']} MB of HTML), process pool on every core: "
                  f"wall {local['wall_s']} s, CPU {local['cpu_s']} s, peak RSS {local['peak_rss_mb']} MB "
                  f"(the largest process of the run), {local['documents']} documents.", ""]
    else:
        lines += ["## local: skipped (python3.11-doc not installed)", ""]
    lines += ["CPU and peak RSS come from `wait4` on the `recipe run` child: CPU includes its "
              "pool workers, peak RSS is that of its largest process. The fake API runs in "
              "another process and is not counted.", ""]
    path.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--urls", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--latency", type=float, default=0.02, help="fake API seconds per answer")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "sources.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        result = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(),
                  "brightdata": bench_brightdata(work, args.urls, args.concurrency, args.latency),
                  "local_html": bench_local_html(work)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_report(result, args.out)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
