"""The run report: real run folders made by the real CLI (tiny model, a few steps), then
report.html checked for the numbers of every artifact, escaped text, valid inline SVG and no
outside resources; plus a data-only run, a failed run, and a folder without a manifest."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from xml.etree import ElementTree

import pytest
from conftest import ROOT, run_cli

from runner.artifacts import read_json, read_jsonl
from runner.reporting.report import write_report
from runner.reporting.report_html import size
from runner.reporting.report_svg import nice_ticks

TOPICS = ("lists", "tuples", "dictionaries", "generators")
DATA_SECTIONS = """
sources:
  - type: local
    paths: ["docs/*.md"]
cleaning: {}
pairing: {strategy: consecutive_sentences}
validation: {}
"""
MODEL_SECTIONS = """
chat_template: {reasoning_effort: low, current_date: "2025-08-05"}
model: {name: tiny, max_seq_length: 256, load_in_4bit: false}
lora: {r: 4, alpha: 8, target_modules: [q_proj, v_proj]}
training: {backend: hf, max_steps: 2, per_device_train_batch_size: 2, gradient_accumulation_steps: 1,
           optim: adamw_torch, eval_fraction: 0.1, eval_steps: 1, save_steps: 10, logging_steps: 1}
evaluation:
  prompts: ["What is <b>a list</b> & why?"]
  efforts: [low]
  max_new_tokens: 8
  held_out_rows: 2
export: {targets: [lora]}
"""


def write_docs(folder: Path) -> None:
    """Markdown pages whose sentences give every data stage something to keep and to drop."""
    (folder / "docs").mkdir(parents=True)
    for topic in TOPICS:
        lines = [f"# Python {topic}", "", "Next page.", ""]
        for part in range(3):
            lines += [f"## {topic.capitalize()} part {part}", "",
                      f"The {topic} feature number {part} is described in this paragraph with enough "
                      f"words to pass. It explains how {topic} behave when you use them in ordinary "
                      f"programs every day. Too short here. Copyright notice for the {topic} page "
                      f"number {part} of the documentation. You can combine {topic} with loops, "
                      f"functions and classes in {part} useful ways.", ""]
        (folder / "docs" / f"{topic}.md").write_text("\n".join(lines))


def make_run(folder: Path, name: str, sections: str, *extra) -> tuple[Path, subprocess.CompletedProcess]:
    if not (folder / "docs").is_dir():
        write_docs(folder)
    recipe = folder / f"{name}.yaml"
    recipe.write_text(f"name: {name}\n{sections}")
    done = run_cli("run", recipe, "--run-dir", folder / "runs", "-q", *extra,
                   env={"RECIPE_CACHE": str(folder / "cache")})
    return folder / "runs" / name, done


class PageText(HTMLParser):
    """The text a reader sees (entities decoded), and every tag and attribute used."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.chunks: list[str] = []
        self.tags: set[str] = set()
        self.attributes: set[str] = set()

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        self.attributes.update(name for name, _ in attrs)

    def handle_data(self, data):
        self.chunks.append(data)


def read_page(path: Path) -> tuple[str, PageText]:
    page = path.read_text(encoding="utf-8")
    parsed = PageText()
    parsed.feed(page)
    return page, parsed


def text_of(parsed: PageText) -> str:
    return re.sub(r"\s+", " ", " ".join(parsed.chunks))


def assert_self_contained(page: str, parsed: PageText) -> None:
    assert not {"script", "link", "img", "iframe"} & parsed.tags
    assert "src" not in parsed.attributes
    assert all(href.startswith("#") for href in re.findall(r'href="([^"]*)"', page))
    assert set(re.findall(r"https?://[^\s\"'<]+", page)) <= {"http://www.w3.org/2000/svg"}
    svgs = re.findall(r"<svg.*?</svg>", page, flags=re.S)
    assert svgs
    for svg in svgs:
        ElementTree.fromstring(svg)  # every chart is well-formed XML
    assert "could not be drawn" not in page


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    run, done = make_run(tmp_path_factory.mktemp("report"), "report_full",
                         DATA_SECTIONS + MODEL_SECTIONS)
    assert done.returncode == 0, done.stderr[-3000:]
    path = write_report(run)
    return run, path, *read_page(path)


def test_full_report_holds_every_artifact(full_run):
    run, path, page, parsed = full_run
    assert path == run / "report.html"
    text = text_of(parsed)
    assert_self_contained(page, parsed)
    assert "Run report: report_full" in text and "succeeded" in text

    stages = read_json(run / "validation" / "data_report.json")["stages"]
    assert [s["stage"] for s in stages] == ["documents", "sentences", "pairs", "kept"]
    for stage in stages:
        assert f"{stage['out']:,} of {stage['in']:,}" in text
        for reason, count in stage["dropped"].items():
            if count:
                assert f"{reason}: {count:,}" in text
    cleaning = read_json(run / "cleaning" / "stats.json")["sentences"]
    assert cleaning["dropped"] and cleaning["kept"] < cleaning["split"]

    lengths = read_json(run / "validation" / "data_report.json")["lengths"]
    for name in ("instruction", "response"):
        assert f"{lengths[name]['count']:,} pairs; mean {lengths[name]['mean']}" in text
    assert "Instruction length" in text and "Response length" in text


