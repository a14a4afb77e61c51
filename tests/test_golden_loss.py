"""Golden loss on the real model: SmolLM2-135M-Instruct, fixed pairs, 10 LoRA steps on CPU.

The loss at the first logged step (the base model on the first batch: it moves when the data,
the template, the mask or the model loading changes) and after 10 steps (it moves when the
optimizer, the adapter or the learning rate stop working) must stay inside recorded bounds, and
must fall. Two faults are injected on purpose to show that the bounds catch them: a mask that
trains every token, and a LoRA whose update is silently scaled to nothing (peft patched in the
child process, the way unsloth#3405 left expert adapters attached but inert).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "tests" / "golden" / "golden.yaml"
# Recorded on the 2-core CPU machine (transformers 5.17, peft 0.21.2, torch 2.13 CPU):
# step 1 = 2.8500, step 10 = 1.8219. Bounds leave room for float noise across CPUs.
FIRST_STEP = (2.82, 2.88)
AFTER_10_STEPS = (1.60, 2.05)
MIN_DROP = 0.25  # (first - mean of the last three) / first

INERT_LORA = """
import peft.tuners.lora.layer as layer
original = layer.LoraLayer.update_layer
def update_layer(self, adapter_name, *args, **kwargs):
    original(self, adapter_name, *args, **kwargs)
    self.scaling[adapter_name] = 0.0   # attached and trainable, but adds nothing
layer.LoraLayer.update_layer = update_layer
"""


def _train(tmp_path: Path, *overrides: str, prelude: str = "", refused: bool = False):
    """Run the golden recipe through the real CLI; the logged training losses, step by step
    (refused: the run must fail; its stderr)."""
    run_dir = tmp_path / "runs"
    code = prelude + "\nimport sys\nfrom runner.cli import main\nsys.exit(main())"
    args = ["run", str(RECIPE), "--run-dir", str(run_dir), "--quiet"]
    for override in overrides:
        args += ["--set", override]
    # One thread: on a 2-core machine shared with other work, OpenMP spinning costs more than it gains.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", code, *args], env=env, text=True,
                            capture_output=True, timeout=900)
    if refused:
        assert result.returncode != 0, result.stderr[-3000:]
        return result.stderr
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = run_dir / "golden_loss" / "training" / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    return [row["loss"] for row in rows if "loss" in row]


def golden_problems(losses: list[float]) -> list[str]:
    problems = []
    if not FIRST_STEP[0] <= losses[0] <= FIRST_STEP[1]:
        problems.append(f"first-step loss {losses[0]:.4f} outside {FIRST_STEP}")
    if len(losses) >= 10 and not AFTER_10_STEPS[0] <= losses[9] <= AFTER_10_STEPS[1]:
        problems.append(f"step-10 loss {losses[9]:.4f} outside {AFTER_10_STEPS}")
    tail = sum(losses[-3:]) / len(losses[-3:])
    if len(losses) >= 10 and (losses[0] - tail) / losses[0] < MIN_DROP:
        problems.append(f"loss fell only {(losses[0] - tail) / losses[0]:.1%} (< {MIN_DROP:.0%})")
    return problems


def test_golden_loss_and_the_faults_it_catches(tmp_path):
    good = _train(tmp_path / "good")
    assert len(good) == 10 and golden_problems(good) == [], good

    every_token = _train(tmp_path / "mask", "training.train_on_responses_only=false",
                         "training.max_steps=1")
    assert any("first-step loss" in p for p in golden_problems(every_token)), every_token

    # The training contract (runner/train/contract.py) now stops an inert LoRA after its first
    # step, since no gradient reaches the adapters, before the loss curve could show it.
    refused = _train(tmp_path / "lora", prelude=INERT_LORA, refused=True)
    assert "have no gradient" in refused, refused[-2000:]
