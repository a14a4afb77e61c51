"""The chat_template step on the tiny model: rendering, fixes, checks, overlong rows, the mask."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner.artifacts import read_jsonl, write_jsonl
from runner.errors import StepError
from runner.registry import StepContext, registered

MODEL = {"name": "tiny", "max_seq_length": 1024, "load_in_4bit": False, "dtype": "auto",
         "attn_implementation": "auto", "revision": "main", "tiny": {}}
PAIRS = [
    ("What is a generator in Python?", "A function that yields values one at a time."),
    ("How do I read a CSV file?", "Use the csv module: csv.reader(open(path)) gives rows."),
    ("What is the difference between a list and a tuple?", "Lists are mutable; tuples are not."),
]


def section_defaults() -> dict:
    schema = json.loads((Path(__file__).parent.parent / "schemas/recipe.schema.json").read_text())
    props = schema["$defs"]["chat_template"]["properties"]
    return {key: value["default"] for key, value in props.items()}


@pytest.fixture(scope="module", autouse=True)
def cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RECIPE_CACHE", str(tmp_path_factory.mktemp("recipe-cache")))
        yield


@pytest.fixture
def run_step(tmp_path):
    """Run the registered step on pairs; returns its output folder and metrics."""
    def run(pairs=PAIRS, model=None, **settings):
        validation = tmp_path / "validation"
        validation.mkdir(exist_ok=True)
        write_jsonl(validation / "pairs.jsonl", [
            {"instruction": q, "response": a,
             "provenance": {"document_id": f"doc{i:013d}", "url": f"https://x/{i}",
                            "heading_path": ["Tutorial"]}}
            for i, (q, a) in enumerate(pairs)])
        out = tmp_path / "out"
        out.mkdir(exist_ok=True)
        ctx = StepContext(recipe_name="t", step="chat_template", key="k",
                          settings={**section_defaults(), **settings},
                          sections={"model": {**MODEL, **(model or {})}},
                          inputs={"validation": validation}, out_dir=out, run_dir=tmp_path,
                          cache_dir=tmp_path / "cache", recipe_dir=tmp_path, quiet=True)
        metrics = registered()[("chat_template", "default")].func(ctx)
        return out, metrics
    return run


def test_renders_harmony_rows_with_pinned_date_and_verified_mask(run_step):
    out, metrics = run_step(system_prompt="You are an expert Python assistant.",
                            reasoning_effort="high", current_date="2024-01-02")
    rows = list(read_jsonl(out / "dataset.jsonl"))
    assert len(rows) == 3 and metrics["rows_out"] == 3
    text = rows[0]["text"]
    assert "Current date: 2024-01-02\n" in text and "Reasoning: high\n" in text
    assert "<|start|>developer<|message|># Instructions\n\nYou are an expert Python assistant." in text
    assert text.endswith("<|start|>user<|message|>What is a generator in Python?<|end|>"
                         "<|start|>assistant<|channel|>final<|message|>"
                         "A function that yields values one at a time.<|return|>")
    assert rows[0]["provenance"]["document_id"] == "doc0000000000000"
    from runner.chat.chat_format import pinned_clock
    from runner.models import load_tokenizer
    assert text == load_tokenizer(MODEL).apply_chat_template(
        rows[0]["messages"], tokenize=False, reasoning_effort="high",
        strftime_now=pinned_clock("2024-01-02"))
    assert rows[0]["messages"][-1] == {"role": "assistant", "content": PAIRS[0][1]}
    report = json.loads((out / "mask_report.json").read_text())
    assert report["example"]["trained_text"] == PAIRS[0][1] + "<|return|>"
    assert 0 < report["share_trained"] < 0.5 and report["every_row_verified"]
    assert "Trained tokens, decoded" in (out / "mask_report.md").read_text()
    # Same pairs, same settings: byte-identical data on any day.
    again, _ = run_step(system_prompt="You are an expert Python assistant.",
                        reasoning_effort="high", current_date="2024-01-02")
    assert (again / "dataset.jsonl").read_bytes() == (out / "dataset.jsonl").read_bytes()


def test_user_turn_is_never_trained(run_step, cache):
    from runner.chat.loss_mask import response_only_labels, trained_text
    from runner.models import load_tokenizer

    out, _ = run_step()
    tokenizer = load_tokenizer(MODEL)
    for row, (question, answer) in zip(list(read_jsonl(out / "dataset.jsonl")), PAIRS, strict=True):
        ids = tokenizer(row["text"], add_special_tokens=False)["input_ids"]
        labels = response_only_labels(ids, tokenizer, "<|start|>user<|message|>",
                                      "<|start|>assistant<|channel|>final<|message|>")
        trained = trained_text(tokenizer, ids, labels)
        assert trained == answer + "<|return|>" and question not in trained
        assert row["num_trained_tokens"] == sum(label != -100 for label in labels)


def test_response_marker_that_never_appears_stops_the_run(run_step):
    """Acceptance: the run stops before training, naming the marker and a row."""
    with pytest.raises(StepError) as error:
        run_step(response_part="<|start|>assistant<|message|>")
    message = str(error.value)
    assert "response_part '<|start|>assistant<|message|>' never appears" in message
    assert "row 0 (document doc0000000000000, https://x/0, Tutorial)" in message
    assert "3 of 3 rows" in message


def test_end_token_other_than_the_templates_is_refused(run_step):
    with pytest.raises(StepError) as error:
        run_step(end_token="<|eot_id|>")
    message = str(error.value)
    assert "chat_template.end_token is '<|eot_id|>' but the template ends the assistant turn " \
           "with '<|return|>'" in message
    assert "which is 6 tokens, not one token" in message


def test_channel_fix_and_custom_fixes(run_step, tmp_path):
    from runner.tiny_model import harmony_template

    # A template that forgot the channel, like the one the original notebook patched.
    broken = harmony_template().replace(
        '"<|start|>assistant<|channel|>final<|message|>" + message.content + "<|return|>"',
        '"<|start|>assistant<|message|>" + message.content + "<|return|>"')
    (tmp_path / "broken.jinja").write_text(broken)
    out, _ = run_step(template="broken.jinja", fixes=[
        {"find": "Reasoning: low", "replace": "Reasoning: medium"},
        {"find": "Knowledge cutoff", "replace": "X", "unless_contains": "ChatGPT"}])
    text = next(read_jsonl(out / "dataset.jsonl"))["text"]
    assert "<|start|>assistant<|channel|>final<|message|>A function" in text
    assert "Reasoning: medium" in text and "Knowledge cutoff" in text
    fixes = json.loads((out / "mask_report.json").read_text())["fixes"]
    assert [f["rows_changed"] for f in fixes] == [3, 3, 0]
    with pytest.raises(StepError, match="missing '<|channel|>'"):
        run_step(template="broken.jinja", channel_fix=False)


def test_failed_checks_show_offending_rows(run_step):
    with pytest.raises(StepError) as error:
        run_step(require=["<|start|>user", "<|start|>system"], forbid=["tuples"])
    message = str(error.value)
    assert "contains forbidden 'tuples': 1 of 3 rows (rows 2)" in message
    assert "row 2 (document doc0000000000002" in message and "Lists are mutable" in message


def test_overlong_rows_are_dropped_or_truncated(run_step):
    long_answer = "word " * 400
    pairs = PAIRS + [("Tell me everything.", long_answer.strip())]
    out, metrics = run_step(pairs=pairs, model={"max_seq_length": 200})
    assert metrics["rows_out"] == 3 and metrics["dropped_overlong"] == 1
    out, metrics = run_step(pairs=pairs, model={"max_seq_length": 200}, overlong="truncate")
    rows = list(read_jsonl(out / "dataset.jsonl"))
    assert metrics["truncated"] == 1 and len(rows) == 4
    assert rows[3]["num_tokens"] == 200 and 0 < rows[3]["num_trained_tokens"] < 200
    assert not rows[3]["text"].endswith("<|return|>")
    with pytest.raises(StepError, match="every row is longer"):
        run_step(model={"max_seq_length": 16})


def test_template_mask_uses_generation_markers(run_step, cache):
    from runner.chat.loss_mask import encode_with_spans, trained_text
    from runner.models import load_tokenizer

    out, metrics = run_step(mask="template")
    tokenizer = load_tokenizer(MODEL)
    row = next(read_jsonl(out / "dataset.jsonl"))
    ids, labels = encode_with_spans(tokenizer, row["text"], row["trained_spans"])
    assert trained_text(tokenizer, ids, labels) == (
        "<|start|>assistant<|channel|>final<|message|>" + PAIRS[0][1] + "<|return|>")
    assert "{% generation %}" in (out / "chat_template.jinja").read_text().replace("-", "")


def test_template_mask_without_markers_is_refused(run_step, tmp_path):
    (tmp_path / "plain.jinja").write_text(
        "{% for m in messages %}<|start|>{{ m.role }}<|message|>{{ m.content }}<|end|>{% endfor %}")
    with pytest.raises(StepError, match="no {% generation %} markers"):
        run_step(template="plain.jinja", mask="template")


def test_llama_family_uses_the_same_pipeline(run_step):
    out, metrics = run_step(model={"tiny": {"family": "llama"}})
    assert metrics["rows_out"] == 3 and metrics["tokens_trained"] > 0
