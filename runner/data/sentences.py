"""Sentence splitting and filtering.

`original` is the hand-run workflow's split (after . ! ? and whitespace). `smart` also ends a
sentence there, except after abbreviations (e.g., i.e., etc., vs. ...), initials, and numbers that
open a sentence ("4.2. Statements") or are followed by a lowercase word ("version 3. then").
Decimals and version numbers ("3.14", "3.11.2") never split: no whitespace follows their dots.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

_ORIGINAL_SPLIT = re.compile(r"(?<=[.!?])\s+")
_CLOSERS = "\"')]\u201d\u2019"
# . ! ? with up to two closing quotes/brackets, then whitespace (split keeps both groups).
_CANDIDATE = re.compile(r"([.!?][\"')\]\u201d\u2019]{0,2})(\s+)")
_NUMBER = re.compile(r"^\(?\d+(?:\.\d+)*$")
_OPENERS = "([{\"'\u201c\u2018"

ABBREVIATIONS = frozenset("""
    e.g eg i.e ie etc vs cf al viz approx incl esp resp ca c.f mr mrs ms dr prof sr jr st no nos
    fig figs eq eqs sec ch vol pp ed eds inc ltd co corp dept est misc n.b nb p.s ps a.k.a aka
    u.s u.k jan feb mar apr jun jul aug sep sept oct nov dec
""".split())


def split_original(text: str) -> list[str]:
    return _ORIGINAL_SPLIT.split(text)


def _ends_sentence(sentence: str, following: str) -> bool:
    """Does the candidate boundary after `sentence` (ending in . ! ? and maybe closers) end it?"""
    stripped = sentence.rstrip(_CLOSERS)
    if stripped[-1] != ".":
        return True
    space = max(stripped.rfind(" "), stripped.rfind("\n"), stripped.rfind("\t"))
    token = stripped[space + 1:-1].lstrip(_OPENERS)
    if token.lower() in ABBREVIATIONS or (len(token) == 1 and token.isalpha()):
        return False
    if _NUMBER.match(token):
        opens_sentence = not stripped[:space + 1].strip()
        return not (opens_sentence or following[:1].islower())
    return True


def split_smart(text: str) -> list[str]:
    """Sentences with their trailing whitespace (joined, they give the text back)."""
    parts = _CANDIDATE.split(text)
    sentences, current = [], parts[0]
    for index in range(1, len(parts), 3):
        current += parts[index]
        gap, following = parts[index + 1], parts[index + 2]
        if current.strip() and _ends_sentence(current, following):
            sentences.append(current + gap)
            current = following
        else:
            current += gap + following
    sentences.append(current)
    return sentences


def sentence_ends(text: str) -> Iterator[int]:
    """Offsets just after each smart sentence end (trailing whitespace excluded)."""
    offset = 0
    for sentence in split_smart(text)[:-1]:
        offset += len(sentence)
        yield offset - (len(sentence) - len(sentence.rstrip()))


SPLITTERS = {"original": split_original, "smart": split_smart}


@dataclass
class SentenceFilter:
    """Keeps sentences longer than min_chars, not longer than max_chars (0 = no limit), and
    containing none of the boilerplate words (substring match, as the original)."""
    min_chars: int = 30
    max_chars: int = 0
    drop_words: tuple[str, ...] = ()
    case_sensitive: bool = False
    _words: re.Pattern | None = field(init=False, default=None)

    def __post_init__(self):
        words = [w if self.case_sensitive else w.lower() for w in self.drop_words]
        if words:
            # Longest first, so the reported reason is the longest word that matched there.
            alternatives = sorted(set(words), key=len, reverse=True)
            self._words = re.compile("|".join(map(re.escape, alternatives)))

    def drop_reason(self, sentence: str) -> str | None:
        if len(sentence) <= self.min_chars:
            return "too_short"
        if self.max_chars and len(sentence) > self.max_chars:
            return "too_long"
        if self._words is not None:
            found = self._words.search(sentence if self.case_sensitive else sentence.lower())
            if found:
                return f"contains: {found.group()}"
        return None

    def apply(self, pieces: list[str], dropped: Counter) -> list[str]:
        kept = []
        for piece in pieces:
            sentence = piece.strip()
            reason = self.drop_reason(sentence)
            if reason is None:
                kept.append(sentence)
            elif sentence:  # the empty tail of a split is not a dropped sentence
                dropped[reason] += 1
        return kept


def cut_at_sentence_end(text: str, limit: int, word_fallback: bool = True) -> str:
    """At most `limit` characters, ending at a sentence end when one lies in the second half of
    the window, else at a word boundary; without `word_fallback`, at the last sentence end in
    the window wherever it lies, or "" when there is none."""
    if len(text) <= limit:
        return text
    window = text[:limit]
    best = 0
    for end in sentence_ends(window + " "):
        if end <= limit:
            best = end
    if not word_fallback:
        return window[:best].rstrip()
    if best >= limit // 2:
        return window[:best].rstrip()
    space = window.rfind(" ")
    return (window[:space] if space >= limit // 2 else window).rstrip()


def without_last_sentence(text: str) -> str:
    """The text up to the end of its second-to-last sentence ("" for a single sentence)."""
    text = text.rstrip()
    ends = [end for end in sentence_ends(text + " ") if end < len(text)]
    return text[:ends[-1]].rstrip() if ends else ""
