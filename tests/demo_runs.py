"""Shared by the reproducibility, cache-key and fault tests: recipes/demo.yaml through the real CLI,
shortened as bench/fault_kill.py runs it (six modules, six training steps, a checkpoint every
three) to fit `make test`, and one clean reference run per test process."""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from conftest import ROOT, run_cli

sys.path.insert(0, str(ROOT / "bench"))
# One definition of the short demo and its hashes, shared with the full kill campaign.
from fault_kill import DEMO, ENV, SHORT, STEPS, content_hashes  # noqa: E402

__all__ = ["DEMO", "SHORT", "STEPS", "content_hashes", "hash_report", "reference_run",
           "run_demo", "start_demo"]


def demo_args(run_dir: Path, *extra: str) -> list[str]:
    return ["run", str(DEMO), "--run-dir", str(run_dir), "--quiet", *SHORT, *extra]


def run_demo(run_dir: Path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return run_cli(*demo_args(run_dir, *extra), env={**ENV, **(env or {})}, timeout=300)


def start_demo(run_dir: Path, *extra: str, **popen) -> subprocess.Popen:
    """The same run as a child process the caller controls (to kill it, limit its files...)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), **ENV}
    return subprocess.Popen([sys.executable, "-m", "runner", *demo_args(run_dir, *extra)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, **popen)


@functools.cache
def reference_run() -> Path:
    """One clean, uninterrupted run of the short demo, made once per test process."""
    root = Path(tempfile.mkdtemp(prefix="recipe-reference-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    done = run_demo(root)
    assert done.returncode == 0, done.stderr[-3000:]
    return root / "demo"


def differing_files(a: Path, b: Path, step: str) -> list[str]:
    """The files of a step that differ between two runs (for a failure message)."""
    def files(root: Path) -> dict[str, bytes]:
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
                if p.is_file() and p.name != ".complete.json"}
    left, right = files(a / step), files(b / step)
    return sorted(name for name in set(left) | set(right) if left.get(name) != right.get(name))


def hash_report(a: Path, b: Path) -> str:
    """Which steps' hashes differ, and their differing files."""
    ha, hb = content_hashes(a), content_hashes(b)
    lines = [f"{step}: {ha[step]} != {hb[step]}; files: {differing_files(a, b, step)}"
             for step in STEPS if ha[step] != hb[step]]
    return "\n".join(lines) or "all equal"
