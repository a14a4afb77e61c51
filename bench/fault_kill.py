"""SIGKILL at random moments in every step of the demo: each re-run completes, and its artifacts
are identical to an uninterrupted run's (each step's content hash).

One uninterrupted reference run, then campaigns: a fresh run folder is run, killed (its whole
process group, as an OOM kill or a power loss would take it) a random delay after a chosen step
starts, re-run and killed again in the next step, and so on; then run to the end. After every
kill no step folder may look complete unless its content is the reference's, and at the end
every step's hash must be the reference's. tests/test_faults.py runs a few kills of this in
`make test`.

Usage: OMP_NUM_THREADS=1 python bench/fault_kill.py [--kills 24] [--seed 0] [--out bench/results/faults.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "recipes" / "demo.yaml"
STEPS = ("sources", "cleaning", "pairing", "validation", "chat_template", "training",
         "evaluation", "export")
# The demo made short enough to be killed many times: six modules, six training steps with a
# checkpoint every three (a kill after one resumes from it).
SHORT = ("--set", "sources.0.modules=[json, csv, pathlib, itertools, functools, collections]",
         "--set", "training.max_steps=6", "--set", "training.save_steps=3",
         "--set", "training.eval_steps=3")
ENV = {"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "-1", "PYTHONPATH": str(ROOT)}


def command(run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "runner", "run", str(DEMO), "--run-dir", str(run_dir),
            "--quiet", *SHORT]


def run_to_end(run_dir: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(command(run_dir), cwd=ROOT, env={**os.environ, **ENV}, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)


CHECKPOINT = "checkpoint"  # a target: the training step's first complete checkpoint


@dataclass
class Kill:
    target: str          # the step whose start armed the kill (or CHECKPOINT)
    delay: float         # seconds after that start
    killed_in: str = ""  # the step in progress when the kill landed ("" : the run finished first)
    output: list[str] = field(default_factory=list)


def run_and_kill(run_dir: Path, kill: Kill, timeout: float = 600) -> Kill:
    """Run; `kill.delay` s after "<target>: running", SIGKILL the run's process group."""
    process = subprocess.Popen(command(run_dir), cwd=ROOT, env={**os.environ, **ENV}, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               start_new_session=True)
    current, timer = [""], None

    def fire():
        kill.killed_in = current[0]
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            kill.killed_in = ""
    if kill.target == CHECKPOINT:
        threading.Thread(target=_at_checkpoint, args=(run_dir, process, kill, fire),
                         daemon=True).start()
    for line in process.stdout:
        kill.output.append(line)
        step, _, rest = line.partition(": ")
        if rest.startswith("running"):
            current[0] = step
        elif rest.startswith(("done", "didn't change")) and current[0] == step:
            current[0] = ""
        if step == kill.target and rest.startswith("running") and timer is None:
            timer = threading.Timer(kill.delay, fire)
            timer.start()
    process.wait(timeout=timeout)
    if timer is not None:
        timer.cancel()
    if process.returncode != -signal.SIGKILL:
        kill.killed_in = ""
    return kill


def _at_checkpoint(run_dir: Path, process, kill: Kill, fire) -> None:
    """Fire `kill.delay` s after the training step's first checkpoint is complete (its
    trainer_state.json is written last): the re-run must resume from it."""
    cache = run_dir / "demo" / "cache" / "training"
    while process.poll() is None:
        if any(cache.glob("*/checkpoint-*/trainer_state.json")):
            time.sleep(kill.delay)
            fire()
            return
        time.sleep(0.02)


def content_hashes(run: Path) -> dict[str, str | None]:
    hashes = {}
    for step in STEPS:
        record = run / step / ".complete.json"
        hashes[step] = json.loads(record.read_text())["content_hash"] if record.is_file() else None
    return hashes


def wrong_complete_folders(run: Path, reference: dict) -> list[str]:
    """Steps whose folder looks complete but does not hold the reference's content."""
    return [step for step, value in content_hashes(run).items()
            if value is not None and value != reference[step]]


def campaign(run_dir: Path, kills: list[Kill], reference: dict) -> dict:
    """Kill the run once per entry (in order), then run it to the end; what happened."""
    landed = []
    for kill in kills:
        if not _retarget(run_dir / "demo", kill):
            break                                # every step is done: nothing left to kill
        run_and_kill(run_dir, kill)
        wrong = wrong_complete_folders(run_dir / "demo", reference)
        if wrong:
            raise AssertionError(f"after a kill in {kill.killed_in or '(none)'}, {wrong} look "
                                 f"complete with other content:\n{''.join(kill.output[-20:])}")
        landed.append(kill.killed_in)
    final = run_to_end(run_dir)
    if final.returncode != 0:
        raise AssertionError(f"the run after the kills failed:\n{final.stdout[-3000:]}")
    hashes = content_hashes(run_dir / "demo")
    differ = [step for step in STEPS if hashes[step] != reference[step]]
    return {"kills": landed, "differ": differ,
            "resumed": "resuming from checkpoint" in final.stdout + "".join(
                line for kill in kills for line in kill.output)}


