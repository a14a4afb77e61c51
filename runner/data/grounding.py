"""Is a teacher's answer supported by the section it was written from? A measurable overlap check.

support(answer, section) = the share of the answer's content words that occur in the section.
Content words are lowercased words of 3+ characters that are not stop words, with a plural,
-ed/-ing or final -e folded ("serializes" = "serialize"); code counts like prose. An answer is grounded
when its support is at least `min_support` and, with `check_identifiers`, every identifier it
names (a dotted name like os.path.join, a snake_case or CamelCase name, a call like f()) occurs
in the section verbatim - an invented API is the teacher's most harmful mistake.

Also rejected before grounding: empty answers, refusals ("the section does not say..."),
answers that echo the question.
"""

from __future__ import annotations

import re

_WORD = re.compile(r"[A-Za-z][A-Za-z0-9_]{2,}")
_IDENTIFIER = re.compile(r"\b(?:[A-Za-z_]\w*\.)+[A-Za-z_]\w*\b|\b[a-z]+_\w+\b"
                         r"|\b[A-Z][a-z0-9]+[A-Z]\w*\b|\b[A-Za-z_]\w*(?=\()")
_REFUSAL = re.compile(
    r"\b(?:i(?: a|')m (?:sorry|unable)|i (?:can ?not|can't|am unable|do not have|don't have)"
    r"|as an ai\b|(?:the|this) (?:section|text|documentation|passage) does(?: not|n't)"
    r" (?:say|mention|contain|provide|specify|explain)"
    r"|(?:not|isn't|is not) (?:mentioned|specified|provided|covered|stated) in the"
    r" (?:section|text|documentation|passage))", re.I)
STOP_WORDS = frozenset("""
    the and for are but not you all any can had her was one our out has him his how its may new
    now own say she too use who why yes yet also into than that them then they this with from have
    were what when where which will would there their these those been being does doing did each
    such only other some more most very just over under about after before your here should could
    might must shall both either neither same lets like using used uses via per within without
    because while whether though through onto upon off again once further few many much
    """.split())
_SUFFIXES = ("ing", "ed", "es", "s")


def _fold(word: str) -> str:
    """"serializes", "serialized", "serializing", "serialize" -> "serializ"."""
    word = word.lower()
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            word = word[: -len(suffix)]
            break
    return word[:-1] if word.endswith("e") and len(word) > 3 else word


def content_words(text: str) -> set[str]:
    return {_fold(w) for w in _WORD.findall(text) if w.lower() not in STOP_WORDS}


def support(answer: str, section_words: set[str]) -> float:
    words = content_words(answer)
    return len(words & section_words) / len(words) if words else 0.0


_ABBREVIATIONS = frozenset(["e.g", "i.e", "a.k.a", "n.b", "p.s", "u.s", "u.k", "cf", "vs", "etc"])


def identifiers(text: str) -> set[str]:
    return {match.group(0) for match in _IDENTIFIER.finditer(text)
            if match.group(0).lower() not in _ABBREVIATIONS}


def echoes(question: str, answer: str) -> bool:
    """The answer says nothing the question did not: same words, or contained in it."""
    q, a = " ".join(question.lower().split()), " ".join(answer.lower().split())
    if not a or a in q:
        return True
    q_words, a_words = content_words(question), content_words(answer)
    return bool(a_words) and a_words <= q_words


class Grounding:
    """Checks answers against one section; `verdict` gives None (kept) or the drop reason."""

    def __init__(self, section: str, min_support: float, check_identifiers: bool):
        self.section = section
        self.words = content_words(section)
        self.min_support = min_support
        self.check_identifiers = check_identifiers

    def verdict(self, question: str, answer: str) -> str | None:
        if not answer.strip():
            return "empty_answer"
        if _REFUSAL.search(answer):
            return "refusal"
        if echoes(question, answer):
            return "echoed_question"
        if support(answer, self.words) < self.min_support:
            return "ungrounded"
        if self.check_identifiers and any(name not in self.section for name in identifiers(answer)):
            return "unsupported_identifier"
        return None

    def score(self, answer: str) -> float:
        return support(answer, self.words)
