"""heading_sections pairing: a section's heading (through a Jinja template) -> its body text."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator

from runner.data.jinja_templates import compile_template as compile_jinja
from runner.data.jinja_templates import render
from runner.data.scorecard import ending
from runner.data.sentences import cut_at_sentence_end, without_last_sentence
from runner.data.text_rules import clean_heading

TEMPLATE_SETTING = "pairing.instruction_template"
_TITLE_PARTS = re.compile(r"\s+[—–|-]\s+")
_SITE_WORDS = re.compile(r"\b(documentation|docs|manual|wiki|handbook|reference)\b", re.I)
_WHITESPACE = re.compile(r"\s+")


def page_title(title: str) -> str:
    """"re — Regular expression operations — Python 3.11.2 documentation" -> the page's own
    title: a trailing site-name part ("... documentation", "... docs") is left out."""
    title = clean_heading(title or "")
    parts = _TITLE_PARTS.split(title)
    if len(parts) > 1 and _SITE_WORDS.search(parts[-1]):
        title = title[: title.rfind(parts[-1])].rstrip(" —–|-")
    return title


GENERIC_HEADINGS = frozenset("""
    examples example exceptions errors functions constants classes methods attributes
    properties types data introduction overview summary background details notes note usage
    description synopsis parameters arguments options returns tutorial reference api
    configuration compatibility limitations caveats performance files environment bugs
    diagnostics history authors author miscellaneous utilities helpers faq
""".split()) | frozenset([
    "return value", "return values", "see also", "module contents", "module-level functions",
    "command-line interface", "command line interface", "command-line options",
    "command line options", "security considerations", "basic usage", "advanced usage",
    "other functions", "getting started", "how it works", "what's new", "porting notes"])
TEMPLATE_SAMPLE = {"heading": "Examples", "title": "Title", "heading_path": ["Title", "Examples"],
                   "url": "https://example.org/page", "parent": "Title", "generic": True,
                   "topic": "Examples for Title", "kind": "topic", "name": "Examples"}
_CALLABLE = re.compile(r"^[A-Za-z_][\w.]*\(\)$")            # "dumps()", "Counter.elements()"
_CLASS = re.compile(r"^class ([A-Za-z_][\w.]*)$")           # "class JSONDecoder"
_MODULE = re.compile(r"^[A-Za-z_][\w.]*$")                  # a title that is a module name


def is_generic(heading: str, repeated: frozenset[str] = frozenset()) -> bool:
    """A heading that names a kind of section, not a subject: built-in words ("Examples",
    "Return Value"), or one the cleaning step found in several documents (doc_cleaner's
    REPEATED_IN): "dump()" in json, pickle and marshal says nothing without its module."""
    key = heading.casefold().strip(" :")
    return key in GENERIC_HEADINGS or key in repeated


def heading_kind(heading: str, title: str) -> tuple[str, str]:
    """(kind, name): "callable" for "dumps()", "class" for "class JSONDecoder" (named with
    their module when the page title is one: "json.dumps()"), else "topic" and the heading."""
    called, declared = _CALLABLE.match(heading), _CLASS.match(heading)
    if not (called or declared):
        return "topic", heading
    name = heading if called else declared.group(1)
    if _MODULE.match(title) and not name.startswith(f"{title}."):
        name = f"{title}.{name}"
    return ("callable" if called else "class"), name


def compile_template(source: str):
    """The instruction template (sandboxed Jinja); variables: heading, title, heading_path,
    url, parent (the enclosing heading or page title), generic, topic, kind, name."""
    return compile_jinja(source, TEMPLATE_SETTING, TEMPLATE_SAMPLE)


def section_groups(sections: list[dict], max_level: int) -> Iterator[tuple[dict, list[dict]]]:
    """Sections deeper than max_level join their parent's body, their heading as a paragraph."""
    current, blocks = None, []
    for section in sections:
        if current is not None and section["level"] > max_level:
            if section["heading"]:
                blocks.append({"heading": section["heading"]})
            blocks.extend(section["blocks"])
            continue
        if current is not None:
            yield current, blocks
        current, blocks = section, list(section["blocks"])
    if current is not None:
        yield current, blocks


def _render_block(block: dict) -> str:
    if "code" in block:
        return f"```{block.get('lang', '')}\n{block['code']}\n```"
    return block.get("text") or block["heading"]


