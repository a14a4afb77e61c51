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
from runner.data.scorecard import instruction_prefix, response_flags

# The hand-run workflow's final filter: ASCII letters, digits, whitespace and . , ? ! only.
_OUTSIDE_CHARSET = re.compile(r"[^a-zA-Z0-9\s\.,?!]")
_ENCODE = json.JSONEncoder(ensure_ascii=False).encode


# What a worker sends back for a kept pair: a plain tuple (a NamedTuple pickles 6x slower):
# (the pair as a JSON line, digest of its normalized instruction, instruction chars, response
#  chars, instruction + response for near dedup or None when off, the scorecard's flags of the
#  response, the instruction's first words, whether a template wrote the instruction)
Candidate = tuple[str, int, int, int, "str | None", int, str, bool]


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
        source = (pair.get("provenance") or {}).get("instruction_source")
        return (_ENCODE(kept), ExactDedup.digest(instruction), len(instruction), len(response),
                f"{instruction}\n{response}" if s["near_dedup"]["enabled"] else None,
                response_flags(response), instruction_prefix(instruction), source == "template")


_checker: PairChecker | None = None


def init_worker(settings: dict) -> None:
    global _checker
    _checker = PairChecker(settings)


def check_line(line: str) -> Candidate | str:
    return _checker.check(json.loads(line))


class Deduplicator:
    """Exact dedup of normalized instructions, then near dedup, over candidates in order.
    With `dedup: none`, exact repeats are kept but still counted (`exact_repeats`)."""

    def __init__(self, settings: dict):
        self.exact = ExactDedup()
        self.drop_exact = settings["dedup"] == "exact"
        self.exact_repeats = 0
        near = settings["near_dedup"]
        self.near = None
        if near["enabled"]:
            from runner.data.dedup import NearDedup
            self.near = NearDedup(near["threshold"], near["num_perm"], near["shingle_size"])

    def kept(self, batch: list[Candidate], dropped: Counter) -> Iterator[Candidate]:
        repeats = self.exact.duplicate_digests([c[1] for c in batch])
        self.exact_repeats += sum(repeats)
        for candidate, repeated in zip(batch, repeats, strict=True):
            if repeated and self.drop_exact:
                dropped["duplicate_instruction"] += 1
            elif self.near is not None and self.near.is_duplicate(candidate[4]):
                dropped["near_duplicate"] += 1
            else:
                yield candidate
