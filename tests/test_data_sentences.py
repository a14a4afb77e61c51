"""Sentence splitters, the sentence filter, cutting at a sentence end, markdown sections."""

from __future__ import annotations

from collections import Counter

from runner.data.doc_cleaner import DocumentCleaner
from runner.data.md_sections import heading_paths, split_sections
from runner.data.sentences import (
    SentenceFilter,
    cut_at_sentence_end,
    split_original,
    split_smart,
    without_last_sentence,
)

TEXT = ("Use a list, e.g. a stack. It works, i.e. mostly. New in version 3.11. The value 3.14 "
        "is pi. 4.2. for Statements loop. See section 3. then go on. Dr. Smith wrote it! Why? "
        "J. R. R. Tolkien wrote (etc.) books.")


def test_original_splitter_breaks_after_every_dot_and_space():
    pieces = split_original(TEXT)
    assert pieces[:2] == ["Use a list, e.g.", "a stack."]
    assert "4.2." in pieces and "Dr." in pieces


def test_smart_splitter_keeps_abbreviations_versions_decimals_and_numbering():
    assert [p.strip() for p in split_smart(TEXT)] == [
        "Use a list, e.g. a stack.",
        "It works, i.e. mostly.",
        "New in version 3.11.",
        "The value 3.14 is pi.",
        "4.2. for Statements loop.",
        "See section 3. then go on.",
        "Dr. Smith wrote it!",
        "Why?",
        "J. R. R. Tolkien wrote (etc.) books.",
    ]


def test_smart_splitter_ends_sentences_after_closing_quotes_and_brackets():
    assert [p.strip() for p in split_smart('He said "stop." Then (it ended.) Next one')] == [
        'He said "stop."', "Then (it ended.)", "Next one"]


def test_filter_reports_why_each_sentence_was_dropped():
    keep = SentenceFilter(min_chars=10, max_chars=40, drop_words=("Next", "click here"))
    dropped = Counter()
    kept = keep.apply(["short.", "A sentence that is kept.", "Go to the NEXT page please.",
                       "Please CLICK HERE to read more of it.", "x" * 41, "  "], dropped)
    assert kept == ["A sentence that is kept."]
    assert dropped == {"too_short": 1, "too_long": 1, "contains: next": 1,
                       "contains: click here": 1}


def test_filter_words_are_substrings_and_case_sensitive_on_request():
    dropped = Counter()
    # Like the original: "index" also matches "indexing".
    assert SentenceFilter(0, 0, ("index",)).apply(["Indexing a list is fast."], dropped) == []
    assert SentenceFilter(0, 0, ("index",), case_sensitive=True).apply(
        ["Indexing a list is fast."], dropped) == ["Indexing a list is fast."]


def test_cut_at_sentence_end_prefers_a_sentence_end_then_a_word_boundary():
    text = "First sentence is here. Second sentence is a bit longer than that."
    assert cut_at_sentence_end(text, 40) == "First sentence is here."
    assert cut_at_sentence_end("word " * 40, 52) == ("word " * 10).strip()
    assert cut_at_sentence_end("short", 10) == "short"


def test_a_strict_cut_ends_at_a_sentence_end_or_gives_nothing():
    text = "One short one. Then a much longer second sentence that runs past the limit."
    assert cut_at_sentence_end(text, 60, word_fallback=False) == "One short one."
    assert cut_at_sentence_end("word " * 40, 52, word_fallback=False) == ""
    assert without_last_sentence("The first sentence. Then this one:") == "The first sentence."
    assert without_last_sentence("Only one sentence here:") == ""


MARKDOWN = """intro text

# Title

Para one.

## Sub `a`
text
```python
# not a heading
x = 1
```
after code

Setext Two
----------
body2

- item one
- item two

    ```
    indented fence
    ```

| a | b |
| --- | --- |
| 1 | 2 |

---

### Deep ###
deep body
~~~
unclosed
"""


def test_sections_follow_headings_outside_code_fences():
    sections = split_sections(MARKDOWN)
    assert [(s.heading, s.level) for s in sections] == [
        ("", 0), ("Title", 1), ("Sub `a`", 2), ("Setext Two", 2), ("Deep", 3)]
    sub = sections[2]
    assert [kind for kind, _, _ in sub.blocks] == ["text", "code", "text"]
    assert sub.blocks[1][1:] == ("# not a heading\nx = 1", "python")
    assert ("code", "indented fence", "") in sections[3].blocks
    assert sections[4].blocks[-1] == ("code", "unclosed", "")
    assert heading_paths(sections, [s.heading for s in sections])[4] == [
        "Title", "Setext Two", "Deep"]


def test_cleaner_sections_keep_paragraphs_lists_and_table_rows():
    settings = {"rules": [{"rule": "strip_html"}, {"rule": "unwrap_inline_code"},
                          {"rule": "collapse_whitespace"}],
                "splitter": "smart", "min_sentence_chars": 0, "max_sentence_chars": 0,
                "drop_sentences_containing": [], "case_sensitive": False, "keep_headings": True}
    sections = DocumentCleaner(settings).sections(MARKDOWN)
    setext = sections[3]
    assert setext["heading_path"] == ["Title", "Setext Two"]
    texts = [b.get("text") for b in setext["blocks"]]
    assert texts[:2] == ["body2", "- item one\n- item two"]
    assert "| a | b |\n| --- | --- |\n| 1 | 2 |" in texts
    assert "---" not in texts
    assert sections[2]["heading"] == "Sub a"
