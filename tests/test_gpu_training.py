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


def test_cuda_graphs_train_packed_steps_as_the_eager_layers_do(tmp_path):
    """The same packed recipe with the decoder layers replayed as CUDA graphs and without:
    every lengths is recorded before training, and the losses follow the eager ones."""
    common = ("--until", "training", "--set", "training.packing=true",
              "--set", "training.per_device_train_batch_size=8",
              "--set", "training.gradient_accumulation_steps=1",
              "--set", "lora.use_gradient_checkpointing=false", "--set", "training.max_steps=12",
              "--set", "training.eval_fraction=0.1", "--set", "training.eval_steps=6")
    losses, summaries = {}, {}
    for graphs in ("true", "false"):
        run, log = _run(tmp_path / graphs, *common, "--set", f"training.cuda_graphs={graphs}")
        summaries[graphs] = _summary(run)
        metrics = [json.loads(line) for line in
                   (run / "training" / "metrics.jsonl").read_text().splitlines()]
        losses[graphs] = [row["loss"] for row in metrics if "loss" in row]
        assert ("cuda graphs: " in log) == (graphs == "true"), log[-3000:]
    recorded = summaries["true"]["cuda_graphs"]
    assert recorded["lengths"] and all(n % recorded["multiple"] == 0 for n in recorded["lengths"])
    assert summaries["false"]["cuda_graphs"] is None
    assert summaries["true"]["eval_loss"] is not None
    assert len(losses["true"]) == len(losses["false"]) == 12
    assert abs(losses["true"][0] / losses["false"][0] - 1) < 1e-2, losses
    assert max(abs(a / b - 1) for a, b in zip(losses["true"], losses["false"], strict=True)) < 5e-2
