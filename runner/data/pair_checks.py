"""Validation's per-pair checks (run in worker processes) and its in-order dedup (in the main one).

A worker turns one line of pairs.jsonl into either a drop reason or what the main process needs:
the kept pair as a JSON line, the digest of its normalized instruction, its lengths, and its text
for near-duplicate detection. Dedup must see pairs in order, so it stays in the main process.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator

from runner.data.dedup import ExactDedup

# The hand-run workflow's final filter: ASCII letters, digits, whitespace and . , ? ! only.
_OUTSIDE_CHARSET = re.compile(r"[^a-zA-Z0-9\s\.,?!]")
_ENCODE = json.JSONEncoder(ensure_ascii=False).encode


# What a worker sends back for a kept pair: a plain tuple (a NamedTuple pickles 6x slower):
# (the pair as a JSON line, digest of its normalized instruction or 0 when dedup is off,
#  instruction chars, response chars, instruction + response for near dedup or None when off)
Candidate = tuple[str, int, int, int, "str | None"]


class PairChecker:
    def __init__(self, settings: dict):
        self.s = settings

    def check(self, pair: dict) -> Candidate | str:
        """The pair as kept, or the reason it is dropped."""
        s = self.s
        instruction = str(pair.get("instruction") or "").strip()
        response = str(pair.get("response") or "").strip()
        if s["charset_filter"]:
            instruction = _OUTSIDE_CHARSET.sub("", instruction)
            response = _OUTSIDE_CHARSET.sub("", response)
        for name, text in (("instruction", instruction), ("response", response)):
            if len(text) <= s[f"min_{name}_chars"]:
                return f"{name}_too_short"
            if s[f"max_{name}_chars"] and len(text) > s[f"max_{name}_chars"]:
                return f"{name}_too_long"
        kept = {**pair, "instruction": instruction, "response": response}
        return (_ENCODE(kept), ExactDedup.digest(instruction) if s["dedup"] == "exact" else 0,
                len(instruction), len(response),
                f"{instruction}\n{response}" if s["near_dedup"]["enabled"] else None)


_checker: PairChecker | None = None


def init_worker(settings: dict) -> None:
    global _checker
    _checker = PairChecker(settings)


def check_line(line: str) -> Candidate | str:
    return _checker.check(json.loads(line))


class Deduplicator:
    """Exact dedup of normalized instructions, then near dedup, over candidates in order."""

    def __init__(self, settings: dict):
        self.exact = ExactDedup() if settings["dedup"] == "exact" else None
        near = settings["near_dedup"]
        self.near = None
        if near["enabled"]:
            from runner.data.dedup import NearDedup
            self.near = NearDedup(near["threshold"], near["num_perm"], near["shingle_size"])

    def kept(self, batch: list[Candidate], dropped: Counter) -> Iterator[Candidate]:
        repeats = (self.exact.duplicate_digests([c[1] for c in batch]) if self.exact
                   else [False] * len(batch))
        for candidate, repeated in zip(batch, repeats, strict=True):
            if repeated:
                dropped["duplicate_instruction"] += 1
            elif self.near is not None and self.near.is_duplicate(candidate[4]):
                dropped["near_duplicate"] += 1
            else:
                yield candidate