def build_response(blocks: list[dict], keep_code: bool, limit: int) -> str:
    """Paragraphs (and code blocks when kept) up to `limit` characters.

    Prose is cut only at a sentence end (a paragraph with none in reach is left out), and a
    code block is never cut (half a code block teaches broken code): one that does not fit is
    left out. A sentence ending in ":" whose code block is left out goes with it, and the
    response ends where a sentence, a list, a table or a code block ends - never on a
    subheading, a ":" or a fragment.
    """
    parts: list[tuple[str, str]] = []      # (kind, text): heading, prose or code
    used = 0
    for block in blocks:
        text = _render_block(block)
        kind = "code" if "code" in block else "heading" if "heading" in block else "prose"
        room = limit - used - (2 if parts else 0)      # a blank line between paragraphs
        if kind == "code" and not (keep_code and len(text) <= room):
            _drop_dangling_intro(parts)
            used = _length(parts)
            continue
        if len(text) <= room:
            parts.append((kind, text))
            used = _length(parts)
            continue
        if kind == "prose" and room > 40:
            cut = cut_at_sentence_end(text, room, word_fallback=False)
            if cut:
                parts.append((kind, cut))
        break
    _end_cleanly(parts)
    return "\n\n".join(text for _, text in parts)


def _length(parts: list[tuple[str, str]]) -> int:
    return sum(len(text) for _, text in parts) + 2 * max(0, len(parts) - 1)


def _drop_dangling_intro(parts: list[tuple[str, str]]) -> None:
    """"Encoding basic objects:" without its example: its last sentence goes."""
    if parts and parts[-1][0] == "prose" and ending(parts[-1][1]) == "colon":
        shorter = without_last_sentence(parts[-1][1])
        if shorter:
            parts[-1] = ("prose", shorter)
        else:
            parts.pop()


def _end_cleanly(parts: list[tuple[str, str]]) -> None:
    """Trailing subheadings go; trailing prose that ends on ":" or a fragment is shortened to
    its last sentence end, or goes."""
    while parts:
        kind, text = parts[-1]
        if kind == "heading":
            parts.pop()
        elif kind == "prose" and ending(text) in ("colon", "mid_sentence"):
            shorter = without_last_sentence(text)
            if shorter and ending(shorter) not in ("colon", "mid_sentence"):
                parts[-1] = ("prose", shorter)
            else:
                parts.pop()
        else:
            return


class SectionPairer:
    def __init__(self, settings: dict, repeated_headings: frozenset[str] = frozenset()):
        self.template = compile_template(settings["instruction_template"])
        self.max_level = settings["max_heading_level"]
        self.keep_code = settings["keep_code"]
        self.max_chars = settings["response_max_chars"]
        self.min_chars = settings["response_min_chars"]
        self.repeated = repeated_headings

    def pairs(self, doc: dict, dropped: Counter) -> Iterator[dict]:
        title = page_title(doc.get("title") or "")
        for section, blocks in section_groups(doc["sections"], self.max_level):
            heading = section["heading"] or title
            if not heading:
                dropped["no_heading"] += 1
                continue
            response = build_response(blocks, self.keep_code, self.max_chars)
            if len(response) < self.min_chars:
                dropped["short_section"] += 1
                continue
            instruction = self.instruction(heading, title, section["heading_path"], doc)
            if not instruction:
                dropped["empty_instruction"] += 1
                continue
            yield {"instruction": instruction, "response": response,
                   "provenance": {"document_id": doc.get("id"), "url": doc.get("url"),
                                  "heading_path": section["heading_path"],
                                  "instruction_source": "template"}}

    def instruction(self, heading: str, title: str, path: list[str], doc: dict) -> str:
        title = title or heading
        # The nearest enclosing heading that is itself a subject ("Command-line options" under
        # "Command-Line Interface" under "json": json).
        parent = next((h for h in reversed(path[:-1]) if h and h != heading
                       and not is_generic(h, self.repeated)), title)
        generic = is_generic(heading, self.repeated) and parent != heading
        topic = f"{heading} for {parent}" if generic else heading
        kind, name = heading_kind(heading, title)
        text = render(self.template, TEMPLATE_SETTING,
                      f"document {doc.get('id')}, section {heading!r}", heading=heading,
                      title=title, heading_path=path, url=doc.get("url") or "", parent=parent,
                      generic=generic, topic=topic, kind=kind, name=name)
        return _WHITESPACE.sub(" ", text).strip()
