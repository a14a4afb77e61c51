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


def distributed_problems(loaded, steps_to_run: list[str]) -> list[Problem]:
    """training.distributed asks for GPUs this machine lacks, or for a strategy its backend lacks."""
    if "training" not in steps_to_run:
        return []
    from runner.train.distributed_layout import layout_of, layout_problems

    training = loaded.data["training"]
    return [loaded.problem(("training", *path), message, hint)
            for path, message, hint in layout_problems(training, layout_of(training))]


def memory_plan(loaded) -> tuple[list[str], str | None]:
    """The training step's estimated peak GPU memory (runner.train.memory_plan), and a problem
    when it exceeds the card planned for."""
    from runner.train.memory_plan import plan
    from runner.validate import fill_defaults, schema

    sections = {name: fill_defaults(dict(loaded.data.get(name) or {}), schema()["$defs"][name],
                                    top=False) for name in ("model", "lora", "training")}
    return plan(sections["model"], sections["lora"], sections["training"], loaded.path.parent)


def memory_problems(loaded, steps_to_run: list[str]) -> list[Problem]:
    if "training" not in steps_to_run:
        return []
    _, problem = memory_plan(loaded)
    hint = ("lower per_device_train_batch_size (raise gradient_accumulation_steps to keep the "
            "rows per step) or model.max_seq_length, load in 4 bits, or keep "
            "lora.use_gradient_checkpointing: unsloth")
    return [loaded.problem(("training",), problem, hint)] if problem else []


def notes(loaded, rows: list[tuple[str, str, str]]) -> list[str]:
    """Lines `recipe plan` prints that are no problem: the training step's memory plan, and
    the training processes and batches for a recipe that sets training.distributed."""
    training = loaded.data.get("training")
    planned = any(label.split(" ", 1)[0] == "training" for label, _, _ in rows)
    lines = memory_plan(loaded)[0] if planned else []
    if not planned or not any(path[:2] == ("training", "distributed") for path in loaded.origins):
        return lines
    from runner.train.distributed_layout import plan_lines
    return lines + plan_lines(training)


def preflight(loaded, rows: list[tuple[str, str, str]]) -> list[Problem]:
    """Every problem of the steps `describe` marks to run (rows: (label, action, reason))."""
    to_run = [label.split(" ", 1)[0] for label, action, _ in rows if action == "run"]
    return (model_problems(loaded, to_run) + distributed_problems(loaded, to_run)
            + memory_problems(loaded, to_run))


def format_problems(problems: list[Problem]) -> str:
    count = len(problems)
    lines = [f"pre-flight: {count} problem{'s' * (count != 1)} would stop this run:"]
    return "\n".join(lines + [f"  {problem}" for problem in problems])
