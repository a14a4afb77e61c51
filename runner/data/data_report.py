"""The data report: counts per stage with drop reasons, length histograms, random examples."""

from __future__ import annotations

import bisect
import random

BIN_EDGES = (0, 20, 50, 100, 200, 300, 500, 1000, 1500, 2000, 5000)


class LengthHistogram:
    def __init__(self, edges: tuple[int, ...] = BIN_EDGES):
        self.edges = edges
        self.counts = [0] * len(edges)
        self.total = self.count = 0
        self.smallest: int | None = None
        self.largest = 0

    def add(self, length: int) -> None:
        self.add_many([length])

    def add_many(self, lengths: list[int]) -> None:
        if not lengths:
            return
        for length in lengths:
            self.counts[bisect.bisect_right(self.edges, length) - 1] += 1
        self.total += sum(lengths)
        self.count += len(lengths)
        low = min(lengths)
        self.smallest = low if self.smallest is None else min(self.smallest, low)
        self.largest = max(self.largest, max(lengths))

    def labels(self) -> list[str]:
        ends = [f"{b - 1}" for b in self.edges[1:]] + ["+"]
        return [f"{a}-{e}" if e != "+" else f"{a}+" for a, e in zip(self.edges, ends, strict=True)]

    def as_dict(self) -> dict:
        return {"bins": dict(zip(self.labels(), self.counts, strict=True)),
                "count": self.count,
                "mean": round(self.total / self.count, 1) if self.count else 0,
                "min": self.smallest or 0, "max": self.largest}


class Reservoir:
    """A uniform random sample of k items from a stream of unknown length (seeded)."""

    def __init__(self, k: int, seed: int):
        self.k, self.items, self.seen = k, [], 0
        self._random = random.Random(seed)

    def add(self, item) -> None:
        self.seen += 1
        if len(self.items) < self.k:
            self.items.append(item)
        else:
            slot = self._random.randrange(self.seen)
            if slot < self.k:
                self.items[slot] = item


def build_report(cleaning: dict, pairing: dict, validation: dict, histograms: dict,
                 examples: list[dict], scorecard: dict | None = None) -> dict:
    sentences = cleaning.get("sentences", {})
    stages = [
        {"stage": "documents", "in": cleaning.get("documents", 0),
         "out": cleaning.get("documents", 0) - cleaning.get("documents_without_text", 0),
         "dropped": {"no text left": cleaning.get("documents_without_text", 0)}},
        {"stage": "sentences", "in": sentences.get("split", 0), "out": sentences.get("kept", 0),
         "dropped": sentences.get("dropped", {})},
        {"stage": "pairs", "in": pairing.get("pairs", 0) + sum(pairing.get("dropped", {}).values()),
         "out": pairing.get("pairs", 0),
         "dropped": pairing.get("dropped", {})},
        {"stage": "kept", "in": validation.get("pairs_in", 0), "out": validation.get("kept", 0),
         "dropped": validation.get("dropped", {})},
    ]
    if cleaning.get("keep_headings"):
        stages.insert(2, {"stage": "sections", "in": None, "out": cleaning.get("sections", 0),
                          "dropped": {}})
    return {"strategy": pairing.get("strategy"), "keep_headings": cleaning.get("keep_headings"),
            "stages": stages, "scorecard": scorecard or {}, "teacher": pairing.get("teacher"),
            "rules": cleaning.get("rules", []), "lengths": histograms, "examples": examples}


def _bar(count: int, largest: int, width: int = 30) -> str:
    return "█" * max(1 if count else 0, round(width * count / largest)) if largest else ""


def _quote(text: str, limit: int = 600) -> str:
    text = text if len(text) <= limit else text[:limit] + " […]"
    return "\n".join("> " + line if line else ">" for line in text.splitlines())


def render_markdown(report: dict, title: str) -> str:
    lines = [f"# Data report: {title}", "",
             f"Pairing strategy: `{report['strategy']}`.", "", "## Counts per stage", "",
             "| stage | in | out | dropped (reason: count) |", "|---|---:|---:|---|"]
    for stage in report["stages"]:
        reasons = ", ".join(f"{r}: {c}" for r, c in stage["dropped"].items() if c) or "-"
        shown_in = "" if stage["in"] is None else f"{stage['in']:,}"
        lines.append(f"| {stage['stage']} | {shown_in} | {stage['out']:,} | {reasons} |")
    if report.get("scorecard"):
        from runner.data.scorecard import rows
        lines += ["", "## Data-quality scorecard (kept pairs; definitions in runner/data/scorecard.py)",
                  "", "| measure | share | count |", "|---|---:|---|"]
        lines += [f"| {label} | {share} | {count} |" for label, share, count in rows(report["scorecard"])]
    if report.get("teacher"):
        from runner.data.teacher_stats import teacher_rows
        lines += ["", "## Teacher", "", "| | |", "|---|---|"]
        lines += [f"| {label} | {value} |" for label, value in teacher_rows(report["teacher"])]
    if report["rules"]:
        both = report.get("keep_headings")
        lines += ["", "## Characters removed per cleaning rule", "",
                  "| rule | from whole pages (sentences) |"
                  + (" from sections (headings kept) |" if both else ""),
                  "|---|---:|" + ("---:|" if both else "")]
        lines += [f"| {r['rule']} | {r['chars_removed']:,} |"
                  + (f" {r.get('chars_removed_in_sections', 0):,} |" if both else "")
                  for r in report["rules"]]
    for name, histogram in report["lengths"].items():
        largest = max(histogram["bins"].values(), default=0)
        lines += ["", f"## {name.capitalize()} length (characters, kept pairs)", "",
                  f"mean {histogram['mean']}, min {histogram['min']}, max {histogram['max']}",
                  "", "| length | pairs | |", "|---|---:|---|"]
        rows = list(histogram["bins"].items())
        used = [i for i, (_, count) in enumerate(rows) if count]
        rows = rows[used[0]: used[-1] + 1] if used else []   # empty outer bins say nothing
        lines += [f"| {label} | {count:,} | {_bar(count, largest)} |" for label, count in rows]
    lines += ["", f"## {len(report['examples'])} random examples", ""]
    for number, pair in enumerate(report["examples"], 1):
        source = pair.get("provenance", {})
        where = " > ".join(source.get("heading_path") or []) or source.get("url") or ""
        lines += [f"### Example {number}" + (f" ({where})" if where else ""), "",
                  "**Instruction**", "", _quote(pair["instruction"]), "", "**Response**", "",
                  _quote(pair["response"]), ""]
    return "\n".join(lines).rstrip() + "\n"