def test_full_report_mask_loss_answers_export(full_run):
    run, _, page, parsed = full_run
    text = text_of(parsed)
    mask = read_json(run / "chat_template" / "mask_report.json")
    assert f"{mask['share_trained']:.1%}" in text
    assert mask["example"]["trained_text"] in "".join(parsed.chunks)
    assert page.count("<mark>") == 1

    metrics = list(read_jsonl(run / "training" / "metrics.jsonl"))
    train = [(r["step"], r["loss"]) for r in metrics if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in metrics if "eval_loss" in r]
    assert len(train) == 2 and len(evals) == 2
    for label, points in (("train loss", train), ("eval loss", evals)):
        for step, value in points:
            assert f"{label} at step {step}: {value:.6g}" in text
    summary = read_json(run / "training" / "summary.json")
    from runner.reporting.report_html import number
    assert number(summary["tokens_per_s"]) in text and f"{summary['peak_rss_gib']} GiB" in text

    answers = list(read_jsonl(run / "evaluation" / "answers.jsonl"))
    assert answers
    raw_text = "".join(parsed.chunks)
    for answer in answers:
        assert answer["final"] in raw_text
    assert "What is <b>a list</b> & why?" in text and "<b>a list</b>" not in page
    held_out = read_json(run / "evaluation" / "held_out.json")
    assert str(held_out["base"]["loss"]) in text and str(held_out["tuned"]["loss"]) in text

    export = read_json(run / "export" / "export_report.json")["targets"]["lora"]
    assert f"{export['size_bytes']:,} bytes" in text and size(export["size_bytes"]) in text
    assert f"reloaded, generated {export['verify']['new_tokens']} tokens" in text


def test_module_entry_point(full_run, tmp_path):
    run, *_ = full_run
    done = subprocess.run([sys.executable, "-m", "runner.reporting.report", str(run)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(run / "report.html")
    assert not list(run.glob(".report.html.tmp*"))
    missing = subprocess.run([sys.executable, "-m", "runner.reporting.report", str(tmp_path / "nope")],
                             cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "is not a folder" in missing.stderr


def test_data_only_run_then_a_failed_rerun(tmp_path):
    run, done = make_run(tmp_path, "report_data", DATA_SECTIONS)
    assert done.returncode == 0, done.stderr[-3000:]
    page, parsed = read_page(write_report(run))
    text = text_of(parsed)
    assert_self_contained(page, parsed)
    kept = read_json(run / "validation" / "stats.json")["kept"]
    assert f"{kept:,} of" in text and "Instruction length" in text
    for section in ("chat_template", "training", "evaluation", "export"):
        assert f"the recipe has no `{section}` section" in text

    # The same recipe with a limit no pair meets: validation fails, its old folder stays.
    run, done = make_run(tmp_path, "report_data", DATA_SECTIONS + MODEL_SECTIONS,
                         "--set", "validation.min_response_chars=5000")
    assert done.returncode == 1 and "no pair is left" in done.stderr
    page, parsed = read_page(write_report(run))
    text = text_of(parsed)
    assert_self_contained(page, parsed)
    assert "validation failed:" in text and "no pair is left" in text
    assert "validation: these artifacts are from an earlier run: this run's attempt failed" in text
    assert "not run: the run stopped when the validation step failed" in text
    assert json.loads((run / "manifest.json").read_text())["status"] == "failed"


def test_folder_without_manifest_shows_what_it_finds(tmp_path):
    """Final answer and reasoning stay apart, and markup in model output stays text."""
    folder = tmp_path / "evaluation"
    folder.mkdir()
    (folder / ".complete.json").write_text(json.dumps({"key": "k", "duration_s": 1.5}))
    rows = [{"prompt": "Sieve?", "reasoning_effort": effort, "system_prompt": "", "complete": True,
             "format_ok": True, "analysis": f"think <i>{effort}</i>", "final": f"<script>{effort}",
             "new_tokens": 5, "seconds": 0.5, "tokens_per_s": 10.0,
             "generation": {"temperature": 0.7, "top_p": 0.9, "do_sample": True, "seed": 1}}
            for effort in ("low", "high")]
    (folder / "answers.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    page, parsed = read_page(write_report(tmp_path))
    text = text_of(parsed)
    assert "No manifest.json" in text and "evaluation/held_out.json is missing" in text
    assert "<script>" not in page and "<i>" not in page
    for effort in ("low", "high"):
        assert f"Final answer <script>{effort}" in text
        assert f"Reasoning (analysis channel) think <i>{effort}</i>" in text
        assert "5 tokens, complete" in text
    assert "could not be drawn" not in page


@pytest.mark.parametrize("low,high", [(7.61, 7.64), (0, 37), (1, 2), (5, 5), (0.0001, 0.0009)])
def test_ticks_cover_the_range_in_round_steps(low, high):
    ticks = nice_ticks(low, high)
    assert ticks[0] <= low and ticks[-1] >= high and 3 <= len(ticks) <= 12
    steps = {round(b - a, 12) for a, b in zip(ticks, ticks[1:], strict=False)}
    assert len(steps) == 1
    mantissa = f"{steps.pop():e}".split("e")[0]
    assert mantissa in {"1.000000", "2.000000", "2.500000", "5.000000"}
