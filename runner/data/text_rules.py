"""Cleaning rules: named text -> text functions applied in the order a recipe lists them.

The built-in rules reproduce the hand-run workflow's regular expressions exactly (same output on
any input), and stay linear on hostile input (a page with thousands of `<`, `[` or `![` and no
closing character, a megabyte-long token): the file-path pattern is anchored where it can only
match anyway, HTML tags are looked for only up to the last `>`, and a text with many more link
or image openers than link ends goes through RE2, which gives the same matches. User rules
(`regex_replace`) run on RE2, whose matching time is linear in the text, so a shared recipe
cannot hang a run with a catastrophic pattern.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass

from runner.errors import StepError

_HTML_TAG = re.compile(r"<[^>]+>")
_MD_IMAGE = re.compile(r"!\[.*?\]\(.*?\)")
_MD_LINK = re.compile(r"\[([^\]]+)\]\([^\)]+\)")
_FENCED_CODE = re.compile(r"```[^`]*```")
_INLINE_CODE = re.compile(r"`[^`]+`")
_INLINE_CODE_TEXT = re.compile(r"`([^`]+)`")
_MD_SYMBOLS = re.compile(r"[#*_~>`|-]+")
_BACKSLASH_ESCAPE = re.compile(r"\\(.)")
_URL = re.compile(r"https?://[^\s]+")
# The original `\S+\.\w+` retries every start position inside a token (quadratic on long
# tokens); a match can only ever start where a token starts, so anchoring there is equivalent.
_FILE_PATH = re.compile(r"(?<!\S)\S+\.\w+")
_WHITESPACE = re.compile(r"\s+")


def _before_last(text: str, closer: str, pattern: re.Pattern, replacement: str) -> str:
    """Apply `pattern` only up to the last `closer`: no match can end after it, and skipping
    the tail keeps a page full of unclosed openers from costing quadratic time."""
    end = text.rfind(closer)
    if end < 0:
        return text
    return pattern.sub(replacement, text[: end + 1]) + text[end + 1:]


def strip_html(text: str) -> str:
    """Remove HTML tags `<...>` (original rule 1)."""
    return _before_last(text, ">", _HTML_TAG, "")


@functools.cache
def _re2_twin(pattern: re.Pattern):
    import re2
    return re2.compile(pattern.pattern)


def _guarded_sub(text: str, pattern: re.Pattern, replacement: str, opener: str) -> str:
    """Python's engine is faster on ordinary text, but every opener that finds no `](` ... `)`
    scans on to the end of its line or text; when such openers could dominate, use RE2 (same
    leftmost-first matches for these patterns, linear time)."""
    openers = text.count(opener)
    if not openers:
        return text
    if openers > 2 * text.count("](") + 100:
        return _re2_twin(pattern).sub(replacement, text)
    return pattern.sub(replacement, text)


def remove_md_images(text: str) -> str:
    """Remove markdown images `![alt](src)` (original rule 2)."""
    return _guarded_sub(text, _MD_IMAGE, "", "![")


def unwrap_md_links(text: str) -> str:
    """Replace markdown links `[text](url)` by their text (original rule 3)."""
    return _guarded_sub(text, _MD_LINK, r"\1", "[")


def remove_code_blocks(text: str) -> str:
    """Remove fenced code blocks (original rule 4a)."""
    return _FENCED_CODE.sub("", text)


def remove_inline_code(text: str) -> str:
    """Remove inline code `x` entirely (original rule 4b)."""
    return _INLINE_CODE.sub("", text)


def unwrap_inline_code(text: str) -> str:
    """Keep inline code's text, drop its backticks (better for technical docs than removing)."""
    return _INLINE_CODE_TEXT.sub(r"\1", text)


def remove_md_symbols(text: str) -> str:
    """Replace runs of markdown symbols #*_~>`|- by a space (original rule 5)."""
    return _MD_SYMBOLS.sub(" ", text)


def unescape(text: str) -> str:
    """Unescape backslash escapes `\\x` -> `x` (original rule 6)."""
    return _BACKSLASH_ESCAPE.sub(r"\1", text)


def remove_urls(text: str) -> str:
    """Remove http(s) URLs (original rule 7)."""
    return _URL.sub("", text)


