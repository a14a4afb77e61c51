"""Golden loss on the real model: SmolLM2-135M-Instruct, fixed pairs, 6 LoRA steps on CPU
(batches of two rows cut to 128 tokens, so the test stays near a minute).

The loss at the first logged step (the base model on the first batch: it moves when the data,
the template, the mask or the model loading changes) and after 6 steps (it moves when the
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
# Recorded on the 2-core CPU machine (transformers 5.17, peft 0.21.2, torch 2.13 CPU), batches of
# 2 rows cut to 128 tokens: step 1 = 3.3044, step 6 = 2.5618. Bounds leave room for float noise
# across CPUs; a two-row batch is noisy, hence the mean of the last three steps for the drop.
FIRST_STEP = (3.27, 3.34)
LAST_STEP = 6
AFTER_LAST_STEP = (2.35, 2.80)
MIN_DROP = 0.15  # (first - mean of the last three) / first; measured 0.23

INERT_LORA = """
import peft.tuners.lora.layer as layer
original = layer.LoraLayer.update_layer
def update_layer(self, adapter_name, *args, **kwargs):
    original(self, adapter_name, *args, **kwargs)
    self.scaling[adapter_name] = 0.0   # attached and trainable, but adds nothing
layer.LoraLayer.update_layer = update_layer
"""


def _train(run_dir: Path, *overrides: str, prelude: str = "", refused: bool = False):
    """Run the golden recipe through the real CLI; the logged training losses, step by step
    (refused: the run must fail; its stderr). The runs share one run folder: the data half and
    the chat template are made once, and the training step re-runs whenever its settings change
    (a prelude is no setting: the faulty-LoRA run forces it)."""
    code = prelude + "\nimport sys\nfrom runner.cli import main\nsys.exit(main())"
    args = ["run", str(RECIPE), "--run-dir", str(run_dir), "--quiet"]
    if prelude:
        args += ["--force", "training"]
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
    last = LAST_STEP - 1
    if len(losses) >= LAST_STEP and not AFTER_LAST_STEP[0] <= losses[last] <= AFTER_LAST_STEP[1]:
        problems.append(f"step-{LAST_STEP} loss {losses[last]:.4f} outside {AFTER_LAST_STEP}")
    tail = sum(losses[-3:]) / len(losses[-3:])
    if len(losses) >= LAST_STEP and (losses[0] - tail) / losses[0] < MIN_DROP:
        problems.append(f"loss fell only {(losses[0] - tail) / losses[0]:.1%} (< {MIN_DROP:.0%})")
    return problems


def test_golden_loss_and_the_faults_it_catches(tmp_path):
    good = _train(tmp_path)
    assert len(good) == LAST_STEP and golden_problems(good) == [], good

    every_token = _train(tmp_path, "training.train_on_responses_only=false",
                         "training.max_steps=1")
    assert any("first-step loss" in p for p in golden_problems(every_token)), every_token

    # The training contract (runner/train/contract.py) now stops an inert LoRA after its first
    # step, since no gradient reaches the adapters, before the loss curve could show it.
    refused = _train(tmp_path, prelude=INERT_LORA, refused=True)
    assert "have no gradient" in refused, refused[-2000:]
