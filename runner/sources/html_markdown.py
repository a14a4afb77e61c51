"""HTML page -> (title, markdown), keeping headings as `#` lines for heading-based pairing.

With `main_content`, a page that marks its main content (`<main>`, `role="main"`, a single
`<article>`: Sphinx, MkDocs, most documentation generators) is cut to that element, then
navigation, sidebars, footers, forms and scripts inside it are dropped and the rest goes
through markdownify, which keeps code blocks and definition lists intact. A page without such
a marker goes through trafilatura's boilerplate detection instead; a DocBook XSL page (its
generator meta tag says so) is its body without the navigation header and footer.
Documentation structures (admonitions, footnotes, API entries, code languages) are made plain
first (html_structure.py). A page that cannot be converted raises ConversionError with a reason
(the local source counts them per reason); XHTML's `<?xml ...?>` declaration is not a failure.
"""

from __future__ import annotations

import re

# Never text: code that runs, styles, and Sphinx's `¶` permalinks (`a.headerlink`).
NEVER_TEXT_XPATH = (".//script | .//style | .//noscript | .//template"
                    " | .//a[contains(concat(' ', normalize-space(@class), ' '), ' headerlink ')]")
# Inside the main element: page furniture that is not content.
FURNITURE_XPATH = (".//nav | .//footer | .//aside | .//form | .//*[@role='navigation']"
                   " | .//*[@role='search'] | .//*[@role='contentinfo']")
# The attributes markdownify reads (list numbering, table cell spans); the rest only cost time.
KEPT_ATTRIBUTES = ("start", "colspan", "data-lang")
MAIN_XPATH = "//main | //*[@role='main']"
DOCBOOK_XPATH = "//meta[@name='generator' and starts-with(@content, 'DocBook')]"
# lxml refuses a str that declares its encoding; the text is already decoded, so it says nothing.
XML_DECLARATION = re.compile(r"^\ufeff?\s*<\?xml[^>]*\?>")
BLANK_RUNS = re.compile(r"\n{3,}")
TRAILING_PILCROW = re.compile(r"[ \t]*¶+[ \t]*$")


class ConversionError(Exception):
    """A page that could not be converted; `reason` is a short name counted per reason."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def html_to_markdown(html: str, main_content: bool = True) -> tuple[str, str]:
    """Convert one HTML page; returns (title, markdown). Empty markdown when nothing is left."""
    import lxml.etree
    import lxml.html

    html = XML_DECLARATION.sub("", html, count=1)
    if not html.strip():
        return "", ""
    try:
        tree = lxml.html.fromstring(html)
    except (lxml.etree.ParserError, ValueError) as exc:
        raise ConversionError("html_parse_error", f"{type(exc).__name__}: {exc}") from None
    page_title = _page_title(tree)
    root = _main_element(tree) if main_content else tree.find("body")
    if root is None and main_content:
        markdown = _trafilatura_markdown(html)
        if markdown:
            return _first_heading(markdown) or page_title, markdown
        root = tree.find("body")
    if root is None:
        root = tree
    noise = f"{NEVER_TEXT_XPATH} | {FURNITURE_XPATH}" if main_content else NEVER_TEXT_XPATH
    for element in root.xpath(noise):
        element.drop_tree()
    from runner.sources.html_structure import simplify

    simplify(root)
    _flatten(root)
    title = _heading_title(root) or page_title
    try:
        return title, _markdownify(lxml.html.tostring(root, encoding="unicode"))
    except RecursionError:
        raise ConversionError("too_deeply_nested", "the page nests elements deeper than the "
                              "markdown converter can follow") from None


def _flatten(root) -> None:
    """Unwrap tags that only style text (highlighting spans, links - only their text is kept)
    and drop attributes.

    Syntax-highlighted code is one <span> per token: doing this here, in C, halves what
    BeautifulSoup and markdownify then walk in Python. The markdown is unchanged.
    """
    from lxml import etree
    etree.strip_tags(root, "span", "a", "font", "abbr", "bdi", "wbr")
    for element in root.iter():
        kept = {k: v for k, v in element.attrib.items() if k in KEPT_ATTRIBUTES}
        element.attrib.clear()
        element.attrib.update(kept)


def _main_element(tree):
    found = tree.xpath(MAIN_XPATH)
    if found:
        return found[0]
    if tree.xpath(DOCBOOK_XPATH) and tree.find("body") is not None:
        return tree.find("body")     # html_structure drops its navigation header and footer
    articles = tree.xpath("//article")
    return articles[0] if len(articles) == 1 else None


def _page_title(tree) -> str:
    titles = tree.xpath("//title")
    return _clean_text(titles[0].text_content()) if titles else ""


def _heading_title(root) -> str:
    headings = root.xpath(".//h1")
    return _clean_text(headings[0].text_content()) if headings else ""


def _clean_text(text: str) -> str:
    return " ".join(text.replace("¶", " ").split())


def _first_heading(markdown: str) -> str:
    for line in markdown.splitlines():
        if line.startswith("#"):
            return line.lstrip("#").strip()
    return ""


def _markdownify(html: str) -> str:
    from markdownify import ATX, MarkdownConverter

    # Escaping `_` and `*` would turn every `__init__` into `\_\_init\_\_` in the training text.
    converter = MarkdownConverter(heading_style=ATX, bullets="-", strip=["img"],
                                  bs4_options="lxml", escape_underscores=False,
                                  escape_asterisks=False, escape_misc=False,
                                  code_language_callback=lambda pre: pre.get("data-lang") or "")
    return tidy_markdown(converter.convert(html))


def _trafilatura_markdown(html: str) -> str:
    import trafilatura

    text = trafilatura.extract(html, output_format="markdown", include_formatting=True,
                               include_tables=True, include_comments=False,
                               include_links=False, include_images=False)
    return tidy_markdown(text or "")


# Code (kept), an escape that keeps a line from being a heading/list/quote (kept), or an escape.
_CODE_OR_ESCAPE = re.compile(r"(?ms)^[ \t]*(```|~~~).*?^[ \t]*\1[ \t]*$|(`+).+?\2"
                             r"|^[ \t]*\\[#>+*-]"
                             r"|\\([!\"#$%&'()*+,\-./:;<=>?@\[\]^_`{}~])")


def unescape_markdown(markdown: str) -> str:
    """`SPI\\_execute` -> `SPI_execute` outside code: escapes only matter to a markdown renderer,
    and in training text they are noise the model would learn to write. Kept: `\\|` (a pipe in
    a table cell) and an escape at a line's start that stops it from becoming a heading or list."""
    return _CODE_OR_ESCAPE.sub(lambda m: m.group(3) if m.group(3) else m.group(0), markdown)


def tidy_markdown(markdown: str) -> str:
    """Unescape markdown escapes outside code, drop trailing pilcrows from headings and
    trailing spaces, put a blank line after each code fence that closes (trafilatura glues the
    next paragraph to it), squeeze blank runs."""
    lines: list[str] = []
    in_fence = False
    for line in unescape_markdown(markdown).splitlines():
        if lines and not in_fence and lines[-1].startswith("```") and line.strip():
            lines.append("")          # the previous line closed a fence
        if line.startswith("```"):
            in_fence = not in_fence
        lines.append(TRAILING_PILCROW.sub("", line) if line.startswith("#") and not in_fence
                     else line.rstrip())
    text = BLANK_RUNS.sub("\n\n", "\n".join(lines)).strip()
    return text + "\n" if text else ""
