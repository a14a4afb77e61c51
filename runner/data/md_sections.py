"""Markdown -> heading sections, each a list of prose and fenced-code blocks.

ATX (`## Title`) and setext (`Title` over `===`/`---`) headings start sections; `#` lines inside
fenced code are code, not headings. Code blocks are set aside before the text rules run, so a
pairing strategy can keep them verbatim.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass, field

# One pass over the lines that matter: fence lines, ATX headings, setext underlines.
_STRUCTURE = re.compile(
    r"^(?P<fence>[ \t]*(?P<fchars>`{3,}|~{3,})(?P<info>[^\n]*))$"
    r"|^(?P<atx> {0,3}(?P<hashes>#{1,6})(?:[ \t]+(?P<title>[^\n]*?))?[ \t#]*)$"
    r"|^(?P<setext>(?P<stitle>[^\n]+)\n {0,3}(?P<under>=+|-+)[ \t]*)$",
    re.MULTILINE)


@dataclass
class RawSection:
    heading: str              # raw heading text ("" for the text before the first heading)
    level: int                # 1-6; 0 for the text before the first heading
    blocks: list[tuple[str, str, str]] = field(default_factory=list)  # (kind, text, lang)


def _is_setext(text: str, match: re.Match) -> bool:
    title = match.group("stitle")
    if not title.strip():
        return False
    # A list item or a table/quote line over `---` is a thematic break, not a heading.
    return not re.match(r" {0,3}([-*+>|]|\d+[.)])(\s|$)", title) and not title.startswith("    ")


def split_sections(markdown: str) -> list[RawSection]:
    sections = [RawSection("", 0)]
    prose_start, fence, fence_start, fence_lang = 0, None, 0, ""

    def add_prose(end: int) -> None:
        if markdown[prose_start:end].strip():
            sections[-1].blocks.append(("text", markdown[prose_start:end], ""))

    for match in _STRUCTURE.finditer(markdown):
        if match.group("fence") is not None:
            chars = match.group("fchars")
            if fence is None:
                add_prose(match.start())
                info = match.group("info").strip()
                fence, fence_start, fence_lang = chars, match.end() + 1, info.split(" ")[0]
            elif chars[0] == fence[0] and len(chars) >= len(fence) and not match.group("info").strip():
                code = textwrap.dedent(markdown[fence_start:match.start()]).strip("\n")
                sections[-1].blocks.append(("code", code, fence_lang))
                fence, prose_start = None, match.end()
            continue
        if fence is not None:
            continue
        if match.group("atx") is not None:
            heading, level = match.group("title") or "", len(match.group("hashes"))
        elif _is_setext(markdown, match):
            heading, level = match.group("stitle"), 1 if match.group("under")[0] == "=" else 2
        else:
            continue
        add_prose(match.start())
        sections.append(RawSection(heading.strip(), level))
        prose_start = match.end()
    if fence is not None:   # an unclosed fence runs to the end of the document
        code = textwrap.dedent(markdown[fence_start:]).strip("\n")
        sections[-1].blocks.append(("code", code, fence_lang))
    else:
        add_prose(len(markdown))
    return [s for s in sections if s.level or s.blocks]


def heading_paths(sections: list, headings: list[str]) -> list[list[str]]:
    """Each section's path of (cleaned) headings from the top level down to itself."""
    stack: list[tuple[int, str]] = []
    paths = []
    for section, heading in zip(sections, headings, strict=True):
        while stack and stack[-1][0] >= section.level:
            stack.pop()
        if section.level:
            stack.append((section.level, heading))
        paths.append([h for _, h in stack])
    return paths
