"""The evaluation step on the tiny model: every prompt at every effort answered by the base and
the tuned model, with quality signals; base vs tuned loss; a non-harmony template's answers."""

from __future__ import annotations

import json

import pytest
from tuned_fixture import copy_run, make_ctx, publish, section_settings

from runner.artifacts import read_json, read_jsonl, write_jsonl
from runner.steps.evaluation import evaluate

pytestmark = pytest.mark.usefixtures("one_torch_thread")

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


def test_every_prompt_is_answered_at_every_effort_by_base_and_tuned(evaluated):
    _, out, metrics = evaluated
    rows = list(read_jsonl(out / "answers.jsonl"))
    jobs = [("What is ", "low"), ("What is ", "medium"), ("What is ", "high"),
            ("Write a ", "low"), ("Write a ", "high")]
    assert [(r["prompt"][:8], r["reasoning_effort"], r["model"]) for r in rows] == [
        (*job, model) for job in jobs for model in ("base", "tuned")]
    assert [r["new_tokens"] for r in rows] == [8] * 6 + [5] * 4  # per-prompt limit wins
    for row in rows:
        assert row["system_prompt"] == "You are an expert Python assistant."
        assert {"analysis", "final", "complete", "format_ok", "raw", "ended"} <= set(row)
        assert row["generation"]["temperature"] == 0.7 and row["generation"]["do_sample"]
        assert row["template_kind"] == "harmony" and row["quality"]["cut_off"] == (not row["ended"])
        assert {"empty", "loop", "repeated_ngram_share", "channels_ok"} <= set(row["quality"])
    # Same seed, same prompt: only the adapter makes base and tuned answers differ.
    assert any(b["raw"] != t["raw"] for b, t in zip(rows[::2], rows[1::2], strict=True))
    assert metrics["answers"] == 5
    tuned = [r for r in rows if r["model"] == "tuned"]
    assert metrics["tuned_cut_off"] == sum(r["quality"]["cut_off"] for r in tuned)
    assert metrics["tuned_loop_rate"] == round(sum(r["quality"]["loop"] for r in tuned) / 5, 4)


def test_base_answers_are_the_base_models_own(evaluated):
    """The adapter switched off gives exactly what the bare base model generates."""
    from tuned_fixture import TINY

    from runner.infer.generation import GenerationSettings, generate, load_tokenizer_from, render_prompt
    from runner.models import load_model

    run, out, _ = evaluated
    first = next(read_jsonl(out / "answers.jsonl"))
    tokenizer = load_tokenizer_from(run / "training" / "adapter")
    text = render_prompt(tokenizer, first["prompt"], effort="low", system_prompt=first["system_prompt"],
                         current_date="2025-08-05")
    alone = generate(load_model(TINY).eval(), tokenizer, text, GenerationSettings(**first["generation"]))
    assert first["model"] == "base" and alone.text == first["raw"]


def test_report_holds_every_answer_and_the_loss_table(evaluated):
    _, out, metrics = evaluated
    report = (out / "report.md").read_text()
    assert report.count("#### effort: ") == 5 and report.count("| | base | tuned |") == 5
    assert "### Quality signals" in report and "Harmony template" in report
    assert "Generation: sampling at temperature 0.7, top_p 0.9, seed 3407." in report
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
    _, again, _ = run_evaluation(tmp_path, held_out_loss=False, base_answers=False)
    first = [r["raw"] for r in read_jsonl(out / "answers.jsonl") if r["model"] == "tuned"]
    assert first == [r["raw"] for r in read_jsonl(again / "answers.jsonl")]
    assert {r["model"] for r in read_jsonl(again / "answers.jsonl")} == {"tuned"}
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


GENERIC_TEMPLATE = ("{% for m in messages %}<|start|>{{ m.role }}<|message|>{{ m.content }}<|end|>"
                    "{% endfor %}{% if add_generation_prompt %}<|start|>assistant<|message|>{% endif %}")


def _greedy_ids(model, tokenizer, text: str, limit: int) -> list[int]:
    inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    output = model.generate(**inputs, max_new_tokens=limit, do_sample=False, temperature=None,
                            top_p=None, top_k=None, pad_token_id=tokenizer.pad_token_id)
    return output[0, inputs["input_ids"].shape[1]:].tolist()


def test_a_generic_template_answers_once_per_prompt_up_to_its_end_token(tmp_path):
    """chat.json says the template is not harmony: no effort sweep, generation stops at the
    resolved end token, the answer is the text before it, held-out loss uses its markers."""
    from tuned_fixture import TINY

    from runner.infer.generation import held_out_loss, load_tokenizer_from, render_prompt
    from runner.models import load_model

    run = copy_run(tmp_path)
    (run / "chat_template" / "chat_template.jinja").write_text(GENERIC_TEMPLATE)
    tokenizer = load_tokenizer_from(run / "training" / "adapter")
    base = load_model(TINY).eval()
    prompt = "What is a generator in Python?"
    ids = _greedy_ids(base, tokenizer, render_prompt(tokenizer, prompt, effort=None,
                                                     chat_template=GENERIC_TEMPLATE), 8)
    # The end token: the first greedy token after the second that the answer has not shown yet.
    stop = next(k for k in range(2, len(ids)) if ids[k] not in ids[:k])
    chat = {"mask": "markers", "template_kind": "generic", "instruction_part": "<|start|>user",
            "response_part": "<|start|>assistant", "end_token": tokenizer.convert_ids_to_tokens(ids[stop]),
            "stop_tokens": []}
    (run / "chat_template" / "chat.json").write_text(json.dumps(chat))
    settings = section_settings("evaluation", prompts=[prompt], efforts=["low", "high"],
                                max_new_tokens=8, do_sample=False)
    ctx = make_ctx(run, "evaluation", settings, ["chat_template", "training"])
    metrics = evaluate(ctx)
    out = publish(ctx)

    rows = list(read_jsonl(out / "answers.jsonl"))
    assert [(r["model"], r["reasoning_effort"], r["template_kind"]) for r in rows] == [
        ("base", None, "generic"), ("tuned", None, "generic")]
    first = rows[0]
    assert first["new_tokens"] == stop + 1 and first["ended"] and first["complete"]
    assert first["final"] == tokenizer.decode(ids[:stop]).strip()
    assert first["analysis"] == "" and not first["quality"]["cut_off"]
    assert "channels_ok" not in first["quality"] and "tuned_channel_errors" not in metrics
    texts = [r["text"] for r in read_jsonl(run / "training" / "eval.jsonl")]
    expected = held_out_loss(base, tokenizer, texts, max_length=256, response_part="<|start|>assistant",
                             instruction_part="<|start|>user")
    assert read_json(out / "held_out.json")["base"] == expected
    report = (out / "report.md").read_text()
    assert "not harmony: reasoning efforts mean nothing" in report and "#### answer" in report
    assert "Generation: greedy, seed 3407." in report and "| | base | tuned |" in report
