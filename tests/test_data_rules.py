"""Cleaning rules: each rule on crafted input, the original's regexes as the reference, hostile
input that would take quadratic time, and user regex rules on RE2."""

from __future__ import annotations

import random
import re
import time

import pytest

from runner.data.text_rules import BUILTIN_RULES, ORIGINAL_RULES, apply_rules, build_rules, clean_heading
from runner.errors import StepError

# The hand-run workflow's patterns, verbatim.
ORIGINAL = {
    "strip_html": (r"<[^>]+>", ""),
    "remove_md_images": (r"!\[.*?\]\(.*?\)", ""),
    "unwrap_md_links": (r"\[([^\]]+)\]\([^\)]+\)", r"\1"),
    "remove_code_blocks": (r"```[^`]*```", ""),
    "remove_inline_code": (r"`[^`]+`", ""),
    "remove_md_symbols": (r"[#*_~>`|-]+", " "),
    "unescape": (r"\\(.)", r"\1"),
    "remove_urls": (r"https?://[^\s]+", ""),
    "remove_file_paths": (r"\S+\.\w+", ""),
    "collapse_whitespace": (r"\s+", " "),
}


@pytest.mark.parametrize("name, text, expected", [
    ("strip_html", "a <b>bold</b> <a href='x'>link</a> c", "a bold link c"),
    ("strip_html", "if a < b and c > d: x", "if a  d: x"),
    ("strip_html", "no closer < here", "no closer < here"),
    ("remove_md_images", "see ![a cat](cat.png) here", "see  here"),
    ("unwrap_md_links", "read [the docs](https://x.org/a) now", "read the docs now"),
    ("unwrap_md_links", "a [b] (c) d", "a [b] (c) d"),
    ("remove_code_blocks", "a\n```python\nx = 1\n```\nb", "a\n\nb"),
    ("remove_inline_code", "call `f()` now", "call  now"),
    ("unwrap_inline_code", "call `f()` now", "call f() now"),
    ("remove_md_symbols", "## Title *em* __init__ a-b |x| > q", "  Title  em   init  a b  x    q"),
    ("unescape", r"a \* b \_c", "a * b _c"),
    ("remove_urls", "go to https://x.org/a?b=1 and http://y.z now", "go to  and  now"),
    ("remove_file_paths", "edit setup.py, e.g. version 3.11 ok", "edit , . version  ok"),
    ("collapse_whitespace", "a \n\t b\u00a0 c", "a b c"),
])
def test_each_rule_on_crafted_text(name, text, expected):
    assert BUILTIN_RULES[name](text) == expected


def test_file_path_rule_eats_abbreviations_like_the_original():
    # The crude original rule: "e.g.x" goes whole, "i.e." loses all but its last dot.
    assert BUILTIN_RULES["remove_file_paths"]("e.g.x and i.e. y") == " and . y"


@pytest.mark.parametrize("name", ORIGINAL_RULES)
def test_builtin_rules_match_the_original_regexes_on_random_text(name):
    pattern, replacement = ORIGINAL[name]
    rng = random.Random(name)
    alphabet = "ab .<>[]()!`#*_~|-\\\n\t\u00a0é1:/h"
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 50)))
        assert BUILTIN_RULES[name](text) == re.sub(pattern, replacement, text), repr(text)


@pytest.mark.parametrize("name, text", [
    ("strip_html", "a < b " * 40000),
    ("unwrap_md_links", "[x " * 40000),
    ("unwrap_md_links", "[x " * 40000 + "]"),
    ("remove_md_images", "![a " * 40000),
    ("remove_file_paths", "a" * 400000),
])
def test_builtin_rules_stay_linear_on_hostile_text(name, text):
    started = time.perf_counter()
    BUILTIN_RULES[name](text)
    # The original patterns need seconds to minutes here (quadratic); ours take milliseconds.
    assert time.perf_counter() - started < 1.0


def test_apply_rules_counts_characters_removed_per_rule():
    rules = build_rules([{"rule": "strip_html"}, {"rule": "collapse_whitespace"}])
    removed = [0, 0]
    assert apply_rules("<p>a   b</p>", rules, removed) == "a b"
    assert removed == [7, 2]


def test_regex_replace_runs_on_re2_with_groups_and_ignore_case():
    rules = build_rules([{"rule": "regex_replace", "pattern": r"(?P<word>v)ersion (\d+)",
                          "replacement": r"\g<word>\2", "ignore_case": True}])
    assert apply_rules("Version 3 and version 4", rules) == "V3 and v4"


def test_catastrophic_user_pattern_cannot_hang_the_run():
    rules = build_rules([{"rule": "regex_replace", "pattern": r"(a+)+$", "replacement": "x"}])
    started = time.perf_counter()
    text = apply_rules("a" * 50000 + "b", rules)
    assert text.endswith("b")
    assert time.perf_counter() - started < 1.0   # Python's re: practically forever


@pytest.mark.parametrize("spec, expected", [
    ({"rule": "regex_replace", "pattern": r"(a)\1"}, r"cleaning.rules\[1\].pattern: .*backreferences"),
    ({"rule": "regex_replace", "pattern": r"(?=a)b"}, r"cleaning.rules\[1\].pattern: .*lookaround"),
    ({"rule": "regex_replace", "pattern": "a", "replacement": r"\1"},
     r"cleaning.rules\[1\].replacement: .*group '1'"),
    ({"rule": "no_such_rule"}, r"cleaning.rules\[1\].rule: unknown rule 'no_such_rule'"),
])
def test_a_bad_rule_is_a_step_error_naming_its_setting(spec, expected):
    with pytest.raises(StepError, match=expected):
        build_rules([{"rule": "strip_html"}, spec])


@pytest.mark.parametrize("raw, expected", [
    ("4.2. `for` Statements", "for Statements"),
    ("[`re`](#module-re) — Regular expression operations¶", "re — Regular expression operations"),
    ("The <em>__init__</em> method", "The __init__ method"),
    ("IV. Appendix", "Appendix"),
])
def test_headings_keep_their_words(raw, expected):
    assert clean_heading(raw) == expected
