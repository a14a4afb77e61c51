"""The cleaning, pairing and validation steps, run through the registry on crafted documents."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from runner.artifacts import read_json, read_jsonl, write_jsonl
from runner.errors import StepError
from runner.registry import StepContext, lookup
from runner.validate import fill_defaults, schema

DATA_STEPS = ("cleaning", "pairing", "validation")


def run_data_steps(root: Path, documents, sections: dict | None = None,
                   until: str = "validation") -> Path:
    """sources/documents.jsonl <- documents (a list or a path); then each data step in turn,
    with the schema's defaults filled in, as the executor would."""
    (root / "sources").mkdir(parents=True, exist_ok=True)
    target = root / "sources" / "documents.jsonl"
    if isinstance(documents, (str, Path)):
        target.write_bytes(Path(documents).read_bytes())
    else:
        write_jsonl(target, documents)
    upstream = "sources"
    for section in DATA_STEPS:
        settings = copy.deepcopy((sections or {}).get(section, {}))
        fill_defaults(settings, schema()["$defs"][section], top=False)
        out = root / section
        out.mkdir()
        ctx = StepContext(recipe_name="test", step=section, key="k", settings=settings,
                          sections={}, inputs={upstream: root / upstream}, out_dir=out,
                          run_dir=root, cache_dir=root / "cache" / section, recipe_dir=root,
                          quiet=True)
        lookup(section, settings).func(ctx)
        if section == until:
            break
        upstream = section
    return root


def doc(markdown: str, doc_id: str = "d1", **extra) -> dict:
    return {"id": doc_id, "source": "local", "url": f"https://example.org/{doc_id}",
            "path": None, "title": extra.pop("title", "Widgets"), "markdown": markdown,
            "metadata": {}, **extra}


WIDGETS = """# Widgets

Widgets are small reusable parts of an interface, for example buttons. They are described
in [the widget guide](https://example.org/guide) and in <b>many</b> other places.

## Making a `Widget`

You create a widget by calling the constructor with a name and an optional parent widget.

```python
w = Widget("x")
```

The constructor returns the new widget object which you can then configure further.

### Options

Each option is a keyword argument, such as color or size, passed when building it.

## Navigation

Click here to go to the next page of this manual about widgets and their friends.
"""

HEADINGS = {"cleaning": {"keep_headings": True}, "pairing": {"strategy": "heading_sections",
                                                              "response_min_chars": 20}}


def pairs_of(root: Path, step: str = "pairing") -> list[dict]:
    return list(read_jsonl(root / step / "pairs.jsonl"))


def test_cleaning_writes_sentences_and_statistics_per_rule_and_reason(tmp_path):
    root = run_data_steps(tmp_path, [doc(WIDGETS), doc("", "empty")], until="cleaning")
    cleaned = list(read_jsonl(root / "cleaning" / "documents.jsonl"))
    assert [d["id"] for d in cleaned] == ["d1", "empty"]
    assert cleaned[0]["url"] == "https://example.org/d1" and "sections" not in cleaned[0]
    assert any("the widget guide" in s for s in cleaned[0]["sentences"])
    stats = read_json(root / "cleaning" / "stats.json")
    removed = {r["rule"]: r["chars_removed"] for r in stats["rules"]}
    assert removed["strip_html"] == len("<b></b>")
    assert removed["unwrap_md_links"] == len("[](https://example.org/guide)")
    # "Navigation" (the heading) and "Click here ... next" end up in one sentence.
    assert stats["sentences"]["dropped"]["contains: navigation"] == 1
    assert stats["documents"] == 2 and stats["documents_without_text"] == 1


