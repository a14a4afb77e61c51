"""The interpreter: run the planned steps in order, skip what did not change, record everything.

Each step writes into a temporary folder; its completion record is written last and the folder
is renamed into place, so a step killed half-way leaves nothing that a later run takes as done.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import resource
import shutil
import sys
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
    started = time.time()
    try:
        manifest.step(item, key, "running")
        metrics = item.spec.func(ctx) or {}
        _check_outputs(item, tmp)
        record = {"key": key, "step": item.name, "kind": item.spec.kind,
                  "content_hash": hash_tree(tmp, skip=(COMPLETE, *item.spec.volatile)),
                  "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  "duration_s": round(time.time() - started, 3), "metrics": metrics}
        write_json(tmp / COMPLETE, record)
    except BaseException as exc:
        error = _disk_full(item, run_dir, exc, (tmp, ctx.cache_dir))
        shutil.rmtree(tmp, ignore_errors=True)
        _record_failure(manifest, item, key, error or exc, started)
        if error:
            raise error from exc
        raise
    _replace_dir(tmp, final)
    manifest.step(item, key, "ran", record)
    log(f"{item.name}: done in {record['duration_s']:.1f}s", quiet)
    return record


# ENOSPC: no space left; EFBIG: a file-size limit (ulimit -f, RLIMIT_FSIZE); EDQUOT: a quota.
DISK_FULL = {errno.ENOSPC: "the disk is full", errno.EFBIG: "a file grew past the file-size "
             "limit", errno.EDQUOT: "the disk quota is used up"}
# How libraries that wrap the OSError say it: safetensors "(os error 27)", torch's writer...
DISK_FULL_TEXT = re.compile(r"os error (\d+)|No space left on device|File too large|"
                            r"Disk quota exceeded")
LOW_SPACE = 16 << 20     # under this much free space, a failed write is taken for a full disk


def _disk_full(item: PlannedStep, run_dir: Path, exc: BaseException,
               written: tuple[Path, ...]) -> StepError | None:
    """A step that ran out of disk (in its code, or a library's) as one clear error; written:
    the folders the step wrote into, looked at when the error itself does not say."""
    code, filename = _disk_errno(exc)
    if code is None and isinstance(exc, Exception) and not isinstance(exc, StepError):
        code = _disk_state(run_dir, written)   # an unexplained error (torch's "unexpected pos")
    if code is None:
        return None
    filename = filename or _largest_file(item, run_dir, written)
    where = f" writing {filename}" if filename else ""
    return StepError(f"step {item.name}: disk full: {DISK_FULL[code]}{where} ({os.strerror(code)}). "
                     f"The step's partial output was removed and finished steps are kept: free "
                     f"space where {run_dir} is (or raise the limit: ulimit -f), then run again")


def _disk_errno(exc: BaseException | None) -> tuple[int | None, str | None]:
    for _ in range(8):                       # a library may wrap the OSError in its own
        if exc is None:
            break
        if isinstance(exc, OSError) and exc.errno in DISK_FULL:
            return exc.errno, exc.filename
        match = DISK_FULL_TEXT.search(str(exc))
        if match:
            text = match.group(0)
            code = (int(match.group(1)) if match.group(1) else errno.ENOSPC if "space" in text
                    else errno.EFBIG if "large" in text else errno.EDQUOT)
            if code in DISK_FULL:
                return code, None
        exc = exc.__cause__ or exc.__context__
    return None, None


def _largest_file(item: PlannedStep, run_dir: Path, written: tuple[Path, ...]) -> str | None:
    """The biggest file the step wrote: most likely the one that was being written (a write
    error does not name its file), as step/name for its output, else relative to the run."""
    files = [p for folder in written for p in folder.rglob("*") if p.is_file()]
    if not files:
        return None
    biggest = max(files, key=lambda p: p.stat().st_size)
    if biggest.is_relative_to(written[0]):
        return f"{item.name}/{biggest.relative_to(written[0]).as_posix()}"
    return biggest.relative_to(run_dir).as_posix() if biggest.is_relative_to(run_dir) else str(biggest)


def _disk_state(run_dir: Path, written: tuple[Path, ...]) -> int | None:
    """ENOSPC if the run's disk is (nearly) full, EFBIG if a file the step wrote reached the
    file-size limit; None if neither (the error was something else)."""
    if shutil.disk_usage(run_dir).free < LOW_SPACE:
        return errno.ENOSPC
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY:
        for folder in written:
            if any(p.is_file() and p.stat().st_size >= limit for p in folder.rglob("*")):
                return errno.EFBIG
    return None


def _record_failure(manifest, item: PlannedStep, key: str, exc: BaseException, started: float) -> None:
    # A step may say what it measured before failing (the gates step does): keep it.
    try:
        manifest.step(item, key, "failed", {"error": str(exc) or type(exc).__name__,
                                            "duration_s": round(time.time() - started, 3),
                                            "metrics": getattr(exc, "metrics", None) or {}})
        manifest.finish("failed")
    except OSError as error:  # the disk that failed the step may refuse the manifest too
        print(f"warning: manifest.json could not record the failure of step {item.name}: {error}",
              file=sys.stderr)


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
