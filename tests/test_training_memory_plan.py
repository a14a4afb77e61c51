"""The memory planner: parameter counts of the real shapes, the plan against the peaks measured on
the H200 (bench/results), and `recipe plan` / `recipe run` refusing a card that is too small."""

from __future__ import annotations

import json
import sys

import pytest
from conftest import ROOT, run_cli
from training_helpers import section

from runner.tiny_model import PRESETS
from runner.train.memory_plan import (
    checkpointing_for,
    estimate,
    lora_parameters,
    parameter_groups,
)

RESULTS = ROOT / "bench" / "results"


def _config(**shape) -> dict:
    return {"model_type": "gpt_oss", "attention_bias": True,
            **PRESETS["gpt_oss"]["gpt-oss-20b"], **shape}


def test_parameter_counts_are_those_unsloth_reported_on_the_h200():
    # "Trainable parameters = 92,454,912 of 21,007,212,096" (24 layers, r 8) and
    # "30,818,304 of 4,481,835,968" (4 layers, r 16): the totals include the adapters.
    for layers, r, trainable, total in ((24, 8, 92_454_912, 21_007_212_096),
                                        (4, 16, 30_818_304, 4_481_835_968)):
        config = _config(num_hidden_layers=layers)
        assert lora_parameters(config, section("lora", r=r)) == trainable
        base = sum(parameter_groups(config).values())
        assert abs(base - (total - trainable)) / total < 1e-4


@pytest.mark.parametrize("results, runs", [
    # The last benchmark call: every compared run in one device call (bench/results/training.md);
    # the runner runs trained without checkpointing (auto).
    ("training-results.json", ["bare-2x4", "bare-8x1", "bare-full", "runner-packed",
                               "runner-full", "runner-padded"]),
    ("training-moe-ref-results.json", ["runner-packed", "baseline-2x4", "runner-packed-library"]),
    # compiled decoder layers (training.compile_layers)
    ("training-layers-results.json", ["bare-2x4", "bare-8x1", "bare-full", "runner-packed"]),
    ("training-eager-moe-results.json", ["bare-2x4", "bare-8x1", "bare-full", "runner-packed",
                                         "runner-full", "runner-padded", "baseline-2x4"]),
    ("training-first-results.json", ["bare-8x1-nockpt", "runner-packed", "runner-full"]),
    ("training-rest-results.json", ["runner-padded", "baseline-2x4"]),
    ("training-handrun-results.json", ["runner-handrun-24l"])])
def test_the_plan_is_within_15_percent_of_the_measured_peaks(results, runs):
    sys.path.insert(0, str(ROOT / "bench"))
    from bench_training_report import planned_gib

    data = json.loads((RESULTS / results).read_text())
    for name in runs:
        run = data[name]
        planned = planned_gib(run, run["spec"], data["_meta"]["configs"][run["spec"]["model"]])
        assert abs(planned / run["peak_gib"] - 1) <= 0.15, (name, planned, run["peak_gib"])


def test_the_16_gb_claim_needs_unsloths_4bit_experts():
    config = _config()
    model = section("model", max_seq_length=1024, load_in_4bit=True)
    training = section("training", per_device_train_batch_size=2, gradient_accumulation_steps=4)
    lora = section("lora", r=8)
    unsloth = estimate(config, model, lora, training, backend="unsloth", tokens=1102)
    hf = estimate(config, model, lora, training, backend="hf", tokens=1102)
    assert 12 < unsloth.gib() < 14 and hf.gib() > 35
    assert any("experts stay in 16 bits" in note for note in hf.notes) and not unsloth.notes


def _recipe(tmp_path, name: str, config: dict, model: str, training: str):
    """A recipe whose model is a folder holding only `config` (what the plan reads)."""
    folder = tmp_path / f"{name}-model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    recipe = tmp_path / f"{name}.yaml"
    recipe.write_text(f"""name: {name}
sources: [{{type: pydoc, modules: [json]}}]
cleaning: {{}}
pairing: {{}}
validation: {{}}
chat_template: {{}}
model: {{name: {folder}, {model}}}
training: {{{training}}}
""")
    return recipe


def test_recipe_plan_prints_the_plan_and_run_refuses_a_card_too_small(tmp_path):
    recipe = _recipe(tmp_path, "big", _config(), "load_in_4bit: false",
                     "backend: hf, gpu_memory_gib: 16")
    plan = run_cli("plan", recipe, "--run-dir", tmp_path / "runs", timeout=120)
    assert plan.returncode == 2
    assert "memory plan (hf backend): peak about" in plan.stdout
    assert "a 16 GB GPU" in plan.stdout and "does NOT fit" in plan.stdout
    assert "exceeds the 15.0 GiB usable on training.gpu_memory_gib" in plan.stderr
    run = run_cli("run", recipe, "--run-dir", tmp_path / "runs", timeout=120)
    assert run.returncode == 2 and "nothing was run" in run.stderr
    assert not (tmp_path / "runs").exists()


def test_auto_checkpointing_is_off_only_where_the_step_fits_without_it():
    config = _config(num_hidden_layers=4)
    model = section("model", max_seq_length=512, load_in_4bit=False)
    training = section("training", per_device_train_batch_size=8)
    lora = section("lora", r=16)
    assert lora["use_gradient_checkpointing"] == "auto"         # the schema's default
    without = estimate(config, model, {**lora, "use_gradient_checkpointing": False}, training,
                       backend="unsloth").gib()
    with_it = estimate(config, model, lora, training, backend="unsloth").gib()
    assert with_it < without      # "auto" undecided plans for checkpointing on
    decide = lambda card, backend="unsloth", **kw: checkpointing_for(  # noqa: E731
        config, model, {**lora, **kw}, training, backend=backend, card_gib=card)
    off, why = decide(140.0)
    assert off is False and "auto: off" in why and f"{without:.1f} GiB" in why
    # Just too small for the no-checkpointing step at 80% of the usable memory: on.
    tight = without / 0.8 + 1.0 - 0.1
    assert decide(tight) == ("unsloth", decide(tight)[1]) and "auto: on (unsloth)" in decide(tight)[1]
    assert decide(without / 0.8 + 1.0 + 0.1)[0] is False
    assert decide(tight, backend="hf")[0] is True
    assert decide(None)[0] == "unsloth" and "no GPU" in decide(None)[1]
    assert decide(140.0, use_gradient_checkpointing="unsloth") == ("unsloth", None)
    assert decide(140.0, use_gradient_checkpointing=False) == (False, None)


def test_recipe_plan_says_what_auto_checkpointing_decides(tmp_path):
    recipe = _recipe(tmp_path, "fast", _config(num_hidden_layers=4),
                     "load_in_4bit: false, max_seq_length: 512",
                     "backend: unsloth, gpu_memory_gib: 140, per_device_train_batch_size: 8")
    plan = run_cli("plan", recipe, "--run-dir", tmp_path / "runs", timeout=120)
    assert "gradient checkpointing False)" in plan.stdout
    assert "gradient checkpointing auto: off, the step needs about" in plan.stdout