def test_two_workers_give_the_same_documents_in_the_same_order(tmp_path):
    documents = [doc(WIDGETS.replace("Widgets", f"Widgets {i}"), f"d{i}") for i in range(60)]
    one = run_data_steps(tmp_path / "one", documents, HEADINGS, until="cleaning")
    two = run_data_steps(tmp_path / "two", documents,
                         {"cleaning": {"keep_headings": True, "workers": 2}}, until="cleaning")
    assert ((one / "cleaning" / "documents.jsonl").read_bytes()
            == (two / "cleaning" / "documents.jsonl").read_bytes())
    assert read_json(two / "cleaning" / "stats.json")["workers"] == 2


def test_consecutive_sentences_pairs_neighbours_within_a_document(tmp_path):
    text = ("The first sentence is long enough to be kept here. The second sentence follows "
            "right after the first one. Tiny. The third sentence closes this small document.")
    root = run_data_steps(tmp_path, [doc(text)], until="pairing")
    assert [(p["instruction"][:20], p["response"][:20]) for p in pairs_of(root)] == [
        ("The first sentence i", "The second sentence "),
        ("The second sentence ", "The third sentence c")]
    assert pairs_of(root)[0]["provenance"] == {"document_id": "d1",
                                               "url": "https://example.org/d1",
                                               "heading_path": [],
                                               "instruction_source": "document_text"}


def test_heading_sections_needs_cleaning_to_keep_headings(tmp_path):
    with pytest.raises(StepError, match="cleaning.keep_headings: true"):
        run_data_steps(tmp_path, [doc(WIDGETS)], {"pairing": {"strategy": "heading_sections"}})


def test_heading_sections_pairs_each_section_with_its_heading(tmp_path):
    root = run_data_steps(tmp_path, [doc(WIDGETS)], HEADINGS, until="pairing")
    pairs = pairs_of(root)
    assert [p["provenance"]["heading_path"][-1] for p in pairs] == [
        "Widgets", "Making a Widget", "Options", "Navigation"]
    assert pairs[0]["instruction"] == "What does the Python documentation say about Widgets?"
    assert pairs[1]["instruction"] == ("What does the Python documentation say about Making a "
                                       "Widget (Widgets)?")
    making = pairs[1]["response"]
    # Code stays by default, whole and fenced with its language.
    assert '```python\nw = Widget("x")\n```' in making and "constructor returns" in making
    assert "Options" not in making   # level 3 is within max_heading_level: its own section
    assert pairs[3]["provenance"]["heading_path"] == ["Widgets", "Navigation"]


def test_heading_sections_options_code_depth_and_limits(tmp_path):
    settings = {"cleaning": {"keep_headings": True},
                "pairing": {"strategy": "heading_sections", "keep_code": True,
                            "max_heading_level": 2, "response_max_chars": 230,
                            "response_min_chars": 100,
                            "instruction_template": "Explain {{ heading_path | join(' / ') }}"}}
    root = run_data_steps(tmp_path, [doc(WIDGETS)], settings, until="pairing")
    pairs = pairs_of(root)
    assert [p["instruction"] for p in pairs] == ["Explain Widgets",
                                                 "Explain Widgets / Making a Widget"]
    making = pairs[1]["response"]
    assert '```python\nw = Widget("x")\n```' in making
    assert len(making) <= 230 and making.endswith(".")
    assert read_json(root / "pairing" / "stats.json")["dropped"] == {"short_section": 1}


@pytest.mark.parametrize("template, message", [
    ("{{ heading", "pairing.instruction_template: unexpected end of template"),
    ("{{ subject }}", "pairing.instruction_template: 'subject' is undefined"),
    ("{{ heading.__class__.__mro__ }}", "pairing.instruction_template"),
])
def test_a_bad_template_is_a_step_error_naming_the_setting(tmp_path, template, message):
    settings = {"cleaning": {"keep_headings": True},
                "pairing": {"strategy": "heading_sections", "instruction_template": template}}
    with pytest.raises(StepError, match=message.replace(".", r"\.")):
        run_data_steps(tmp_path, [doc(WIDGETS)], settings, until="pairing")


