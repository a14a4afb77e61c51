"""What a teacher run did, counted: requests, cache hits, tokens, cost, and every failure by reason.

Sections end in one of three states: `ok` (at least one pair kept), `rejected` (the teacher
answered, nothing was usable: the reasons say why) or `failed` (no answer: the request failed
after its retries). Nothing is silently lost: sections.jsonl has one line per section.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class TeacherStats:
    role: str = "teacher"                 # or "judge"
    requests: int = 0                     # HTTP requests sent, retries included
    answers: int = 0                      # answers received this run (paid for)
    cache_hits: int = 0
    tokens_in: int = 0                    # paid this run
    tokens_out: int = 0
    cached_tokens_in: int = 0             # of the answers found in the cache
    cached_tokens_out: int = 0
    failed: Counter = field(default_factory=Counter)           # requests given up, by reason
    failed_attempts: Counter = field(default_factory=Counter)  # attempts retried, by reason
    rejected_outputs: Counter = field(default_factory=Counter)  # answers not usable, by reason

    def add_answer(self, usage: dict, cached: bool) -> None:
        tokens_in = int(usage.get("prompt_tokens") or 0)
        tokens_out = int(usage.get("completion_tokens") or 0)
        if cached:
            self.cache_hits += 1
            self.cached_tokens_in += tokens_in
            self.cached_tokens_out += tokens_out
        else:
            self.answers += 1
            self.tokens_in += tokens_in
            self.tokens_out += tokens_out

    def as_dict(self, price: dict) -> dict:
        cost = (self.tokens_in * price["input_per_million_tokens"]
                + self.tokens_out * price["output_per_million_tokens"]) / 1e6
        priced = price["input_per_million_tokens"] or price["output_per_million_tokens"]
        return {"role": self.role, "requests": self.requests, "answers": self.answers,
                "cache_hits": self.cache_hits, "tokens_in": self.tokens_in,
                "tokens_out": self.tokens_out, "cached_tokens_in": self.cached_tokens_in,
                "cached_tokens_out": self.cached_tokens_out,
                "failed_by_reason": by_count(self.failed),
                "failed_attempts_by_reason": by_count(self.failed_attempts),
                "rejected_outputs_by_reason": by_count(self.rejected_outputs),
                "cost": round(cost, 6) if priced else None, "currency": price["currency"]}


def by_count(counts: Counter) -> dict:
    """Most common first, ties by name: the same counts always read the same (requests finish
    in any order)."""
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def _reasons(counts: dict) -> str:
    return ", ".join(f"{reason} {count:,}" for reason, count in counts.items()) or "none"


def teacher_rows(teacher: dict) -> list[tuple[str, str]]:
    """(label, value) rows for the data report and report.html."""
    rows = [("endpoint / model", f"{teacher.get('endpoint')} / {teacher.get('model')}")]
    sections = teacher.get("sections") or {}
    rows.append(("sections", ", ".join(f"{k} {v:,}" for k, v in sections.items()) or "none"))
    for client in [teacher.get("teacher") or {}, teacher.get("judge") or {}]:
        if not client:
            continue
        role = client.get("role", "teacher")
        rows += [
            (f"{role}: requests sent", f"{client['requests']:,} ({client['answers']:,} answers "
                                       f"paid, {client['cache_hits']:,} from the cache)"),
            (f"{role}: tokens in / out", f"{client['tokens_in']:,} / {client['tokens_out']:,} "
                                         f"this run; {client['cached_tokens_in']:,} / "
                                         f"{client['cached_tokens_out']:,} in cached answers"),
            (f"{role}: failed requests", _reasons(client["failed_by_reason"])),
            (f"{role}: retried attempts", _reasons(client["failed_attempts_by_reason"])),
            (f"{role}: unusable answers", _reasons(client["rejected_outputs_by_reason"])),
        ]
        if client.get("cost") is not None:
            rows.append((f"{role}: cost this run", f"{client['cost']:.4f} {client['currency']}"))
    rows.append(("pairs dropped", _reasons(teacher.get("pairs_dropped") or {})))
    if teacher.get("mean_support") is not None:
        rows.append(("mean grounding support of kept answers", f"{teacher['mean_support']:.2f}"))
    return rows
