"""The step registry: recipe section (+ the value of its selector key) -> a plain step function.

A step function takes a `StepContext` and returns a dict of JSON-able metrics. It writes its
declared output files into `ctx.out_dir`; the executor moves that folder into place atomically.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Section order is the pipeline order; `model` and `lora` are settings read by later steps.
STEP_ORDER = ("sources", "cleaning", "pairing", "validation", "chat_template",
              "training", "evaluation", "gates", "export")
# The key inside a section that picks its implementation (absent: the "default" one).
SELECTOR = {"pairing": "strategy", "training": "backend"}


@dataclass(frozen=True)
class StepSpec:
    section: str
    kind: str
    func: Callable[[StepContext], dict]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    uses: tuple[str, ...]
    version: int
    fingerprint: Callable[[dict, Path], Any] | None
    volatile: tuple[str, ...]
    doc: str


_REGISTRY: dict[tuple[str, str], StepSpec] = {}


def step(section: str, kind: str = "default", *, inputs: Iterable[str] = (),
         outputs: Iterable[str] = (), uses: Iterable[str] = (), version: int = 1,
         fingerprint: Callable[[dict, Path], Any] | None = None, volatile: Iterable[str] = ()):
    """Register a step function.

    inputs: upstream steps whose artifact folders the step reads (`ctx.inputs[name]`).
    outputs: files (or folders) the step must leave in `ctx.out_dir`.
    uses: the settings of other recipe sections the step reads: a whole section ("lora") or
        dotted key paths in one ("model.name", "model.max_seq_length"). Only these are in
        `ctx.sections[section]` and in the cache key, so a setting the step never reads
        (model.load_in_4bit for chat_template) does not re-run it.
    version: bump when the implementation changes its output for the same settings.
    fingerprint: (settings, recipe_dir) -> extra cache-key data (e.g. hashes of local files read).
    volatile: outputs that differ run to run (timings, attempt logs) and so are left out of the
        content hash that later steps' keys are built from.
    """
    def register(func):
        key = (section, kind)
        if key in _REGISTRY:
            raise RuntimeError(f"step {section}/{kind} registered twice")
        _REGISTRY[key] = StepSpec(section, kind, func, tuple(inputs), tuple(outputs),
                                  tuple(uses), version, fingerprint, tuple(volatile),
                                  (func.__doc__ or "").strip())
        return func
    return register


def registered() -> dict[tuple[str, str], StepSpec]:
    from runner import steps  # noqa: F401  (importing registers every step)
    return dict(_REGISTRY)


def lookup(section: str, settings: dict) -> StepSpec:
    kind = str(settings.get(SELECTOR[section], "default")) if section in SELECTOR else "default"
    spec = registered().get((section, kind))
    if spec is None:
        raise KeyError(f"no step registered for {section} {SELECTOR.get(section, 'type')}={kind}")
    return spec


@dataclass
class StepContext:
    """Everything a step may read or write; nothing else is shared between steps."""
    recipe_name: str
    step: str
    key: str                             # this step's cache key (hash of settings and inputs)
    settings: dict                       # this section, defaults filled, secrets as ${env:X}
    sections: dict[str, dict]            # what `uses` names of other sections (only that)
    inputs: dict[str, Path]              # upstream step -> its completed artifact folder
    out_dir: Path                        # write artifacts here (a temporary folder)
    run_dir: Path                        # runs/<name>/
    cache_dir: Path                      # kept across re-runs of this step (raw pages, checkpoints)
    recipe_dir: Path = Path(".")         # folder of the recipe file: relative paths start here
    force: bool = False
    quiet: bool = False
    metrics: dict = field(default_factory=dict)

    def log(self, message: str) -> None:
        from runner.console import log
        log(f"[{self.step}] {message}", quiet=self.quiet)

    def progress(self, iterable=None, total: int | None = None, desc: str = "", unit: str = "it"):
        from runner.console import progress
        return progress(iterable, total=total, desc=f"{self.step}: {desc}".rstrip(": "),
                        unit=unit, quiet=self.quiet)
