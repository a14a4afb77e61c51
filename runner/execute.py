"""The interpreter: run the planned steps in order, skip what did not change, record everything.

Each step writes into a temporary folder; its completion record is written last and the folder
is renamed into place, so a step killed half-way leaves nothing that a later run takes as done.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time
from pathlib import Path

from runner.artifacts import hash_tree, write_json
from runner.console import log
from runner.errors import PlanError, StepError
from runner.manifest import Manifest
from runner.plan import COMPLETE, PlannedStep, completion, select
from runner.registry import StepContext


def execute(plan: list[PlannedStep], loaded, run_dir: Path, *, force: set = frozenset(),
            start: str | None = None, stop: str | None = None, quiet: bool = False) -> Manifest:
    first, last = select(plan, start, stop)
    run_dir.mkdir(parents=True, exist_ok=True)
    with _run_lock(run_dir):
        _remove_leftovers(run_dir)
        manifest = Manifest(run_dir, loaded)
        hashes: dict[str, str] = {}
        for index, item in enumerate(plan[: last + 1]):
            record = completion(run_dir / item.name)
            if index < first:
                hashes[item.name] = _reuse(item, record, start)
                manifest.step(item, record["key"], "reused", record)
                continue
            key = item.key(hashes, loaded.path.parent)
            if record and record.get("key") == key and not ({item.name, "*"} & force):
                log(f"{item.name}: didn't change, skipping", quiet)
                manifest.step(item, key, "skipped", record)
            else:
                record = _run_step(item, key, loaded, run_dir, manifest, force, quiet)
            hashes[item.name] = record["content_hash"]
        manifest.finish("succeeded")
    return manifest


def _reuse(item: PlannedStep, record: dict | None, start: str) -> str:
    if record is None:
        raise PlanError(f"--from {start}: the earlier step '{item.name}' has no finished "
                        f"artifacts; run without --from first")
    return record["content_hash"]


def _run_step(item: PlannedStep, key: str, loaded, run_dir: Path, manifest, force, quiet) -> dict:
    final = run_dir / item.name
    tmp = run_dir / f".{item.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    ctx = StepContext(recipe_name=loaded.data["name"], step=item.name, key=key,
                      settings=item.settings, sections=item.sections,
                      inputs={n: run_dir / n for n in item.spec.inputs}, out_dir=tmp,
                      run_dir=run_dir, cache_dir=run_dir / "cache" / item.name,
                      recipe_dir=loaded.path.parent.resolve(),
                      force=bool({item.name, "*"} & force), quiet=quiet)
    ctx.cache_dir.mkdir(parents=True, exist_ok=True)
    log(f"{item.name}: running ({item.spec.kind})", quiet)
    manifest.step(item, key, "running")
    started = time.time()
    try:
        metrics = item.spec.func(ctx) or {}
        _check_outputs(item, tmp)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        # A step may say what it measured before failing (the gates step does): keep it.
        manifest.step(item, key, "failed", {"error": str(exc) or type(exc).__name__,
                                            "duration_s": round(time.time() - started, 3),
                                            "metrics": getattr(exc, "metrics", None) or {}})
        manifest.finish("failed")
        raise
    record = {"key": key, "step": item.name, "kind": item.spec.kind,
              "content_hash": hash_tree(tmp, skip=(COMPLETE, *item.spec.volatile)),
              "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "duration_s": round(time.time() - started, 3), "metrics": metrics}
    write_json(tmp / COMPLETE, record)
    _replace_dir(tmp, final)
    manifest.step(item, key, "ran", record)
    log(f"{item.name}: done in {record['duration_s']:.1f}s", quiet)
    return record


def _check_outputs(item: PlannedStep, folder: Path) -> None:
    missing = [o for o in item.spec.outputs if not (folder / o).exists()]
    if missing:
        raise StepError(f"step {item.name} ({item.spec.kind}) finished without writing "
                        f"{', '.join(missing)}; this is a bug in the step")


def _replace_dir(tmp: Path, final: Path) -> None:
    # Invalidate the old folder first: if we die between these lines, no complete folder exists.
    if final.exists():
        (final / COMPLETE).unlink(missing_ok=True)
        trash = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, trash)
        os.replace(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, final)


def _remove_leftovers(run_dir: Path) -> None:
    """Temporary folders of runs that were killed (we hold the run lock, so none is live)."""
    for path in run_dir.glob(".*.tmp-*"):
        shutil.rmtree(path, ignore_errors=True)
    for path in run_dir.glob(".*.old-*"):
        shutil.rmtree(path, ignore_errors=True)


class _run_lock:
    """One run per run folder at a time; the OS drops the lock if the process dies."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / ".lock"

    def __enter__(self):
        self.handle = open(self.path, "w")
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PlanError(f"another run is using {self.path.parent}; wait for it to finish") from None
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()
