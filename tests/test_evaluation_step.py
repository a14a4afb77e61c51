"""The evaluation step on the tiny model: every prompt at every effort, base vs tuned loss."""

from __future__ import annotations

import json

import pytest
from tuned_fixture import copy_run, make_ctx, publish, section_settings

from runner.artifacts import read_json, read_jsonl, write_jsonl
from runner.steps.evaluation import evaluate

PROMPTS = ["What is a generator in Python?",
           {"prompt": "Write a Sieve of Eratosthenes.", "efforts": ["low", "high"], "max_new_tokens": 5}]


def run_evaluation(tmp_path, **values):
    run = copy_run(tmp_path)
    settings = section_settings("evaluation", system_prompt="You are an expert Python assistant.",
                                prompts=PROMPTS, max_new_tokens=8, **values)
    ctx = make_ctx(run, "evaluation", settings, ["chat_template", "training"])
    metrics = evaluate(ctx)
    return run, publish(ctx), metrics


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    return run_evaluation(tmp_path_factory.mktemp("evaluation"))


def test_every_prompt_is_answered_at_every_effort(evaluated):
    _, out, metrics = evaluated
    rows = list(read_jsonl(out / "answers.jsonl"))
    assert [(r["prompt"][:8], r["reasoning_effort"]) for r in rows] == [
        ("What is ", "low"), ("What is ", "medium"), ("What is ", "high"),
        ("Write a ", "low"), ("Write a ", "high")]
    assert [r["new_tokens"] for r in rows] == [8, 8, 8, 5, 5]  # per-prompt limit wins
    for row in rows:
        assert row["system_prompt"] == "You are an expert Python assistant."
        assert {"analysis", "final", "complete", "format_ok", "raw"} <= set(row)
        assert row["generation"]["temperature"] == 0.7 and row["generation"]["do_sample"]
    assert metrics["answers"] == 5


def test_report_holds_every_answer_and_the_loss_table(evaluated):
    _, out, metrics = evaluated
    report = (out / "report.md").read_text()
    assert report.count("#### effort: ") == 5
    assert "### 1. What is a generator in Python?" in report
    assert "### 2. Write a Sieve of Eratosthenes." in report
    assert "| base |" in report and "| tuned |" in report
    assert "training/eval.jsonl" in report
    held_out = read_json(out / "held_out.json")
    assert held_out["rows"] == 2 and held_out["counted"] == "answer tokens only"
    base, tuned = held_out["base"], held_out["tuned"]
    # The adapter has non-zero weights, so the tuned model scores the same rows differently.
    assert base["loss"] != tuned["loss"] and base["tokens"] == tuned["tokens"] > 0
    assert metrics["base_loss"] == base["loss"] and metrics["tuned_perplexity"] == tuned["perplexity"]


def test_answers_are_reproducible_with_the_seed(evaluated, tmp_path):
    _, out, _ = evaluated
    _, again, _ = run_evaluation(tmp_path, held_out_loss=False)
    first = [r["raw"] for r in read_jsonl(out / "answers.jsonl")]
    assert first == [r["raw"] for r in read_jsonl(again / "answers.jsonl")]
    assert json.loads((again / "held_out.json").read_text()) == {}
    assert "not computed" in (again / "report.md").read_text()


def test_without_an_eval_split_the_dataset_tail_is_used_and_said(tmp_path):
    run = copy_run(tmp_path)
    write_jsonl(run / "training" / "eval.jsonl", [])
    settings = section_settings("evaluation", prompts=[], held_out_rows=3)
    ctx = make_ctx(run, "evaluation", settings, ["chat_template", "training"])
    metrics = evaluate(ctx)
    out = publish(ctx)
    held_out = read_json(out / "held_out.json")
    assert held_out["rows"] == 3 and "model trained on these" in held_out["source"]
    assert metrics["answers"] == 0 and "No test prompts" in (out / "report.md").read_text()


def test_prompt_is_rendered_with_effort_system_prompt_and_pinned_date():
    from tuned_fixture import tiny_model_dir

    from runner.infer.generation import load_tokenizer_from, render_prompt

    tokenizer = load_tokenizer_from(tiny_model_dir())
    text = render_prompt(tokenizer, "Q?", effort="high", system_prompt="Be brief.",
                         current_date="2025-08-05")
    assert "Reasoning: high" in text and "Current date: 2025-08-05" in text
    assert "Be brief." in text and text.endswith("<|start|>user<|message|>Q?<|end|><|start|>assistant")


def test_held_out_loss_counts_only_answer_tokens():
    from runner.infer.generation import response_spans

    text = ("<|start|>user<|message|>Q1<|end|><|start|>assistant<|channel|>final<|message|>A1<|return|>"
            "<|start|>user<|message|>Q2<|end|><|start|>assistant<|channel|>final<|message|>A2<|return|>")
    spans = [text[a:b] for a, b in response_spans(
        text, "<|start|>assistant<|channel|>final<|message|>", "<|start|>user<|message|>")]
    assert spans == ["A1<|return|>", "A2<|return|>"]
