"""One document in, one cleaned document out: text rules, sentences, and (optionally) sections.

Cleaned document (one JSON line of cleaning/documents.jsonl):
    {"id", "source", "url", "path", "title", "metadata",
     "sentences": [str, ...],                      # whole-page text, rules + split + filter
     "sections": [{"heading", "level", "heading_path", "blocks": [{"text"} | {"code", "lang"}]}]
                                                   # only with keep_headings
     "qa" / "messages": passed through untouched (the `fields` pairing strategy)}
Sentences come from the whole page exactly as the hand-run workflow made them. Sections get the
same text rules per prose block (code blocks are set aside first) but not the sentence filters:
a filter word like "index" would cut explanations out of a section's body.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import groupby

from runner.data.md_sections import heading_paths, split_sections
from runner.data.sentences import SPLITTERS, SentenceFilter
from runner.data.text_rules import apply_rules, build_rules, clean_heading

_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")
_LIST_ITEM = re.compile(r"\n(?=[ \t]*(?:[-*+]|\d+[.)])[ \t])")
_THEMATIC_BREAK = re.compile(r"^\s*([-*_])(\s*\1){2,}\s*$")
_ADMONITION_TITLES = frozenset(["note", "warning", "tip", "hint", "important", "caution", "danger",
                                "attention", "see also", "seealso"])
_FOOTNOTE_TITLES = frozenset(["footnotes", "footnote"])
_FOOTNOTE_MARK = re.compile(r"\[\^[\w-]+\](?!:)")
_FOOTNOTE_DEFINITION = re.compile(r"^\s*\[\^[\w-]+\]:")
PASSED_THROUGH = ("id", "source", "url", "path", "title", "metadata", "qa", "messages")
# A heading in this many documents names a kind of section ("Examples", "dump()"), not a subject.
REPEATED_IN = 3
REPEATED_KEPT = 5000          # the most common ones are recorded (stats.json stays small)
HEADING_COUNTED_CHARS = 60    # longer headings are subjects; counting them costs memory only


@dataclass
class DocStats:
    """What cleaning one document did; summed over documents by `CleaningStats.add`."""
    chars_in: int = 0
    removed: list[int] = field(default_factory=list)            # whole-page pass, per rule
    removed_in_sections: list[int] = field(default_factory=list)   # section pass, per rule
    pieces: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    sections: int = 0
    empty: bool = False
    headings: frozenset = frozenset()       # casefolded, distinct, short ones only


class DocumentCleaner:
    def __init__(self, settings: dict):
        self.rules = build_rules(settings["rules"])
        self.split = SPLITTERS[settings["splitter"]]
        self.filter = SentenceFilter(settings["min_sentence_chars"],
                                     settings["max_sentence_chars"],
                                     tuple(settings["drop_sentences_containing"]),
                                     settings["case_sensitive"])
        self.keep_headings = settings["keep_headings"]

    def clean(self, doc: dict) -> tuple[dict, DocStats]:
        markdown = doc.get("markdown") or ""
        stats = DocStats(chars_in=len(markdown), removed=[0] * len(self.rules),
                         removed_in_sections=[0] * len(self.rules))
        pieces = self.split(apply_rules(markdown, self.rules, stats.removed))
        out = {key: doc[key] for key in PASSED_THROUGH if key in doc}
        out["sentences"] = self.filter.apply(pieces, stats.dropped)
        stats.pieces = sum(1 for piece in pieces if piece.strip())
        stats.kept = len(out["sentences"])
        if self.keep_headings:
            out["sections"] = self.sections(markdown, stats.removed_in_sections)
            stats.sections = len(out["sections"])
            stats.headings = frozenset(s["heading"].casefold() for s in out["sections"]
                                       if s["heading"] and len(s["heading"]) <= HEADING_COUNTED_CHARS)
        stats.empty = not (out["sentences"] or out.get("sections") or "qa" in doc
                           or "messages" in doc)
        return out, stats

    def sections(self, markdown: str, removed: list[int] | None = None) -> list[dict]:
        raw = split_sections(markdown)
        headings = [clean_heading(section.heading) for section in raw]
        result = []
        for section, heading, path in zip(raw, headings, heading_paths(raw, headings), strict=True):
            blocks = without_furniture([block for kind, text, lang in section.blocks
                                        for block in self._blocks(kind, text, lang, removed)])
            if heading or blocks:
                result.append({"heading": heading, "level": section.level,
                               "heading_path": path, "blocks": blocks})
        return result

    def _blocks(self, kind: str, text: str, lang: str, removed: list[int] | None
                ) -> Iterator[dict]:
        if kind == "code":
            yield {"code": text, "lang": lang}
            return
        for rows in _paragraph_rows(text):
            rows = (apply_rules(row, self.rules, removed).strip() for row in rows)
            cleaned = "\n".join(filter(None, rows))
            if cleaned:
                yield {"text": cleaned}


def without_furniture(blocks: list[dict]) -> list[dict]:
    """A lone admonition title ("Note", "See also") joins the paragraph after it as "Note: ...";
    a "Footnotes" line and markdown footnote marks (`[^1]`, `[^1]: text`) go. HTML pages have
    this done on their structure already (html_structure.py); this catches markdown sources."""
    result: list[dict] = []
    pending = ""
    for block in blocks:
        text = block.get("text")
        if text is None:
            if pending:
                result.append({"text": f"{pending}:"})
                pending = ""
            result.append(block)
            continue
        text = _FOOTNOTE_MARK.sub("", text)
        word = text.strip().rstrip(":").casefold()
        if word in _FOOTNOTE_TITLES or _FOOTNOTE_DEFINITION.match(text) or not text.strip():
            continue
        if word in _ADMONITION_TITLES:
            pending = text.strip().rstrip(":")
            continue
        result.append({"text": f"{pending}: {text}" if pending else text})
        pending = ""
    return result


def _paragraph_rows(prose: str) -> Iterator[list[str]]:
    """Per paragraph, its rows: a table keeps one row per line and a list one item per line
    (whitespace rules would run them together); a thematic break (---) goes. A table right
    under a line of prose (no blank line between) is a block of its own."""
    for paragraph in _PARAGRAPH_BREAK.split(prose):
        lines = [line for line in paragraph.splitlines() if line.strip()]
        if not lines or _THEMATIC_BREAK.match(paragraph):
            continue
        for is_table, group in groupby(lines, key=lambda line: line.lstrip().startswith("|")):
            group = list(group)
            yield group if is_table else _LIST_ITEM.split("\n".join(group))


class CleaningStats:
    """Totals over all documents, written to cleaning/stats.json."""

    def __init__(self, settings: dict):
        self.settings = settings
        self.rule_names = [spec["rule"] for spec in settings["rules"]]
        self.documents = self.empty_documents = self.chars_in = 0
        self.removed = [0] * len(self.rule_names)
        self.removed_in_sections = [0] * len(self.rule_names)
        self.pieces = self.kept = self.sections = 0
        self.dropped: Counter = Counter()
        self.heading_documents: Counter = Counter()

    def add(self, stats: DocStats) -> None:
        self.documents += 1
        self.empty_documents += stats.empty
        self.chars_in += stats.chars_in
        self.removed = [a + b for a, b in zip(self.removed, stats.removed, strict=True)]
        self.removed_in_sections = [a + b for a, b in zip(
            self.removed_in_sections, stats.removed_in_sections, strict=True)]
        self.pieces += stats.pieces
        self.kept += stats.kept
        self.sections += stats.sections
        self.dropped.update(stats.dropped)
        self.heading_documents.update(stats.headings)

    def as_dict(self) -> dict:
        return {
            "documents": self.documents,
            "documents_without_text": self.empty_documents,
            "chars_in": self.chars_in,
            "rules": [{"rule": name, "chars_removed": removed, "chars_removed_in_sections": in_sections}
                      for name, removed, in_sections in zip(self.rule_names, self.removed,
                                                            self.removed_in_sections, strict=True)],
            "sentences": {"split": self.pieces, "kept": self.kept,
                          "dropped": dict(self.dropped.most_common())},
            "keep_headings": self.settings["keep_headings"],
            "sections": self.sections,
            "splitter": self.settings["splitter"],
            "repeated_headings": sorted(h for h, n in self.heading_documents.most_common(
                REPEATED_KEPT) if n >= REPEATED_IN),
        }


_worker: DocumentCleaner | None = None
_ENCODE = json.JSONEncoder(ensure_ascii=False).encode   # json.dumps(...) builds one per call


def init_worker(settings: dict) -> None:
    global _worker
    _worker = DocumentCleaner(settings)


def clean_line(item: tuple[int, str]) -> tuple[int, str | None, DocStats | None]:
    """(line number, JSON line) -> (line number, cleaned JSON line, stats); a line that is not a
    JSON object comes back as (number, None, None) for the caller to report."""
    number, line = item
    try:
        doc = json.loads(line)
    except ValueError:
        return number, None, None
    if not isinstance(doc, dict):
        return number, None, None
    out, stats = _worker.clean(doc)
    return number, _ENCODE(out), stats
