"""Reading and writing artifacts: JSONL streams, JSON records, content hashes of folders."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

_ENCODE = json.JSONEncoder(ensure_ascii=False).encode  # one encoder: json.dumps builds one per call


def write_jsonl(path: Path, rows: Iterable[dict]) -> int:
    """Stream rows to a JSONL file; returns the number written."""
    count = 0
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(_ENCODE(row) + "\n")
            count += 1
    return count


def read_jsonl(path: Path) -> Iterator[dict]:
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)


def write_json(path: Path, data) -> None:
    """Write JSON through a temporary name so a reader never sees half a file."""
    tmp = Path(f"{path}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n",
                   encoding="utf-8")
    os.replace(tmp, path)


def read_json(path: Path):
    return json.loads(Path(path).read_text(encoding="utf-8"))


def hash_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def hash_json(value) -> str:
    return hash_bytes(json.dumps(value, sort_keys=True, default=str).encode())


def hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def hash_tree(root: Path, skip: tuple[str, ...] = ()) -> str:
    """Content hash of every file under root (relative names + contents), minus `skip` paths."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(root).rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if any(rel == s or rel.startswith(s + "/") for s in skip):
            continue
        digest.update(rel.encode() + b"\0" + hash_file(path).encode() + b"\n")
    return digest.hexdigest()