def test_fields_strategy_reads_qa_and_messages(tmp_path):
    documents = [
        doc("", "q1", qa={"question": "What is a widget?", "answer": "A small part."}),
        doc("", "m1", messages=[{"role": "system", "content": "Be brief."},
                                {"role": "user", "content": "Hi?"},
                                {"role": "assistant", "content": "Hello."},
                                {"role": "user", "content": "Bye?"},
                                {"role": "assistant", "content": ""}]),
    ]
    root = run_data_steps(tmp_path, documents, {"pairing": {"strategy": "fields"}},
                          until="pairing")
    assert [(p["instruction"], p["response"]) for p in pairs_of(root)] == [
        ("What is a widget?", "A small part."), ("Hi?", "Hello.")]
    assert read_json(root / "pairing" / "stats.json")["dropped"] == {
        "empty_question_or_answer": 1}


def test_fields_strategy_without_fields_says_how_to_get_them(tmp_path):
    with pytest.raises(StepError, match="fields.question"):
        run_data_steps(tmp_path, [doc(WIDGETS)], {"pairing": {"strategy": "fields"}},
                       until="pairing")


def _qa(question: str, answer: str, doc_id: str) -> dict:
    return doc("", doc_id, qa={"question": question, "answer": answer})


def test_validation_filters_and_counts_each_reason(tmp_path):
    long_answer = "Lists keep items in order and can grow or shrink as the program runs."
    documents = [
        _qa("What is a Python list?", long_answer, "a"),
        _qa("what is a  python LIST?", long_answer + " Again.", "b"),     # normalized duplicate
        _qa("Short?", long_answer, "c"),
        _qa("What is a tuple in Python?", "Too short.", "d"),
        _qa("Qu'est-ce qu'un dictionnaire ?", "Une table qui associe des clés à des valeurs.", "e"),
        _qa("What does x" + "y" * 300 + " do?", long_answer, "f"),
    ]
    sections = {"pairing": {"strategy": "fields"},
                "validation": {"max_instruction_chars": 200, "examples": 2}}
    root = run_data_steps(tmp_path, documents, sections)
    kept = pairs_of(root, "validation")
    assert [p["provenance"]["document_id"] for p in kept] == ["a", "e"]
    assert "clés" in kept[1]["response"]   # no charset filter by default
    stats = read_json(root / "validation" / "stats.json")
    assert stats["dropped"] == {"duplicate_instruction": 1, "instruction_too_short": 1,
                                "response_too_short": 1, "instruction_too_long": 1}
    report = read_json(root / "validation" / "data_report.json")
    assert [s["stage"] for s in report["stages"]] == ["documents", "sentences", "pairs", "kept"]
    assert report["stages"][-1]["out"] == 2 and len(report["examples"]) == 2
    markdown = (root / "validation" / "data_report.md").read_text()
    for expected in ("Counts per stage", "duplicate_instruction: 1", "Response length",
                     "Example 2"):
        assert expected in markdown


def test_validation_charset_filter_is_the_originals(tmp_path):
    documents = [_qa("What is `len(x)`, café?", "It returns the length of x, très vite!", "a")]
    root = run_data_steps(tmp_path, documents, {"pairing": {"strategy": "fields"},
                                                "validation": {"charset_filter": True}})
    pair = pairs_of(root, "validation")[0]
    assert (pair["instruction"], pair["response"]) == (
        "What is lenx, caf?", "It returns the length of x, trs vite!")


def test_validation_near_duplicates_are_dropped_when_enabled(tmp_path):
    base = ("A list is a mutable sequence type that stores references to objects in order "
            "and supports indexing slicing appending and removing items at any position")
    documents = [_qa("Tell me about lists?", base, "a"),
                 _qa("Explain Python lists?", base + " quickly", "b"),
                 _qa("And tuples?", "A tuple is an immutable sequence that cannot change.", "c")]
    sections = {"pairing": {"strategy": "fields"},
                "validation": {"near_dedup": {"enabled": True, "threshold": 0.7}}}
    root = run_data_steps(tmp_path, documents, sections)
    assert [p["provenance"]["document_id"] for p in pairs_of(root, "validation")] == ["a", "c"]
    assert read_json(root / "validation" / "stats.json")["dropped"] == {"near_duplicate": 1}


