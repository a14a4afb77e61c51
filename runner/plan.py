"""Validated recipe -> plan: the steps to run, in order, with their settings and inputs.

A step's cache key hashes (step type, version, its settings, the settings of other sections it
uses - whole sections or only the keys it names -, the content hashes of its inputs, its
fingerprint of outside files). The executor compares keys with the
completion records in the run folder: same key -> "didn't change, skipping".
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

from runner.artifacts import hash_json, read_json
from runner.errors import PlanError, Problem
from runner.registry import SELECTOR, STEP_ORDER, StepSpec, lookup

COMPLETE = ".complete.json"


@dataclass
class PlannedStep:
    name: str
    spec: StepSpec
    settings: dict
    sections: dict

    def key(self, input_hashes: dict[str, str], recipe_dir: Path) -> str:
        fingerprint = _fingerprint(self.spec, self.settings, recipe_dir)
        return hash_json({"step": self.name, "kind": self.spec.kind, "version": self.spec.version,
                          "settings": self.settings, "sections": self.sections,
                          "inputs": {n: input_hashes.get(n) for n in self.spec.inputs},
                          "fingerprint": fingerprint})[:32]


def _fingerprint(spec: StepSpec, settings: dict, recipe_dir: Path):
    """Outside data a step reads (local files...): part of its key, so edits re-run it."""
    return spec.fingerprint(settings, recipe_dir) if spec.fingerprint else None


def section_settings(data: dict, name: str) -> dict:
    # `sources` is a list of entries; every other section is a mapping.
    return {"entries": data[name]} if name == "sources" else data[name]


def check_sections(loaded) -> list[Problem]:
    """Sections whose upstream steps are missing, reported at the section's key."""
    problems = []
    data = loaded.data
    for name in STEP_ORDER:
        if name not in data:
            continue
        try:
            spec = lookup(name, section_settings(data, name))
        except KeyError as exc:
            problems.append(loaded.problem((name,), str(exc).strip("'\"")))
            continue
        for needed in spec.inputs:
            if needed not in data:
                problems.append(loaded.problem(
                    (name,), f"the {name} step reads the output of '{needed}', which is missing",
                    f"add `{needed}: {{}}` to take its defaults, or remove `{name}`"))
    return problems


def settings_sections_used(data: dict) -> set[str]:
    """Settings-only sections (model, lora, ...) that present steps read."""
    used = set()
    for name in STEP_ORDER:
        if name in data:
            used.update(path.split(".", 1)[0] for path in lookup(name, section_settings(data, name)).uses)
    return used - set(data)


def used_settings(data: dict, uses: tuple[str, ...]) -> dict[str, dict]:
    """What a step's `uses` names, copied out of the recipe: {"model": {...}} for "model",
    {"model": {"name": ..., "max_seq_length": ...}} for "model.name" and "model.max_seq_length".
    A named key the recipe lacks stays absent (its default was filled in, or there is none)."""
    picked: dict[str, dict] = {}
    for path in uses:
        parts = path.split(".")
        source, target = data, picked
        for part in parts[:-1]:
            source = source.get(part) if isinstance(source, dict) else None
            target = target.setdefault(part, {})
        if isinstance(source, dict) and parts[-1] in source:
            target[parts[-1]] = copy.deepcopy(source[parts[-1]])
    return picked


def build_plan(data: dict) -> list[PlannedStep]:
    steps = []
    for name in STEP_ORDER:
        if name in data:
            settings = section_settings(data, name)
            spec = lookup(name, settings)
            steps.append(PlannedStep(name, spec, settings, used_settings(data, spec.uses)))
    return steps


def select(plan: list[PlannedStep], start: str | None, stop: str | None) -> tuple[int, int]:
    names = [s.name for s in plan]
    for wanted in (start, stop):
        if wanted and wanted not in names:
            raise PlanError(f"no step named '{wanted}' in this recipe; its steps are: "
                            + ", ".join(names))
    first = names.index(start) if start else 0
    last = names.index(stop) if stop else len(names) - 1
    if first > last:
        raise PlanError(f"--from {start} comes after --until {stop}")
    return first, last


def completion(step_dir: Path) -> dict | None:
    """The completion record of a finished step, or None if the folder is not complete."""
    try:
        return read_json(step_dir / COMPLETE)
    except (OSError, ValueError):
        return None


def describe(plan: list[PlannedStep], run_dir: Path, recipe_dir: Path, force: set,
             first: int, last: int) -> list[tuple[str, str, str]]:
    """(step, action, reason) for each step, as `recipe plan` shows it."""
    rows, hashes, running = [], {}, set()
    for index, item in enumerate(plan):
        record = completion(run_dir / item.name)
        label = f"{item.name} ({SELECTOR.get(item.name, 'type')}={item.spec.kind})"
        if index > last:
            rows.append((label, "stop", "after --until"))
            continue
        hashes[item.name] = record and record.get("content_hash")
        if index < first:
            action = "use" if record else "missing"
            rows.append((label, action, "before --from" + ("" if record else ": run it first")))
            continue
        changed_inputs = running & set(item.spec.inputs)
        if item.name in force or "*" in force:
            reason = "forced"
        elif record is None:
            reason = "never ran (or did not finish)"
        elif changed_inputs:
            reason = (f"{', '.join(sorted(changed_inputs))} runs first; skipped then if "
                      "its output comes out unchanged")
        elif record.get("key") != item.key(hashes, recipe_dir):
            reason = "settings, inputs or code changed"
        else:
            rows.append((label, "skip", "didn't change"))
            continue
        rows.append((label, "run", reason))
        running.add(item.name)
    return rows
