"""Shared test helpers: run the real CLI in a subprocess, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args, cwd=None, env=None, timeout=600) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "runner", *map(str, args)], cwd=cwd or ROOT,
                          env=full_env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture(scope="module")
def one_torch_thread():
    """The tiny model gains nothing from threads, and spinning OpenMP threads on a busy
    2-core machine slow it down a hundredfold."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# The test files that take longest (seconds on the 2-core machine, two workers), longest first.
# `make test` hands whole files to its workers in collection order (--dist loadfile
# --no-loadscope-reorder): starting with the longest keeps one worker from finishing its last long
# file alone while the other has nothing left (longest-processing-time-first scheduling).
LONGEST_FIRST = ("test_training_distributed.py", "test_export_gguf.py", "test_golden_loss.py",
                 "test_models_sources.py", "test_chat_template_chatml.py", "test_faults.py",
                 "test_data_teacher_serve.py", "test_reproducibility.py", "test_recipes_offline.py",
                 "test_foundation_broken.py", "test_serve_end_to_end.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: index for index, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order