def test_validation_with_nothing_left_says_so(tmp_path):
    with pytest.raises(StepError, match="no pair is left"):
        run_data_steps(tmp_path, [_qa("Short?", "Tiny.", "a")], {"pairing": {"strategy": "fields"}})


GOLDEN_MD = """# Reading Files

Python opens files with the built-in `open()` function, e.g. `open("a.txt")`. It returns a
file object; see <a href="io.html">io</a> for details. Files opened in text mode decode bytes
with an encoding (UTF-8 by default since version 3.15, i.e. in new releases).

## Closing files

Always close a file when you are done with it. The `with` statement closes the file for you,
even when an exception is raised inside the block:

```python
with open("a.txt") as f:
    data = f.read()
```

Forgetting to close files can leak resources in long-running programs.
"""

GOLDEN_HEADINGS = [
    {"instruction": "What does the Python documentation say about Reading Files?",
     "response": "Python opens files with the built in function, e.g. . It returns a file "
                 "object; see io for details. Files opened in text mode decode bytes with an "
                 "encoding (UTF 8 by default since version 3.15, i.e. in new releases).",
     "provenance": {"document_id": "g", "url": "https://example.org/g",
                    "heading_path": ["Reading Files"], "instruction_source": "template"}},
    {"instruction": "What does the Python documentation say about Closing files (Reading "
                    "Files)?",
     "response": "Always close a file when you are done with it. The statement closes the file "
                 "for you, even when an exception is raised inside the block:\n\n```python\n"
                 "with open(\"a.txt\") as f:\n    data = f.read()\n```\n\nForgetting "
                 "to close files can leak resources in long running programs.",
     "provenance": {"document_id": "g", "url": "https://example.org/g",
                    "heading_path": ["Reading Files", "Closing files"],
                    "instruction_source": "template"}},
]


def test_golden_heading_sections_with_default_rules(tmp_path):
    documents = [doc(GOLDEN_MD, "g", title="Reading Files — Example documentation")]
    root = run_data_steps(tmp_path, documents, {
        "cleaning": {"keep_headings": True, "rules": [
            {"rule": r} for r in ("strip_html", "remove_md_images", "unwrap_md_links",
                                  "remove_code_blocks", "remove_inline_code", "remove_md_symbols",
                                  "unescape", "remove_urls", "collapse_whitespace")]},
        "pairing": {"strategy": "heading_sections"}})
    assert pairs_of(root, "validation") == GOLDEN_HEADINGS
    assert json.loads((root / "validation" / "pairs.jsonl").read_text().splitlines()[0]) == \
        GOLDEN_HEADINGS[0]


def test_without_code_the_sentence_that_introduced_it_goes_too(tmp_path):
    root = run_data_steps(tmp_path, [doc(GOLDEN_MD, "g", title="Reading Files")], {
        "cleaning": {"keep_headings": True},
        "pairing": {"strategy": "heading_sections", "keep_code": False}})
    closing = pairs_of(root, "validation")[1]["response"]
    assert closing == ("Always close a file when you are done with it.\n\nForgetting to close "
                       "files can leak resources in long running programs.")


GOLDEN_SENTENCES = [
    ["Reading Files Python opens files with the built in function, .",
     "It returns a file object; see io for details."],
    ["It returns a file object; see io for details.",
     "Files opened in text mode decode bytes with an encoding (UTF 8 by default since version , ."],
    ["Files opened in text mode decode bytes with an encoding (UTF 8 by default since version , .",
     "Closing files Always close a file when you are done with it."],
    ["Closing files Always close a file when you are done with it.",
     "The statement closes the file for you, even when an exception is raised inside the block: "
     "Forgetting to close files can leak resources in long running programs."],
]


