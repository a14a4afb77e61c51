"""The data-quality scorecard: measurable defects and diversity of the pairs a run trains on.

Every share is over the kept pairs, measured on the text outside code (fenced blocks and inline
code spans are code: `\\_` or `<tag>` there is legitimate):
  - ends mid-sentence: the last block is prose (not a code block, table row or list item) and
    its last character, past closing quotes/brackets/emphasis, is none of . ! ? … : ;
  - ends on ":": the same last character is ":" (a sentence that introduced something missing);
  - markup residue, by kind: tags of HTML elements, markdown links/images, reST roles (`:mod:json`),
    markdown backslash escapes (`SPI\\_exec`), footnote markers (`[1]`), admonition furniture
    lines ("Note", "Footnotes" alone on a line), definition-list markers (`:   text`), pilcrows;
  - URLs (http, https, ftp, file or www.);
  - carries a fenced code block.
Instruction diversity: the share of the most common first-four-words prefix (exact up to
SAMPLE_SIZE pairs, estimated from a uniform sample above) and the share of instructions that a
template wrote (provenance.instruction_source == "template"). Duplicate rates are over the pairs
that entered validation: exact (normalized instruction) and near (MinHash, when near_dedup is on).
"""

from __future__ import annotations

import re
from collections import Counter

from runner.data.data_report import Reservoir

SAMPLE_SIZE = 20_000
SENTENCE_END = frozenset(".!?…;")
CLOSERS = "\"')]}*_`»”’"
FENCE = re.compile(r"^[ \t]*(```|~~~)[^\n]*\n.*?^[ \t]*\1[ \t]*$", re.M | re.S)
INLINE_CODE = re.compile(r"(`+)(?!`).+?(?<!`)\1(?!`)", re.S)
LIST_ITEM = re.compile(r"^[ \t]*(?:[-*+•]|\d+[.)])[ \t]")
TABLE_ROW = re.compile(r"^[ \t]*\|")
# Tags of HTML elements, so that "<venv>" or "<<ComboboxSelected>>" placeholders are not residue.
HTML_ELEMENTS = sorted("""a abbr article aside b big blockquote br caption center cite code col dd
    del details div dl dt em figcaption figure font footer h1 h2 h3 h4 h5 h6 header hr i img ins
    kbd li main mark nav ol p pre q s samp script section small span strong style sub summary
    sup table tbody td tfoot th thead tr tt u ul var""".split(), key=len, reverse=True)
RESIDUE = {
    "html_tag": re.compile(r"</?(?:" + "|".join(HTML_ELEMENTS) + r")(?:\s[^<>\n]*)?/?>", re.I),
    "markdown_link": re.compile(r"!?\[[^\]\n]*\]\([^)\n]*\)"),
    "rest_role": re.compile(r"(?<![\w:`]):[a-z][a-z0-9+-]*(?::[a-z0-9+-]+)?:(?=[`\w~!])"),
    "markdown_escape": re.compile(r"\\[!\"#$%&'()*+,\-./:;<=>?@\[\]^_`{|}~]"),
    "footnote_marker": re.compile(r"(?<![\w\]\)`])\[(?:\d{1,2}|#\w*|\*)\](?![(\[])"),
    "furniture_line": re.compile(r"^[ \t]*(?:notes?|footnotes?|warnings?|see also|tip|hint|"
                                 r"important|caution|attention|danger|seealso)[ \t]*$",
                                 re.I | re.M),
    "definition_marker": re.compile(r"^[ \t]*:[ \t]{2,}\S", re.M),
    "pilcrow": re.compile("¶"),
}
RESIDUE_NEEDS = {"html_tag": "<", "markdown_link": "](", "rest_role": ":", "markdown_escape": "\\",
                 "footnote_marker": "[", "definition_marker": ":", "pilcrow": "¶"}
URL = re.compile(r"\b(?:https?|ftps?|file)://|\bwww\.\S")
FLAG_MID_SENTENCE, FLAG_COLON_END, FLAG_URL, FLAG_CODE = 1, 2, 4, 8
RESIDUE_FLAGS = {kind: 16 << index for index, kind in enumerate(RESIDUE)}
_PUNCTUATION = ",;:!?\"“”‘’«»*`"


def _has_fence(text: str) -> bool:
    return ("```" in text or "~~~" in text) and FENCE.search(text) is not None


def prose_of(text: str) -> str:
    """The text with fenced code blocks and inline code spans blanked out."""
    if "```" in text or "~~~" in text:
        text = FENCE.sub("\n", text)
    return INLINE_CODE.sub(" ", text) if "`" in text else text


def ending(text: str) -> str:
    """How a response ends: "code", "table", "list", "sentence", "colon" or "mid_sentence"."""
    stripped = text.rstrip()
    if not stripped:
        return "mid_sentence"
    if stripped.endswith(("```", "~~~")) and _has_fence(stripped):
        return "code"
    last_line = stripped.rsplit("\n", 1)[-1]
    if TABLE_ROW.match(last_line):
        return "table"
    if LIST_ITEM.match(last_line):
        return "list"
    last = last_line.rstrip(CLOSERS + " \t")[-1:]
    if last == ":":
        return "colon"
    return "sentence" if last in SENTENCE_END else "mid_sentence"


def response_flags(response: str) -> int:
    """The scorecard's findings for one response, as a bit mask."""
    flags = 0
    end = ending(response)
    if end == "mid_sentence":
        flags |= FLAG_MID_SENTENCE
    elif end == "colon":
        flags |= FLAG_COLON_END
    if _has_fence(response):
        flags |= FLAG_CODE
    prose = prose_of(response)
    if ("//" in prose or "www." in prose) and URL.search(prose):
        flags |= FLAG_URL
    for kind, pattern in RESIDUE.items():
        # Most responses lack the one character a kind needs: the substring test is the check.
        needs = RESIDUE_NEEDS.get(kind)
        if (needs is None or needs in prose) and pattern.search(prose):
            flags |= RESIDUE_FLAGS[kind]
    return flags


