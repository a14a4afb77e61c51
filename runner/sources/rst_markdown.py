"""reStructuredText -> markdown, enough for training text: `#` headings, fenced code, plain roles.

Doctest blocks (`>>>` lines, with the `#` comment lines just above them) become fenced `pycon`
code, indented or not: left as prose, whitespace rules would squash them onto one line and a
comment would read as a markdown heading.

Why not docutils: real-world .rst (Sphinx docs, CPython's Doc/) is full of Sphinx-only
directives and roles that docutils reports as errors inside the output. This keeps what carries
meaning - section titles (levels in order of first appearance, as reST defines them), code
blocks, paragraphs, lists - and reduces markup to its text.
"""

from __future__ import annotations

import re

ADORNMENT = re.compile(r"^([!-/:-@\[-`{-~])\1{2,}\s*$")       # a line of one punctuation char
DIRECTIVE = re.compile(r"^\.\.\s+([\w:-]+)::\s*(.*)$")
CODE_DIRECTIVES = {"code-block", "code", "sourcecode", "highlight", "doctest", "testcode"}
DROPPED_DIRECTIVES = {"index", "toctree", "image", "figure", "raw", "include", "only",
                      "highlight", "currentmodule", "module", "moduleauthor", "sectionauthor",
                      "contents", "meta", "literalinclude"}
ADMONITIONS = {"note": "Note", "warning": "Warning", "tip": "Tip", "hint": "Hint",
               "important": "Important", "caution": "Caution", "danger": "Danger",
               "attention": "Attention", "error": "Error", "seealso": "See also",
               "admonition": "Note"}
FOOTNOTE_REFERENCE = re.compile(r"\s?\[(?:#\w*|\*|\d+)\]_")
ROLE = re.compile(r":[\w:+-]+:`([^`]*)`")
LINK = re.compile(r"`([^`<]+?)\s*<[^>]*>`_{1,2}")
REFERENCE = re.compile(r"`([^`]+)`_{1,2}")
LITERAL = re.compile(r"``([^`]+)``")


def rst_to_markdown(text: str, top_level: int = 1) -> str:
    """The markdown of a reST text; its first heading style becomes level `top_level` (a
    docstring under a `## name()` heading starts at 3)."""
    lines = text.expandtabs(4).splitlines()
    out: list[str] = []
    levels: list[str] = []
    i = 0
    while i < len(lines):
        heading = _heading_at(lines, i)
        if heading:
            title, style, used = heading
            if style not in levels:
                levels.append(style)
            out += ["", "#" * min(6, levels.index(style) + top_level) + " " + _inline(title), ""]
            i += used
            continue
        if _starts_doctest(lines, i):
            block, i = _doctest_block(lines, i)
            out += ["", "```pycon", *block, "```", ""]
            continue
        line = lines[i]
        directive = DIRECTIVE.match(line.strip()) if not line.startswith(" ") else None
        if directive or line.strip().startswith(".. "):
            i = _directive(lines, i, directive, out)
            continue
        if line.rstrip().endswith("::") and _indented_follows(lines, i + 1):
            paragraph_end = line.rstrip()[:-2].rstrip()
            out.append(_inline(paragraph_end + (":" if paragraph_end else "")))
            block, i = _indented_block(lines, i + 1)
            block = _trim(block)
            language = "pycon" if block and block[0].lstrip().startswith(">>>") else ""
            out += ["", f"```{language}", *block, "```", ""]
            continue
        out.append(_inline(line.rstrip()))
        i += 1
    return re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip() + "\n"


def _starts_doctest(lines: list[str], i: int) -> bool:
    """A `>>>` line, or `#` comment lines directly above one."""
    while i < len(lines) and lines[i].lstrip().startswith("#") and not lines[i].lstrip().startswith(">>>"):
        i += 1
    return i < len(lines) and lines[i].lstrip().startswith(">>>")


