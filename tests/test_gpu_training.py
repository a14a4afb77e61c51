"""On a CUDA machine with unsloth: recipes/gpu_smoke.yaml runs the whole pipeline with Unsloth,
QLoRA trains through the same path, and the hf backend trains on the GPU too."""

from __future__ import annotations

import importlib.util
import json
import os

import pytest
from conftest import ROOT, run_cli

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(importlib.util.find_spec("unsloth") is None, reason="needs unsloth"),
]
RECIPE = ROOT / "recipes" / "gpu_smoke.yaml"


def _run(tmp_path, *args):
    # Keep the caller's PYTHONPATH: on the GPU machine unsloth and trl come from carried wheels.
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    result = run_cli("run", RECIPE, "--run-dir", tmp_path, "-q", *args, timeout=1200,
                     env={"PYTHONPATH": path})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return tmp_path / "gpu_smoke", result.stderr


def _summary(run) -> dict:
    return json.loads((run / "training" / "summary.json").read_text())


def test_gpu_smoke_recipe_runs_the_whole_pipeline_with_unsloth(tmp_path):
    run, log = _run(tmp_path)
    summary = _summary(run)
    assert summary["backend"] == "unsloth" and summary["device"].startswith("GPU ")
    assert summary["steps"] == 30 and summary["final_loss"] < summary["first_loss"]
    assert summary["mask"]["checked"] and summary["mask"]["rows"] > 0
    assert summary["bf16"] and summary["peak_gpu_allocated_gib"] > 0
    assert summary["tokens_per_s"] > 0 and summary["eval_loss"] is not None
    assert "only assistant answers are trained" in log
    mask = json.loads((run / "chat_template" / "mask_report.json").read_text())
    assert mask["every_row_verified"]
    assert (run / "training" / "adapter" / "adapter_model.safetensors").is_file()
    for step in ("evaluation", "export"):
        assert (run / step / ".complete.json").is_file()
    export = json.loads((run / "export" / "export_report.json").read_text())
    assert {"lora", "merged_16bit"} <= set(export["targets"])


def test_qlora_trains_through_the_unsloth_trainer_path(tmp_path):
    run, _ = _run(tmp_path, "--until", "training", "--set", "model.load_in_4bit=true",
                  "--set", "training.max_steps=10", "--set", "training.eval_fraction=0")
    summary = _summary(run)
    assert summary["backend"] == "unsloth" and summary["steps"] == 10
    assert summary["final_loss"] < summary["first_loss"]


def test_hf_backend_trains_on_the_gpu_with_trl_kernels(tmp_path):
    run, _ = _run(tmp_path, "--until", "training", "--set", "training.backend=hf",
                  "--set", "training.max_steps=10", "--set", "training.eval_fraction=0")
    summary = _summary(run)
    assert summary["backend"] == "hf" and summary["device"].startswith("GPU ")
    assert summary["optim"] == "adamw_8bit" and summary["bf16"]
    assert not any("Triton" in note for note in summary["notes"])
    assert summary["final_loss"] < summary["first_loss"]


def test_packed_training_runs_the_lm_head_on_trained_positions_with_unsloth(tmp_path):
    """Packed batches with Unsloth: the head on the trained positions only, the contract's loss
    check against the independent masked cross-entropy, and evaluation through the same collator."""
    run, _ = _run(tmp_path, "--until", "training", "--set", "training.packing=true",
                  "--set", "training.max_steps=10")
    summary = _summary(run)
    contract = summary["contract"]
    assert summary["backend"] == "unsloth" and summary["steps"] == 10
    assert contract["loss"]["lm_head"] == "trained positions only"
    assert contract["loss_check"]["relative_difference"] < 1e-2
    assert summary["eval_loss"] is not None
    assert summary["final_loss"] < summary["first_loss"]