def instruction_prefix(instruction: str, words: int = 4) -> str:
    """The first words, lowercased, without the punctuation around them."""
    found = (w.strip(_PUNCTUATION) for w in instruction[:40 * words].lower().split())
    return " ".join([w for w in found if w][:words])


class Scorecard:
    """Streamed over kept pairs: flag counts, instruction prefixes (sampled), template share."""

    def __init__(self, seed: int = 0):
        self.pairs = self.templated = 0
        self.masks: Counter = Counter()          # flag mask -> pairs (few distinct masks)
        self.sample = Reservoir(SAMPLE_SIZE, seed)   # (prefix, instruction chars, response chars)

    def add(self, flags: int, prefix: str, templated: bool, lengths: tuple[int, int]) -> None:
        self.pairs += 1
        self.templated += templated
        self.masks[flags] += 1
        self.sample.add((prefix, *lengths))

    @property
    def flags(self) -> Counter:
        counts: Counter = Counter()
        for mask, pairs in self.masks.items():
            for bit in _bits(mask):
                counts[bit] += pairs
        return counts

    def as_dict(self, pairs_in: int, exact_duplicates: int, near_duplicates: int | None) -> dict:
        n, flags, sample = self.pairs, self.flags, self.sample.items
        residue = {kind: flags[bit] for kind, bit in RESIDUE_FLAGS.items()}
        top, top_count = _most_common([item[0] for item in sample])
        return {
            "pairs": n,
            "ends_mid_sentence": _share(flags[FLAG_MID_SENTENCE], n),
            "ends_on_colon": _share(flags[FLAG_COLON_END], n),
            "markup_residue": _share(flags["residue"], n),
            "residue_by_kind": {k: _share(v, n) for k, v in residue.items() if v},
            "urls": _share(flags[FLAG_URL], n),
            "with_code_block": _share(flags[FLAG_CODE], n),
            "top_instruction_prefix": {"prefix": top, "share": round(
                top_count / len(sample), 4) if sample else 0.0,
                "sampled": self.sample.seen > len(sample)},
            "instructions_from_template": _share(self.templated, n),
            "exact_duplicates": _share(exact_duplicates, pairs_in),
            "near_duplicates": None if near_duplicates is None else _share(near_duplicates, pairs_in),
            "lengths": _quantiles([item[1:] for item in sample]),
        }


def _bits(flags: int):
    """Each set bit of the mask, then "residue" once when any residue bit is set."""
    bit = 1
    residue = False
    while bit <= flags:
        if flags & bit:
            yield bit
            residue |= bit >= 16
        bit <<= 1
    if residue:
        yield "residue"


def _share(count: int, total: int) -> dict:
    return {"count": count, "share": round(count / total, 4) if total else 0.0}


def _most_common(items: list[str]) -> tuple[str, int]:
    found = Counter(items).most_common(1)
    return found[0] if found else ("", 0)


def _quantiles(lengths: list[tuple[int, int]]) -> dict:
    result = {}
    for index, name in enumerate(("instruction", "response")):
        values = sorted(pair[index] for pair in lengths)
        if not values:
            result[name] = {}
            continue
        result[name] = {f"p{q}": values[min(len(values) - 1, len(values) * q // 100)]
                        for q in (10, 50, 90)}
    return result


# (key in the scorecard dict, label): the rows the data report and report.html show.
ROWS = (("ends_mid_sentence", "responses ending mid-sentence"),
        ("ends_on_colon", 'responses ending on ":"'),
        ("markup_residue", "responses with markup or escape residue"),
        ("urls", "responses with a URL"),
        ("with_code_block", "responses with a fenced code block"),
        ("instructions_from_template", "instructions written by a template"),
        ("exact_duplicates", "exact duplicate instructions (of pairs in)"),
        ("near_duplicates", "near duplicates (of pairs in)"))


def rows(card: dict) -> list[tuple[str, str, str]]:
    """(label, share as a percentage, count) per scorecard row, then the diversity and lengths."""
    found = []
    for key, label in ROWS:
        value = card.get(key)
        if value is None:
            found.append((label, "not measured", "near_dedup off"))
        else:
            found.append((label, f"{value['share']:.1%}", f"{value['count']:,}"))
    residue = card.get("residue_by_kind") or {}
    if residue:
        found.append(("residue by kind", "", ", ".join(
            f"{kind} {value['count']:,}" for kind, value in residue.items())))
    top = card.get("top_instruction_prefix") or {}
    if top.get("prefix"):
        found.append(("most common instruction start", f"{top['share']:.1%}",
                      f"\"{top['prefix']}\"" + (" (sampled)" if top.get("sampled") else "")))
    for name, quantiles in (card.get("lengths") or {}).items():
        if quantiles:
            found.append((f"{name} length p10 / p50 / p90", "",
                          " / ".join(f"{quantiles[q]:,}" for q in ("p10", "p50", "p90"))))
    return found


def summary_line(card: dict) -> str:
    return (f"mid-sentence {card['ends_mid_sentence']['share']:.1%}, "
            f"on ':' {card['ends_on_colon']['share']:.1%}, "
            f"residue {card['markup_residue']['share']:.1%}, URLs {card['urls']['share']:.1%}, "
            f"code {card['with_code_block']['share']:.1%}, top instruction start "
            f"{card['top_instruction_prefix']['share']:.0%}")