def remove_file_paths(text: str) -> str:
    """Remove file-path-like tokens `\\S+\\.\\w+` (original rule 8; also eats "e.g." and
    version numbers)."""
    return _FILE_PATH.sub("", text)


def collapse_whitespace(text: str) -> str:
    """Collapse every whitespace run into one space (original rule 9)."""
    return _WHITESPACE.sub(" ", text)


BUILTIN_RULES: dict[str, Callable[[str], str]] = {
    fn.__name__: fn for fn in (
        strip_html, remove_md_images, unwrap_md_links, remove_code_blocks, remove_inline_code,
        unwrap_inline_code, remove_md_symbols, unescape, remove_urls, remove_file_paths,
        collapse_whitespace)
}

# The hand-run workflow, in its order (rule 4 is two rules here: fences, then inline code).
ORIGINAL_RULES = ("strip_html", "remove_md_images", "unwrap_md_links", "remove_code_blocks",
                  "remove_inline_code", "remove_md_symbols", "unescape", "remove_urls",
                  "remove_file_paths", "collapse_whitespace")


@dataclass(frozen=True)
class Rule:
    name: str
    apply: Callable[[str], str]


def _regex_rule(spec: dict, where: str) -> Rule:
    import re2

    pattern = spec.get("pattern", "")
    options = re2.Options()
    options.log_errors = False          # the error goes into our message, not to stderr
    options.case_sensitive = not spec.get("ignore_case", False)
    try:
        compiled = re2.compile(pattern, options)
    except re2.error as exc:
        detail = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else exc
        raise StepError(
            f"{where}.pattern: {pattern!r} is not a valid RE2 pattern ({detail}); RE2 has no "
            "backreferences or lookaround - rewrite the pattern without them") from None
    replacement = spec.get("replacement", "")
    for match in _GROUP_REF.finditer(replacement):
        ref = match.group(1) or match.group(2)
        if not (ref.isdigit() and int(ref) <= compiled.groups or ref in compiled.groupindex):
            raise StepError(f"{where}.replacement: {replacement!r} refers to group {ref!r}, "
                            f"which pattern {pattern!r} does not have (it has "
                            f"{compiled.groups} group(s))")
    return Rule("regex_replace", lambda text: compiled.sub(replacement, text))


_GROUP_REF = re.compile(r"\\g<(\w+)>|\\([1-9]\d?)")


def build_rules(specs: list[dict], where: str = "cleaning.rules") -> list[Rule]:
    """Recipe rule list -> callable rules; a bad rule is a StepError naming its setting."""
    rules = []
    for index, spec in enumerate(specs):
        name = spec.get("rule")
        if name == "regex_replace":
            rules.append(_regex_rule(spec, f"{where}[{index}]"))
        elif name in BUILTIN_RULES:
            rules.append(Rule(name, BUILTIN_RULES[name]))
        else:
            known = ", ".join([*BUILTIN_RULES, "regex_replace"])
            raise StepError(f"{where}[{index}].rule: unknown rule {name!r}; known: {known}")
    return rules


def apply_rules(text: str, rules: list[Rule], removed: list[int] | None = None) -> str:
    """Run the rules in order; `removed[i]` accumulates the characters rule i took out."""
    for index, rule in enumerate(rules):
        before = len(text)
        text = rule.apply(text)
        if removed is not None:
            removed[index] += before - len(text)
    return text


_SECTION_NUMBER = re.compile(r"^(?:\d+\.)+\d*\s+|^[IVXLC]+\.\s+")
_HEADING_JUNK = re.compile(r"[¶*~`]+|\\(?=.)")


def clean_heading(text: str) -> str:
    """Heading text for an instruction: tags, links, code marks, anchors and numbering removed,
    but the words kept (the text rules would delete `for` from "4.2. `for` Statements")."""
    text = strip_html(remove_md_images(text))
    text = unwrap_md_links(text)
    text = _URL.sub("", text)
    text = _HEADING_JUNK.sub("", text)
    text = _WHITESPACE.sub(" ", text).strip()
    return _SECTION_NUMBER.sub("", text).strip(" :-—–")
