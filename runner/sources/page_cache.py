"""Raw-page cache: fetched pages kept in the run folder so a re-run never fetches them again.

Keyed by URL plus the settings that change what comes back (source type, zone, format,
user agent...), never by a secret. Each page is two files: `<key>.body` (the text as
received) and `<key>.json` (url, fetched_at, status, bytes, attempts, ...). The metadata file
is written last, so a page without one was never completely stored and counts as absent.
Only successful fetches are stored.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

from runner.artifacts import hash_json


class PageCache:
    def __init__(self, root: Path, variant: dict):
        self.root = Path(root)
        self.variant = variant          # the fetch-relevant settings shared by every page

    def key(self, url: str) -> str:
        return hash_json({"url": url, **self.variant})[:40]

    def _paths(self, url: str) -> tuple[Path, Path]:
        key = self.key(url)
        return self.root / f"{key}.body", self.root / f"{key}.json"

    def get(self, url: str) -> dict | None:
        """The stored metadata of a page, or None when it is not (completely) cached."""
        body, meta = self._paths(url)
        if not (meta.is_file() and body.is_file()):
            return None
        try:
            record = json.loads(meta.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return record if record.get("url") == url else None

    def body(self, url: str) -> str:
        return self._paths(url)[0].read_text(encoding="utf-8")

    def body_path(self, url: str) -> Path:
        return self._paths(url)[0]

    def put(self, url: str, text: str, *, status: int, attempts: int,
            content_type: str = "") -> dict:
        self.root.mkdir(parents=True, exist_ok=True)
        body, meta = self._paths(url)
        data = text.encode("utf-8")
        record = {"url": url, "fetched_at": datetime.now(UTC).isoformat(timespec="seconds"),
                  "status": status, "bytes": len(data), "attempts": attempts,
                  "content_type": content_type, **self.variant}
        _write_atomic(body, data)
        _write_atomic(meta, json.dumps(record, ensure_ascii=False).encode("utf-8"))
        return record


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)
