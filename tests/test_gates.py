"""The gates step through the real CLI on the tiny model: a run that meets its gates, then the
same run with thresholds it cannot meet (only the gates step re-runs): a non-zero exit naming
each failed gate with its value and threshold, export not run, and report.html showing it.
Plus each gate's verdict on crafted measurements."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli
from test_report import DATA_SECTIONS, MODEL_SECTIONS, assert_self_contained, make_run, read_page, text_of

from runner.artifacts import read_json, read_jsonl
from runner.steps.gates import GATES, Measured, check, failure_line

PASSING = """
gates: {max_empty_rate: 1.0, max_cut_off_rate: 1.0, max_loop_rate: 1.0, max_channel_error_rate: 1.0,
        min_held_out_loss_drop: -1.0}
"""
UNREACHABLE = ("--set", "gates.min_held_out_loss_drop=0.9", "--set", "gates.max_held_out_loss=0.01")


def _tuned_rate(run, key: str) -> float:
    tuned = [r["quality"] for r in read_jsonl(run / "evaluation" / "answers.jsonl") if r["model"] == "tuned"]
    return round(sum(bool(q[key]) for q in tuned) / len(tuned), 4)


@pytest.fixture(scope="module")
def gated(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gates")
    run, passed = make_run(folder, "gated", DATA_SECTIONS + MODEL_SECTIONS + PASSING)
    assert passed.returncode == 0, passed.stderr[-3000:]
    first_page = read_page(run / "report.html")
    _, failed = make_run(folder, "gated", DATA_SECTIONS + MODEL_SECTIONS + PASSING, *UNREACHABLE)
    return run, passed, first_page, failed


def test_a_run_that_meets_its_gates_goes_on_to_export(gated):
    run, passed, (page, parsed), _ = gated
    assert "gates ran" in passed.stdout and "export ran" in passed.stdout
    results = {r["gate"]: r for r in read_json(run / "gates" / "gates.json")["gates"]}
    assert set(results) == {"max_empty_rate", "max_cut_off_rate", "max_loop_rate",
                            "max_channel_error_rate", "min_held_out_loss_drop"}
    assert all(r["passed"] for r in results.values())
    # The values are the evaluation's own measurements.
    assert results["max_cut_off_rate"]["value"] == _tuned_rate(run, "cut_off")
    assert results["max_loop_rate"]["value"] == _tuned_rate(run, "loop")
    held_out = read_json(run / "evaluation" / "held_out.json")
    assert results["min_held_out_loss_drop"]["value"] == held_out["relative_drop"] == round(
        (held_out["base"]["loss"] - held_out["tuned"]["loss"]) / held_out["base"]["loss"], 5)
    text = text_of(parsed)
    assert_self_contained(page, parsed)
    assert "All 5 gates met." in text and "not met" not in text
    assert "gates.max_cut_off_rate share of answers cut off at max_new_tokens" in text


def test_a_gate_not_met_fails_the_run_and_names_value_and_threshold(gated):
    run, _, _, failed = gated
    assert failed.returncode == 1
    drop = read_json(run / "evaluation" / "held_out.json")["relative_drop"]
    tuned_loss = read_json(run / "evaluation" / "held_out.json")["tuned"]["loss"]
    assert "2 of 6 evaluation gates not met" in failed.stderr
    assert (f"gates.min_held_out_loss_drop: held-out loss drop, (base - tuned) / base is "
            f"{drop:.4g}, needs >= 0.9") in failed.stderr
    assert f"gates.max_held_out_loss: tuned held-out loss is {tuned_loss:.4g}, needs <= 0.01" in failed.stderr
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "export" not in manifest["steps"]
    gates = manifest["steps"]["gates"]
    assert gates["status"] == "failed" and manifest["steps"]["evaluation"]["status"] == "skipped"
    verdicts = {r["gate"]: r["passed"] for r in gates["metrics"]["gates"]}
    assert verdicts == {"min_held_out_loss_drop": False, "max_held_out_loss": False,
                        "max_empty_rate": True, "max_cut_off_rate": True, "max_loop_rate": True,
                        "max_channel_error_rate": True}


def test_the_report_shows_the_failed_gates(gated):
    run, *_ = gated
    page, parsed = read_page(run / "report.html")
    text = text_of(parsed)
    assert_self_contained(page, parsed)
    assert "gates failed:" in text and "gates.max_held_out_loss: tuned held-out loss is" in text
    assert ("2 of 6 gates not met: gates.min_held_out_loss_drop, gates.max_held_out_loss." in text)
    assert text.count("not met") >= 3 and "<= 0.01" in text and ">= 0.9" in text
    assert "not run: the run stopped when the gates step failed" not in text  # export ran before
    assert "export: these artifacts are from an earlier run" in text


def test_gates_need_the_evaluation_step(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\nsources: [{type: local, paths: ['*.md']}]\ngates: {max_loop_rate: 0.1}\n")
    done = run_cli("validate", recipe)
    assert done.returncode != 0 and "the gates step reads the output of 'evaluation'" in done.stdout + done.stderr


def _measured(harmony=True, **losses) -> Measured:
    tuned = {"answers": 4, "empty": 1, "empty_rate": 0.25, "cut_off": 2, "cut_off_rate": 0.5,
             "loops": 0, "loop_rate": 0.0}
    if harmony:
        tuned.update(channel_errors=1, channel_error_rate=0.25)
    return Measured(losses, tuned, harmony)


GATE = {gate.key: gate for gate in GATES}
LOSSES = {"rows": 3, "base": {"loss": 3.0}, "tuned": {"loss": 2.7}, "relative_drop": 0.1}


@pytest.mark.parametrize("key,threshold,passed", [
    ("min_held_out_loss_drop", 0.1, True), ("min_held_out_loss_drop", 0.11, False),
    ("max_held_out_loss", 2.7, True), ("max_held_out_loss", 2.69, False),
    ("max_cut_off_rate", 0.5, True), ("max_cut_off_rate", 0.4, False),
    ("max_empty_rate", 0.0, False), ("max_loop_rate", 0.0, True),
    ("max_channel_error_rate", 0.25, True), ("max_channel_error_rate", 0.2, False),
])
def test_each_gate_compares_its_value_with_its_threshold(key, threshold, passed):
    result = check(GATE[key], threshold, _measured(**LOSSES))
    assert result["passed"] is passed and result["problem"] == ""
    assert result["value"] == {"min_held_out_loss_drop": 0.1, "max_held_out_loss": 2.7,
                               "max_cut_off_rate": 0.5, "max_empty_rate": 0.25, "max_loop_rate": 0.0,
                               "max_channel_error_rate": 0.25}[key]


def test_a_gate_that_cannot_be_measured_is_not_met_and_says_why():
    no_loss = check(GATE["min_held_out_loss_drop"], 0.1, _measured())
    assert not no_loss["passed"] and "set evaluation.held_out_loss: true" in no_loss["problem"]
    assert failure_line(no_loss).startswith("gates.min_held_out_loss_drop: not measured:")
    generic = check(GATE["max_channel_error_rate"], 0.5, _measured(harmony=False))
    assert not generic["passed"] and "not harmony" in generic["problem"]
    assert "remove gates.max_channel_error_rate" in generic["problem"]
    empty = check(GATE["max_loop_rate"], 0.5, Measured({}, {}, None))
    assert not empty["passed"] and "add evaluation.prompts" in empty["problem"]
