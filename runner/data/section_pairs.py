"""heading_sections pairing: a section's heading (through a Jinja template) -> its body text."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator

from runner.data.sentences import cut_at_sentence_end
from runner.data.text_rules import clean_heading
from runner.errors import StepError

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


def compile_template(source: str):
    """A sandboxed Jinja template (no attribute tricks, undefined names are errors)."""
    from jinja2 import StrictUndefined, TemplateError
    from jinja2.sandbox import SandboxedEnvironment

    env = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
    variables = "heading, title, heading_path, url"
    try:
        template = env.from_string(source)
        template.render(heading="Heading", title="Title", heading_path=["Title", "Heading"],
                        url="https://example.org/page")
    except TemplateError as exc:
        line = f" (line {exc.lineno})" if getattr(exc, "lineno", None) else ""
        raise StepError(f"{TEMPLATE_SETTING}: {exc.message or exc}{line}; the template may use "
                        f"{variables}, e.g. \"What is {{{{ heading }}}} in {{{{ title }}}}?\"") from None
    return template


def _groups(sections: list[dict], max_level: int) -> Iterator[tuple[dict, list[dict]]]:
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
    """Paragraphs (and code blocks when kept) up to `limit` characters; prose is cut at a
    sentence end, a code block is never cut (half a code block teaches broken code): one that
    does not fit is left out."""
    parts: list[str] = []
    kinds: list[str] = []
    used = 0
    for block in blocks:
        if "code" in block and not keep_code:
            continue
        text = _render_block(block)
        separator = 2 if parts else 0       # the blank line between paragraphs
        room = limit - used - separator
        if len(text) <= room:
            parts.append(text)
            kinds.append("heading" if "heading" in block else "body")
            used += separator + len(text)
            continue
        if "code" in block:
            continue                        # too long to keep whole: leave it out
        if "text" in block and room > 40:
            parts.append(cut_at_sentence_end(text, room))
            kinds.append("body")
        break
    while kinds and kinds[-1] == "heading":   # a subheading without its text says nothing
        kinds.pop()
        parts.pop()
    return "\n\n".join(parts)


class SectionPairer:
    def __init__(self, settings: dict):
        self.template = compile_template(settings["instruction_template"])
        self.max_level = settings["max_heading_level"]
        self.keep_code = settings["keep_code"]
        self.max_chars = settings["response_max_chars"]
        self.min_chars = settings["response_min_chars"]

    def pairs(self, doc: dict, dropped: Counter) -> Iterator[dict]:
        title = page_title(doc.get("title") or "")
        for section, blocks in _groups(doc["sections"], self.max_level):
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
                                  "heading_path": section["heading_path"]}}

    def instruction(self, heading: str, title: str, path: list[str], doc: dict) -> str:
        from jinja2 import TemplateError
        try:
            text = self.template.render(heading=heading, title=title or heading,
                                        heading_path=path, url=doc.get("url") or "")
        except TemplateError as exc:
            raise StepError(f"{TEMPLATE_SETTING}: {exc} (document {doc.get('id')}, section "
                            f"{heading!r})") from None
        return _WHITESPACE.sub(" ", text).strip()
