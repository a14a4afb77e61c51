"""Documentation structure made plain at the source: XHTML with an XML declaration, admonitions,
footnotes, API entries and definition lists, code languages, DocBook pages; reST/docstring
doctests and roles; converter failures counted per reason; a sources step with no document."""

from __future__ import annotations

import pytest
from sources_support import make_ctx, run_sources

from runner.errors import StepError
from runner.sources.html_markdown import html_to_markdown
from runner.sources.pydoc_source import module_markdown
from runner.sources.rst_markdown import rst_to_markdown

XHTML = """<?xml version="1.0" encoding="UTF-8" standalone="no"?>
<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Transitional//EN" "http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd">
<html xmlns="http://www.w3.org/1999/xhtml"><head><title>SPI_exec</title>
<meta name="generator" content="DocBook XSL Stylesheets Vsnapshot" /></head><body>
<div class="navheader"><table><tr><th>SPI_exec</th></tr><tr><td><a href="p.html">Prev</a></td></tr></table></div>
<div class="refentry"><div class="refnamediv"><h2><span class="refentrytitle">SPI_exec</span></h2>
<p>SPI_exec — execute a read/write command</p></div>
<div class="refsect1"><h2>Arguments</h2><div class="variablelist"><dl class="variablelist">
<dt><span class="term"><code class="literal">const char * <em class="parameter"><code>command</code></em></code></span></dt>
<dd><p>string containing command to execute</p></dd></dl></div>
<div class="note"><h3 class="title">Note</h3><p>The <code class="function">SPI_exec</code> name is kept for compatibility.<a href="#ftn.x" class="footnote"><sup class="footnote">[1]</sup></a></p></div>
</div><div class="footnotes"><p><sup>[1] </sup>An old name.</p></div></div>
<div class="navfooter"><a href="n.html">Next</a></div></body></html>
"""

SPHINX = """<html><head><title>json — Python 3.11 documentation</title></head><body>
<div class="body" role="main"><section><h1>json</h1>
<p>A strict subset of JavaScript <a class="footnote-reference brackets" href="#f1">[1]</a>).</p>
<div class="admonition seealso"><p class="admonition-title">See also</p><p>The pickle module.</p></div>
<dl class="py function"><dt class="sig sig-object py"><span class="sig-name">dumps</span>(<em class="sig-param">obj</em>, <em class="sig-param">*</em>, <em>indent=None</em>)<a class="headerlink">¶</a></dt>
<dd><p>Serialize <em>obj</em> to a string.</p>
<div class="highlight-pycon"><div class="highlight"><pre>&gt;&gt;&gt; dumps(1)
'1'</pre></div></div></dd></dl>
<p class="rubric">Footnotes</p>
<aside class="footnote-list brackets"><aside class="footnote brackets" id="f1"><p>See the errata.</p></aside></aside>
</section></div></body></html>"""


def test_xhtml_with_an_xml_declaration_converts_docbook_made_plain():
    title, markdown = html_to_markdown(XHTML)
    assert title == "SPI_exec"
    assert markdown.startswith("# SPI_exec\n\nSPI_exec — execute a read/write command\n\n## Arguments")
    assert "- `const char * command`: string containing command to execute" in markdown
    assert "**Note:** The `SPI_exec` name is kept for compatibility." in markdown
    for furniture in ("Prev", "Next", "[1]", "An old name", "\nNote\n"):
        assert furniture not in markdown


def test_sphinx_admonitions_footnotes_signatures_and_code_language():
    _, markdown = html_to_markdown(SPHINX)
    assert "A strict subset of JavaScript)." in markdown          # marker gone, no space left
    assert "**See also:** The pickle module." in markdown
    assert "`dumps(obj, *, indent=None)`\n\nSerialize *obj* to a string." in markdown
    assert "```pycon\n>>> dumps(1)\n'1'\n```" in markdown
    assert "Footnotes" not in markdown and "errata" not in markdown and ":   " not in markdown


def test_docstring_doctests_are_fenced_and_their_comments_never_headings():
    import collections

    markdown = module_markdown(collections)
    assert "# Knuth's example for prime factors of 1836:  2**2 * 3**3 * 17**1" in markdown
    start = markdown.index("### Counter.elements()")
    section = markdown[start:markdown.index("###", start + 3)]
    assert "```pycon\n>>> c = Counter('ABCABC')" in section
    assert "\n# Knuth" in section and section.index("```pycon") < section.index("# Knuth")
    from runner.data.md_sections import split_sections
    headings = [s.heading for s in split_sections(markdown)]
    assert not any("Knuth" in heading for heading in headings)


def test_rst_doctests_roles_admonitions_and_footnotes():
    markdown = rst_to_markdown("Title\n=====\n\nUse :func:`dumps` [#]_ here.\n\n"
                               "    >>> dumps(1)\n    '1'\n\n.. note::\n\n   Mind the gap.\n\n"
                               ".. [#] a footnote\n", top_level=2)
    assert markdown == ("## Title\n\nUse `dumps` here.\n\n```pycon\n>>> dumps(1)\n'1'\n```\n\n"
                        "**Note:** Mind the gap.\n")


def test_conversion_failures_are_counted_per_reason_and_zero_documents_fail(tmp_path):
    (tmp_path / "docs").mkdir()
    for name in ("a", "b"):
        (tmp_path / "docs" / f"{name}.html").write_text("<html><body><p>Text.</p></body></html>")
    entry = {"type": "local", "paths": ["docs/*.html"], "encoding": "no-such-codec"}
    with pytest.raises(StepError) as error:
        run_sources(make_ctx(tmp_path, [entry]))
    message = str(error.value)
    assert "no document was written" in message
    assert "sources[0] (local): 2 read; conversion failed: unknown_encoding x2" in message
    assert "First failure: docs/a.html: unknown_encoding" in message


def test_pages_without_text_are_reported_not_written(tmp_path):
    (tmp_path / "empty.html").write_text("<html><body><script>var menu = 1;</script></body></html>")
    with pytest.raises(StepError, match=r"1 read; conversion failed: no text left x1"):
        run_sources(make_ctx(tmp_path, [{"type": "local", "paths": ["empty.html"]}]))


def test_failed_pages_are_outcomes_while_the_others_become_documents(tmp_path):
    (tmp_path / "good.html").write_text("<html><body><main><h1>Good</h1><p>Text here.</p></main></body></html>")
    (tmp_path / "bad.html").write_bytes(b"<?xml version='1.0'?><!-- nothing else -->")
    metrics, docs, outcomes = run_sources(make_ctx(tmp_path, [
        {"type": "local", "paths": ["good.html", "bad.html"]}]))
    assert [d["path"] for d in docs] == ["good.html"]
    assert metrics["entries"][0]["conversion_failed_by_reason"] == {"html_parse_error": 1}
    assert outcomes == [{"entry": 0, "source": "local", "path": "bad.html", "status": "failed",
                         "reason": "html_parse_error", "detail": outcomes[0]["detail"]}]


def test_markdown_escapes_are_undone_outside_code_at_the_source():
    from runner.sources.html_markdown import tidy_markdown

    text = "SPI\\_execute\\_plan \\[ OUTPUT \\] `a\\_b`\n\\# not a heading\n| a \\| b |\n```\nx\\_y\n```\n"
    assert tidy_markdown(text) == ("SPI_execute_plan [ OUTPUT ] `a\\_b`\n\\# not a heading\n"
                                   "| a \\| b |\n```\nx\\_y\n```\n")