def _retarget(run: Path, kill: Kill) -> bool:
    """Aim a kill whose step an earlier kill overshot (it is complete now, so the next run
    skips it) at the first unfinished step instead; False when every step is finished."""
    done = content_hashes(run) if run.is_dir() else dict.fromkeys(STEPS)
    pending = [step for step in STEPS if not done[step]]
    if not pending:
        return False
    aimed = "training" if kill.target == CHECKPOINT else kill.target
    if done[aimed]:
        kill.target = pending[0]
    return True


# Rough length of each step in the short demo on 2 cores (s): a kill lands within it.
SPAN = {"sources": 0.1, "cleaning": 0.12, "pairing": 0.06, "validation": 1.6,
        "chat_template": 10.0, "training": 9.0, "evaluation": 5.0, "export": 3.0,
        CHECKPOINT: 0.5}


def _order(target: str) -> float:
    return STEPS.index("training") + 0.5 if target == CHECKPOINT else STEPS.index(target)


def plan_kills(count: int, rng: random.Random) -> list[list[Kill]]:
    """Campaigns of kills in increasing step order, `count` kills in all, every step covered;
    every other kill aimed at training lands after its first checkpoint instead."""
    targets = [STEPS[i % len(STEPS)] for i in range(count)]
    trained = [i for i, t in enumerate(targets) if t == "training"]
    for i in trained[::2]:
        targets[i] = CHECKPOINT
    rng.shuffle(targets)
    campaigns, current = [], []
    for target in targets:
        if current and _order(target) <= _order(current[-1].target):
            campaigns.append(current)
            current = []
        current.append(Kill(target, round(rng.uniform(0.0, SPAN[target]), 2)))
    return campaigns + ([current] if current else [])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="recipe-fault-kill-"))
    started = time.monotonic()
    try:
        reference_run = run_to_end(work / "reference")
        assert reference_run.returncode == 0, reference_run.stdout[-3000:]
        reference = content_hashes(work / "reference" / "demo")
        results = []
        for index, kills in enumerate(plan_kills(args.kills, random.Random(args.seed))):
            result = campaign(work / f"killed-{index}", kills, reference)
            result["armed"] = [f"{k.target}+{k.delay}s" for k in kills]
            results.append(result)
            print(json.dumps(result), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = render(results, args, time.monotonic() - started)
    print(report)
    if args.out:
        args.out.write_text(report, encoding="utf-8")
    return 1 if any(r["differ"] for r in results) else 0


def render(results: list[dict], args, seconds: float) -> str:
    landed = [step for r in results for step in r["kills"] if step]
    lines = ["# SIGKILL at random moments (bench/fault_kill.py)", "",
             f"Machine: {platform.node()}, {os.cpu_count()} CPUs, {platform.platform()}, Python "
             f"{platform.python_version()}; seed {args.seed}; {seconds:.0f} s in all.", "",
             "Each kill is SIGKILL to the run's whole process group (`recipe run` on the short "
             "demo: six modules, six training steps, a checkpoint every three), a random delay "
             "after the armed step started (`checkpoint`: after the training step's first "
             "complete checkpoint); the run is then started again, killed again or run to the "
             "end.", "",
             f"{args.kills} kills armed, {len(landed)} landed inside a step (the others came after "
             "the run had finished that step and the rest); by step: "
             + ", ".join(f"{s} {landed.count(s)}" for s in STEPS) + ".", "",
             "| campaign | kills armed (step + delay) | killed in | re-run identical |",
             "|---|---|---|---|"]
    for index, r in enumerate(results):
        lines.append(f"| {index} | {', '.join(r['armed'])} | {', '.join(k or '-' for k in r['kills'])} "
                     f"| {'yes' if not r['differ'] else 'NO: ' + ', '.join(r['differ'])} |")
    same = sum(not r["differ"] for r in results)
    lines += ["", f"{same} of {len(results)} campaigns ended with every step's content hash equal "
              "to the uninterrupted run's; after every kill, no step folder looked complete with "
              "other content.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
