"""Pre-flight: what cannot work on this machine, said before any step runs.

`recipe plan` lists these problems under its table; `recipe run` refuses to start while there is
one, so a run never spends minutes on the data half and then stops at a model it cannot load.
Each check is cheap: no model is loaded and torch is not imported.
"""

from __future__ import annotations

from runner.errors import Problem

MODEL_STEPS = ("chat_template", "training", "evaluation", "export")


def model_problems(loaded, steps_to_run: list[str]) -> list[Problem]:
    """The model is needed by a step that will run, and cannot be had here (offline, missing)."""
    from runner.models import offline_problem

    if not any(name in MODEL_STEPS for name in steps_to_run):
        return []
    model = loaded.data.get("model") or {}
    problem = offline_problem(model, loaded.path.parent)
    if problem is None:
        return []
    needed = ", ".join(name for name in steps_to_run if name in MODEL_STEPS)
    return [loaded.problem(("model", "name"), problem, f"needed by: {needed}")]


def preflight(loaded, rows: list[tuple[str, str, str]]) -> list[Problem]:
    """Every problem of the steps `describe` marks to run (rows: (label, action, reason))."""
    to_run = [label.split(" ", 1)[0] for label, action, _ in rows if action == "run"]
    return model_problems(loaded, to_run)


def format_problems(problems: list[Problem]) -> str:
    count = len(problems)
    lines = [f"pre-flight: {count} problem{'s' * (count != 1)} would stop this run:"]
    return "\n".join(lines + [f"  {problem}" for problem in problems])