def _doctest_block(lines: list[str], i: int) -> tuple[list[str], int]:
    """The doctest starting at line i, dedented; doctest paragraphs that follow one another
    (blank lines between) are one block."""
    indent = len(lines[i]) - len(lines[i].lstrip())
    block: list[str] = []
    while i < len(lines):
        while i < len(lines) and lines[i].strip():
            block.append(lines[i][indent:] if lines[i][:indent].isspace() else lines[i].strip())
            i += 1
        following = i
        while following < len(lines) and not lines[following].strip():
            following += 1
        same_indent = following < len(lines) and (
            len(lines[following]) - len(lines[following].lstrip()) == indent)
        if not (same_indent and _starts_doctest(lines, following)):
            break
        block.append("")
        i = following
    return block, i


def _heading_at(lines: list[str], i: int):
    """(title, style, lines used) when a section title starts at line i."""
    line = lines[i]
    over = ADORNMENT.match(line)
    if over and i + 2 < len(lines) and lines[i + 1].strip():
        under = ADORNMENT.match(lines[i + 2])
        if under and under.group(1) == over.group(1):
            return lines[i + 1].strip(), "over" + over.group(1), 3
    if line.strip() and not line.startswith(" ") and i + 1 < len(lines) and not over:
        under = ADORNMENT.match(lines[i + 1])
        if under and len(lines[i + 1].rstrip()) >= len(line.rstrip()):
            return line.strip(), under.group(1), 2
    return None


def _directive(lines: list[str], i: int, directive, out: list[str]) -> int:
    name = directive.group(1) if directive else ""
    argument = directive.group(2).strip() if directive else ""
    block, end = _indented_block(lines, i + 1)
    body = [b for b in block if not re.match(r"^:[\w-]+:", b.strip())]    # directive options
    if name in CODE_DIRECTIVES and name != "highlight":
        language = argument.split()[0] if argument else ""
        out += ["", f"```{language}", *_trim(body), "```", ""]
    elif name in ADMONITIONS:
        # "Note: first line ...": a lone "Note" line would read as furniture.
        text = [_inline(b) for b in _trim(body)] or [""]
        title = argument if name == "admonition" and argument else ADMONITIONS[name]
        out += ["", f"**{title}:** {text[0]}".rstrip(), *text[1:], ""]
    elif name and name not in DROPPED_DIRECTIVES:
        # versionadded, function, class...: keep the words, drop the markup.
        if argument:
            out += ["", _inline(argument)]
        out += ["", *(_inline(b) for b in _trim(body)), ""]
    return end


def _indented_follows(lines: list[str], i: int) -> bool:
    while i < len(lines) and not lines[i].strip():
        i += 1
    return i < len(lines) and lines[i].startswith((" ", "\t"))


def _indented_block(lines: list[str], i: int) -> tuple[list[str], int]:
    block = []
    while i < len(lines) and (not lines[i].strip() or lines[i].startswith((" ", "\t"))):
        block.append(lines[i])
        i += 1
    while block and not block[-1].strip():
        block.pop()
    indent = min((len(b) - len(b.lstrip()) for b in block if b.strip()), default=0)
    return [b[indent:] for b in block], i


def _trim(block: list[str]) -> list[str]:
    while block and not block[0].strip():
        block = block[1:]
    return block


def _inline(line: str) -> str:
    line = FOOTNOTE_REFERENCE.sub("", line)
    line = LITERAL.sub(r"`\1`", line)
    line = ROLE.sub(lambda m: f"`{_role_text(m.group(1))}`", line)
    line = LINK.sub(r"\1", line)
    return REFERENCE.sub(r"\1", line)


def _role_text(text: str) -> str:
    # :func:`title <target>` shows the title; a leading ~ or ! only changes the link.
    match = re.match(r"^(.*?)\s*<[^>]*>$", text)
    return (match.group(1) if match else text).lstrip("~!")
