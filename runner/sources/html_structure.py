"""Documentation HTML made plain before markdown: admonitions, footnotes, API entries, code.

Generators mark these with classes (Sphinx, DocBook XSL, MkDocs all do); left alone they
become furniture in the text - a "Note" line, a "[1]" marker, a "Footnotes" heading, `***`
from a keyword-only marker in a signature, a definition list as `:   ` lines:
  - an admonition (class note / warning / tip / seealso / ...) loses its title element and its
    first paragraph starts with "Title:" instead;
  - footnote references and footnote lists (with their "Footnotes" rubric) are dropped;
  - an API entry (Sphinx `dt.sig`) becomes its signature as inline code, then its description;
    any other definition list becomes a list of "term: definition" items;
  - code inside code is flattened (DocBook nests `<code>` in `<code>`), and a code block takes
    its language from the generator's highlight class (`highlight-python3` -> python);
  - a DocBook reference page's name heading is the page's top heading; its tables of contents go.
"""

from __future__ import annotations

import re

ADMONITION_CLASSES = frozenset("""note notes warning tip caution important seealso hint attention
    danger error admonition todo""".split())
TITLE_XPATH = ("./*[self::h1 or self::h2 or self::h3 or self::h4 or self::h5 or self::h6 or "
               "contains(concat(' ', normalize-space(@class), ' '), ' admonition-title ') or "
               "contains(concat(' ', normalize-space(@class), ' '), ' title ')][1]")
FOOTNOTE_ROLES = frozenset(["doc-noteref", "doc-endnotes", "doc-footnote"])
DOCBOOK_FURNITURE = frozenset(["toc", "navheader", "navfooter"])
LANGUAGES = {"python3": "python", "python": "python", "py": "python", "default": "python",
             "pycon": "pycon", "pycon3": "pycon", "shell-session": "console",
             "console": "console", "sh": "bash", "bash": "bash", "none": "", "text": ""}
_HIGHLIGHT = re.compile(r"\bhighlight-([\w+-]+)")
_SPACES = re.compile(r"\s+")
CLOSING = ").,;:!?"


def _classes(element) -> set[str]:
    return set((element.get("class") or "").split())


def simplify(root) -> None:
    """Rewrite the structures above in place (call before attributes are dropped). One XPath
    finds the elements with a class; the rest is set lookups (these pages have thousands)."""
    footnotes, highlighted, admonitions, furniture = [], [], [], []
    for element in root.xpath(".//*[@class or @role]"):
        classes = _classes(element)
        if any(c.startswith("footnote") for c in classes) or element.get("role") in FOOTNOTE_ROLES:
            footnotes.append(element)
        elif "rubric" in classes and _text(element).lower() in ("footnotes", "notes"):
            footnotes.append(element)
        elif classes & DOCBOOK_FURNITURE:
            furniture.append(element)
        elif classes & ADMONITION_CLASSES and element.tag in ("div", "aside", "section"):
            admonitions.append(element)
        if any(c.startswith("highlight-") for c in classes):
            highlighted.append(element)
        if "refnamediv" in classes:
            for heading in element.iter("h2"):
                heading.tag = "h1"         # a DocBook reference page's name is its title
    for element in footnotes + furniture:
        if element.getparent() is not None:
            _drop_keeping_tail(element)
    _code_languages(highlighted)
    _flatten_nested_code(root)
    for element in admonitions:
        if element.getparent() is not None:
            _admonition(element)
    for dl in list(root.iter("dl")):
        _definition_list(dl)


def _drop_keeping_tail(element) -> None:
    """drop_tree, leaving no space before the punctuation that followed: "word )." -> "word).\""""
    tail = element.tail or ""
    if tail.strip()[:1] in tuple(CLOSING):
        element.tail = tail.lstrip()
        previous, parent = element.getprevious(), element.getparent()
        if previous is not None and previous.tail:
            previous.tail = previous.tail.rstrip()
        elif previous is None and parent is not None and parent.text:
            parent.text = parent.text.rstrip()
    element.drop_tree()


def _code_languages(wrappers: list) -> None:
    for wrapper in wrappers:
        match = _HIGHLIGHT.search(wrapper.get("class") or "")
        language = LANGUAGES.get(match.group(1), match.group(1)) if match else ""
        for pre in wrapper.iter("pre"):
            if language:
                pre.set("data-lang", language)


def _flatten_nested_code(root) -> None:
    from lxml import etree

    # Outer elements come first: stripping one flattens (and detaches) those inside it.
    for code in list(root.iter("pre", "code")):
        etree.strip_tags(code, "code", "em", "strong", "b", "i", "var", "tt", "samp")
    # <em><code>x</code></em>: emphasis around code adds only `*` marks.
    for em in list(root.iter("em")):
        if (len(em) == 1 and em[0].tag == "code" and not (em.text or "").strip()
                and not (em[0].tail or "").strip() and em.getparent() is not None):
            em.drop_tag()


def _admonition(element) -> None:
    found = element.xpath(TITLE_XPATH)
    if not found:
        return
    title_element = found[0]
    title = _text(title_element).rstrip(":")
    title_element.drop_tree()
    if not title:
        return
    first = next((child for child in element if isinstance(child.tag, str)), None)
    label = element.makeelement("strong", {})
    label.text = f"{title}:"
    if first is not None and first.tag == "p":
        label.tail = " " + (first.text or "").lstrip()
        first.text = None
        first.insert(0, label)
    else:
        paragraph = element.makeelement("p", {})
        paragraph.append(label)
        element.insert(0, paragraph)


def _definition_list(dl) -> None:
    """dl -> API entries (signature as code, then description) or a list of term: definition."""
    from lxml import etree

    if dl.getparent() is None:
        return
    api = any("sig" in _classes(dt) for dt in dl.iter("dt"))
    replacement = dl.makeelement("div" if api else "ul", {})
    item = None
    for child in list(dl):
        if child.tag == "dt":
            if api:
                signature = etree.SubElement(etree.SubElement(replacement, "p"), "code")
                signature.text = _text(child)
            else:
                item = etree.SubElement(replacement, "li")
                term = etree.SubElement(item, "code" if _all_code(child) else "strong")
                term.text = _text(child)
                term.tail = ": "
        elif child.tag == "dd":
            target = replacement if api else (item if item is not None
                                              else etree.SubElement(replacement, "li"))
            _move_definition(child, target, inline_first=not api)
    replacement.tail = dl.tail
    dl.getparent().replace(dl, replacement)


def _move_definition(dd, target, inline_first: bool) -> None:
    """The dd's content into target; in a list item, a first paragraph joins the term's line."""
    from lxml import etree

    if (dd.text or "").strip():
        loose = etree.SubElement(target, "span" if inline_first else "p")
        loose.text = dd.text.lstrip()
    elif inline_first and len(dd) and dd[0].tag == "p":
        dd[0].tag = "span"
        dd[0].text = (dd[0].text or "").lstrip()
    for child in list(dd):
        target.append(child)


def _all_code(element) -> bool:
    """Is every visible character of the element inside <code> (a term that names an API)?"""
    text = _text(element)
    in_code = "".join(code.text_content() for code in element.xpath(".//code[not(ancestor::code)]"))
    return bool(text) and _SPACES.sub("", text) == _SPACES.sub("", in_code)


def _text(element) -> str:
    return _SPACES.sub(" ", element.text_content().replace("¶", " ")).strip()