def test_golden_consecutive_sentences_with_all_defaults(tmp_path):
    # The default rules are the original's, file-path rule included: "e.g." and "3.15" go.
    root = run_data_steps(tmp_path, [doc(GOLDEN_MD, "g")])
    assert [[p["instruction"], p["response"]] for p in pairs_of(root, "validation")] == \
        GOLDEN_SENTENCES


def test_validation_with_two_workers_keeps_the_same_pairs_in_order(tmp_path):
    documents = [_qa(f"Question number {i % 700} about lists?",
                     f"Answer {i}: lists keep their items in insertion order.", f"q{i}")
                 for i in range(1500)]
    outputs = []
    for workers in (1, 2):
        root = run_data_steps(tmp_path / str(workers), documents, {
            "pairing": {"strategy": "fields"}, "validation": {"workers": workers}})
        outputs.append((root / "validation" / "pairs.jsonl").read_bytes())
        assert read_json(root / "validation" / "stats.json")["dropped"] == {
            "duplicate_instruction": 800}
    assert outputs[0] == outputs[1]


def test_build_response_never_cuts_code_and_drops_a_dangling_subheading():
    from runner.data.section_pairs import build_response

    blocks = [{"code": "x = 1\n" * 50, "lang": "python"}, {"text": "Short intro sentence."},
              {"heading": "Details"}, {"text": "A long paragraph. " * 20}]
    assert build_response(blocks, keep_code=True, limit=60) == "Short intro sentence."
    assert build_response(blocks, keep_code=False, limit=1000).startswith(
        "Short intro sentence.\n\nDetails\n\nA long paragraph.")


def test_page_title_leaves_out_the_site_name():
    from runner.data.section_pairs import page_title

    assert page_title("re — Regular expression operations — Python 3.11.2 documentation") == \
        "re — Regular expression operations"
    assert page_title("4. More Control Flow Tools") == "More Control Flow Tools"
    assert page_title("Pandas - Getting started | pandas docs") == "Pandas - Getting started"


def test_instructions_name_callables_and_qualify_generic_or_repeated_headings(tmp_path):
    api = "# {module}\n\n## dump()\n\nWrites the {module} form of an object to a file object.\n"
    documents = [doc(api.format(module=m), m, title=m) for m in ("json", "pickle", "marshal")]
    documents.append(doc("# collections\n\n## Counter objects\n\nA counter tool counts items.\n\n"
                         "### Examples\n\nCounting words in a list of words is a common task.\n\n"
                         "## class ChainMap\n\nGroups several mappings into a single view.\n",
                         "c", title="collections"))
    root = run_data_steps(tmp_path, documents, HEADINGS, until="pairing")
    instructions = [p["instruction"] for p in pairs_of(root)]
    assert "What does json.dump() do?" in instructions      # a callable, named with its module
    assert "What is the collections.ChainMap class?" in instructions
    assert ("What does the Python documentation say about Examples for Counter objects "
            "(collections)?") in instructions
    stats = read_json(root / "cleaning" / "stats.json")
    assert "dump()" in stats["repeated_headings"]            # in 3 documents: generic there


def test_markdown_admonition_titles_and_footnotes_are_not_left_as_furniture(tmp_path):
    text = ("# Widgets\n\nWidgets are built by factories in every toolkit we know of.\n\nNote\n\n"
            "Factories are not thread-safe.[^1]\n\nFootnotes\n\n[^1]: Since version 2.\n")
    root = run_data_steps(tmp_path, [doc(text)], HEADINGS, until="pairing")
    assert pairs_of(root)[0]["response"] == ("Widgets are built by factories in every toolkit we "
                                             "know of.\n\nNote: Factories are not thread safe.")
