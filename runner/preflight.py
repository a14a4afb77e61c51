"""Pre-flight: what cannot work on this machine, said before any step runs.

`recipe plan` lists these problems under its table; `recipe run` refuses to start while there is
one, so a run never spends minutes on the data half and then stops at a model it cannot load,
a GPU it does not have or a token nobody set. Each check is cheap: no model is loaded and torch
is not imported (GPUs are counted as runner.train.distributed_layout counts them).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

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


def gpu_problems(loaded, steps_to_run: list[str]) -> list[Problem]:
    """The training step needs CUDA for the unsloth backend and for 4-bit loading. (Evaluation
    and export load full weights on a CPU by design, so 4-bit alone never stops them.)"""
    if "training" not in steps_to_run:
        return []
    from runner.train.distributed_layout import visible_gpus

    gpus = visible_gpus()
    problems = []
    if loaded.data["training"].get("backend") == "unsloth":
        if not gpus:
            problems.append(loaded.problem(
                ("training", "backend"), "the unsloth backend needs a CUDA GPU, and this machine "
                "has none visible", "set training.backend: auto (unsloth where a CUDA GPU is, hf "
                "elsewhere) or hf, or run on a CUDA machine (check CUDA_VISIBLE_DEVICES)"))
        elif importlib.util.find_spec("unsloth") is None:
            problems.append(loaded.problem(
                ("training", "backend"), "the unsloth backend is asked for, but unsloth is not "
                "installed", "`make install-gpu` installs it; or set training.backend: auto or hf"))
    if (loaded.data.get("model") or {}).get("load_in_4bit") and not gpus:
        problems.append(loaded.problem(
            ("model", "load_in_4bit"), "4-bit loading (bitsandbytes, QLoRA) needs a CUDA GPU, and "
            "this machine has none visible: the training step could not load the model",
            "set model.load_in_4bit: false (--set model.load_in_4bit=false) to train LoRA on full "
            "weights here, or run on a CUDA machine (check CUDA_VISIBLE_DEVICES)"))
    return problems


def token_problems(loaded, rows: list[tuple[str, str, str]], run_dir: Path | None) -> list[Problem]:
    """Tokens a step that will run reads from the environment, and nobody set. (`${env:NAME}`
    references are checked when the recipe loads; these are names the steps read themselves.)"""
    reasons = {label.split(" ", 1)[0]: reason for label, action, reason in rows if action == "run"}
    problems = []
    if "sources" in reasons:
        for index, entry in enumerate(loaded.data["sources"]):
            name = entry.get("token_env")
            if (entry.get("type") == "brightdata" and not os.environ.get(name)
                    and _must_fetch(entry, run_dir, reasons["sources"] == "forced")):
                problems.append(loaded.problem(
                    ("sources", index, "token_env"), f"the brightdata source reads its API token "
                    f"from the environment variable {name}, which is not set",
                    f"export {name}=... (a Bright Data API token, "
                    "https://brightdata.com/cp/setting/users) before running; it is read from "
                    "the environment only, never written anywhere"))
    export = loaded.data.get("export") or {}
    if "export" in reasons and "hub" in (export.get("targets") or []):
        name = export["hub"]["token_env"]
        if not os.environ.get(name):
            problems.append(loaded.problem(
                ("export", "hub", "token_env"), f"export target hub pushes with the Hugging Face "
                f"token in the environment variable {name}, which is not set",
                f"export {name}=hf_... (a token with write access), or drop hub from export.targets"))
    return problems


def _must_fetch(entry: dict, run_dir: Path | None, forced: bool) -> bool:
    """Some URL of a brightdata entry is not in the run's page cache (a fully cached entry
    needs no token), or the pages are fetched again anyway."""
    if forced or entry.get("refresh") or run_dir is None:
        return True
    from runner.sources.brightdata_source import page_variant
    from runner.sources.page_cache import PageCache

    cache = PageCache(run_dir / "cache" / "pages", {"source": "brightdata", **page_variant(entry)})
    return any(cache.get(url) is None for url in entry["urls"])


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


def preflight(loaded, rows: list[tuple[str, str, str]],
              run_dir: Path | None = None) -> list[Problem]:
    """Every problem of the steps `describe` marks to run (rows: (label, action, reason));
    run_dir: the run folder, whose page cache may spare a token."""
    to_run = [label.split(" ", 1)[0] for label, action, _ in rows if action == "run"]
    return (model_problems(loaded, to_run) + gpu_problems(loaded, to_run)
            + token_problems(loaded, rows, run_dir) + distributed_problems(loaded, to_run)
            + memory_problems(loaded, to_run))


def format_problems(problems: list[Problem]) -> str:
    count = len(problems)
    lines = [f"pre-flight: {count} problem{'s' * (count != 1)} would stop this run:"]
    return "\n".join(lines + [f"  {problem}" for problem in problems])
