"""CUDA graphs for packed steps: where they are decided on or refused, the coarser packed lengths
and the memory they are planned with, eager layers for checks and evaluation, and training
without cyclic-GC pauses. The graphs themselves run on the GPU (tests/test_gpu_training.py)."""

from __future__ import annotations

import gc

import pytest
from training_helpers import section

from runner.errors import StepError
from runner.tiny_model import PRESETS
from runner.train.cuda_graphs import GRAPH_MULTIPLE, decide, eager_layers, reasons_against
from runner.train.memory_plan import estimate
from runner.train.memory_plan import plan as memory_plan
from runner.train.packing import PAD_MULTIPLE, collator_for
from runner.train.quiet_gc import quiet_gc


def _training(**values) -> dict:
    return section("training", **{"packing": True, "per_device_train_batch_size": 8,
                                  "gradient_accumulation_steps": 1, **values})


LORA = section("lora", use_gradient_checkpointing=False)


def test_auto_turns_graphs_on_only_for_one_packed_micro_batch_per_step_on_a_gpu():
    on, why = decide(_training(), LORA, "unsloth", True, False)
    assert on and "auto: on" in why and str(GRAPH_MULTIPLE) in why
    for training, backend, cuda, checkpointing, reason in (
            (_training(packing=False), "unsloth", True, False, "packing is false"),
            (_training(gradient_accumulation_steps=4), "unsloth", True, False,
             "gradient_accumulation_steps"),
            (_training(), "hf", True, False, "not unsloth"),
            (_training(), "unsloth", False, False, "no CUDA GPU"),
            (_training(), "unsloth", True, "unsloth", "checkpointing is on")):
        on, why = decide(training, LORA, backend, cuda, checkpointing)
        assert not on and why.startswith("cuda graphs auto: off") and reason in why
    assert "dropout" in reasons_against(_training(), {**LORA, "dropout": 0.1}, "unsloth", True,
                                        False)[0]


def test_graphs_asked_for_where_they_cannot_work_refuse_and_say_how_to_fix_it():
    with pytest.raises(StepError) as error:
        decide(_training(cuda_graphs=True, gradient_accumulation_steps=4), LORA, "unsloth",
               True, False)
    message = str(error.value)
    assert "training.cuda_graphs is true" in message and "gradient_accumulation_steps" in message
    assert "set training.cuda_graphs: auto" in message
    assert decide(_training(cuda_graphs=False), LORA, "unsloth", True, False)[0] is False


def test_a_wrong_value_is_refused_at_validation_with_its_key():
    from conftest import ROOT, run_cli
    assert section("training")["cuda_graphs"] == "auto"
    result = run_cli("validate", ROOT / "recipes" / "gpu_smoke.yaml",
                     "--set", "training.cuda_graphs=sometimes")
    assert result.returncode == 2 and "training.cuda_graphs" in result.stderr, result.stderr


class _Tokenizer:
    pad_token_id = 0


def test_packed_lengths_go_up_in_graph_steps_only_under_graphs():
    rows = [{"input_ids": list(range(1, 301)), "labels": list(range(1, 301))},
            {"input_ids": list(range(1, 401)), "labels": list(range(1, 401))}]
    plain = collator_for(_training(), _Tokenizer())(rows)["input_ids"].shape[-1]
    graphs = collator_for(_training(), _Tokenizer(), graphs=True)(rows)["input_ids"].shape[-1]
    assert plain == 768 and plain % PAD_MULTIPLE == 0
    assert graphs == 1024 and graphs % GRAPH_MULTIPLE == 0


def _config() -> dict:
    return {"model_type": "gpt_oss", "attention_bias": True,
            **PRESETS["gpt_oss"]["gpt-oss-20b"], "num_hidden_layers": 4}


def test_the_memory_plan_adds_the_graph_pool_and_the_coarser_lengths():
    model = section("model", max_seq_length=500)
    lora = section("lora", r=16, use_gradient_checkpointing=False)
    eager = estimate(_config(), model, lora, _training(), backend="unsloth")
    graphs = estimate(_config(), model, lora, _training(), backend="unsloth", graphs=True)
    assert eager.tokens == 4000 and graphs.tokens == 4096
    assert "graph_pool" not in eager.parts and graphs.parts["graph_pool"] > 0
    assert graphs.gib() > eager.gib() + graphs.gib("graph_pool")


def test_recipe_plan_names_the_decision_and_refuses_graphs_without_a_gpu(tmp_path):
    model = section("model", name="openai/gpt-oss-20b", max_seq_length=500)
    (tmp_path / "config.json").write_text(__import__("json").dumps(_config()))
    model["name"] = str(tmp_path)
    lora = section("lora", r=16, use_gradient_checkpointing=False)
    lines, problem = memory_plan(model, lora, _training(gpu_memory_gib=80, backend="unsloth"),
                                 tmp_path)
    assert problem is None
    assert any("CUDA graph pool" in line for line in lines)
    assert any("cuda graphs auto: on" in line for line in lines)
    lines, problem = memory_plan(model, lora, _training(cuda_graphs=True, backend="hf"), tmp_path)
    assert problem and "training.cuda_graphs is true" in problem and "not unsloth" in problem


def test_eager_layers_lifts_the_compiled_call_and_puts_it_back():
    torch = pytest.importorskip("torch")

    class Backbone(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.ModuleList([torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)])

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = Backbone()

    model = Model()
    for layer in model.model.layers:
        layer.compile(mode="reduce-overhead")
    compiled = [layer._compiled_call_impl for layer in model.model.layers]
    assert all(c is not None for c in compiled)
    with pytest.raises(RuntimeError), eager_layers(model):
        assert all(layer._compiled_call_impl is None for layer in model.model.layers)
        model.model.layers[0](torch.ones(1, 4))        # runs uncompiled, nothing traced
        raise RuntimeError("restored however the block ends")
    assert [layer._compiled_call_impl for layer in model.model.layers] == compiled
    with eager_layers(Model()):                          # nothing compiled: nothing to do
        pass


def test_training_runs_with_the_heap_frozen_and_gc_restored_however_it_ends():
    assert gc.isenabled()
    with pytest.raises(ValueError), quiet_gc():
        assert not gc.isenabled() and gc.get_freeze_count() > 0
        raise ValueError("a step failed")
    assert gc.isenabled() and gc.get_freeze_count() == 0
    gc.disable()
    try:
        with quiet_gc():
            pass
        assert not gc.isenabled()                        # it was off before: it stays off
    finally:
        gc.enable()
