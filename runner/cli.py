"""The `recipe` command line: validate, plan, run, show, schema, steps, init, diff, serve.

Only light modules are imported here; steps import torch & co. when they run.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from runner.errors import PlanError, RecipeError, StepError

RUN_DIR_HELP = "Folder holding run folders (default: runs)."


def _fail(message: str, code: int) -> None:
    click.echo(message, err=True)
    sys.exit(code)


def _load(recipe: str, overrides=()):
    from runner.validate import load_and_validate
    try:
        return load_and_validate(recipe, list(overrides))
    except RecipeError as exc:
        count = len(exc.problems)
        _fail(f"{exc}\n{count} problem{'s' * (count != 1)} found in {recipe}", 2)


def _run_dir(loaded, run_dir: str) -> Path:
    return Path(run_dir) / loaded.data["name"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="recipe-runner")
def main():
    """Declarative YAML recipes for fine-tuning LLMs (GPT-OSS first)."""


@main.command()
@click.argument("recipes", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a value.")
def validate(recipes, overrides):
    """Check recipes against the schema; report every problem with file:line:col."""
    from runner.validate import load_and_validate
    failed = 0
    for recipe in recipes:
        try:
            load_and_validate(recipe, list(overrides))
            click.echo(f"{recipe}: ok")
        except RecipeError as exc:
            failed += 1
            click.echo(str(exc), err=True)
            click.echo(f"{recipe}: {len(exc.problems)} problem(s)", err=True)
    sys.exit(2 if failed else 0)


@main.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a value.")
@click.option("--from", "start", metavar="STEP", help="Start at STEP; earlier steps' artifacts are reused.")
@click.option("--until", "stop", metavar="STEP", help="Stop after STEP.")
@click.option("--force", "force", multiple=True, is_flag=False, flag_value="*", metavar="[STEP]",
              help="Re-run STEP even if unchanged (alone: every step).")
@click.option("--run-dir", default="runs", show_default=True, help=RUN_DIR_HELP)
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def run(recipe, overrides, start, stop, force, run_dir, quiet):
    """Run a recipe: each step runs unless its inputs and settings did not change."""
    from runner.execute import execute
    from runner.plan import build_plan
    loaded = _load(recipe, overrides)
    target = _run_dir(loaded, run_dir)
    _refuse_preflight(loaded, target, start, stop, force)
    if "training" in loaded.data:
        # Unsloth must patch transformers/trl before any step imports them
        from runner.train.train_common import preload_unsloth
        preload_unsloth(loaded.data["training"])
    try:
        manifest = execute(build_plan(loaded.data), loaded, target, force=set(force),
                           start=start, stop=stop, quiet=quiet)
    except (PlanError, StepError) as exc:
        _write_report(target)
        _fail(f"error: {exc}", 2 if isinstance(exc, PlanError) else 1)
    except KeyboardInterrupt:
        _write_report(target)
        _fail("interrupted: the step in progress was discarded", 130)
    steps = manifest.data["steps"]
    summary = ", ".join(f"{name} {info['status']}" for name, info in steps.items())
    report = _write_report(target)
    click.echo(f"run finished: {summary}\nartifacts: {target}" + (f"\nreport: {report}" if report else ""))


def _planned(loaded, target: Path, start, stop, force) -> list[tuple[str, str, str]]:
    from runner.plan import build_plan, describe, select
    steps = build_plan(loaded.data)
    try:
        first, last = select(steps, start, stop)
        _check_force(force, [s.name for s in steps])
    except PlanError as exc:
        _fail(f"error: {exc}", 2)
    return describe(steps, target, loaded.path.parent, set(force), first, last)


def _check_force(force, names: list[str]) -> None:
    """--force STEP names a step of this recipe, as --from and --until must ("*": --force alone)."""
    for wanted in force:
        if wanted != "*" and wanted not in names:
            raise PlanError(f"--force {wanted}: no step named '{wanted}' in this recipe; its steps "
                            f"are: {', '.join(names)} (or --force alone for every step)")


def _refuse_preflight(loaded, target: Path, start, stop, force) -> None:
    from runner.preflight import format_problems, preflight
    problems = preflight(loaded, _planned(loaded, target, start, stop, force), target)
    if problems:
        _fail(format_problems(problems) + "\nnothing was run", 2)


def _write_report(run_dir: Path) -> Path | None:
    """The run report is a view of the artifacts: failing to draw it never fails the run."""
    if not (run_dir / "manifest.json").exists():
        return None
    try:
        from runner.reporting.report import write_report
        return write_report(run_dir)
    except Exception as exc:  # noqa: BLE001 - report problems are reported, not raised
        click.echo(f"warning: could not write the run report: {exc}", err=True)
        return None


@main.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE")
@click.option("--from", "start", metavar="STEP")
@click.option("--until", "stop", metavar="STEP")
@click.option("--force", "force", multiple=True, is_flag=False, flag_value="*", metavar="[STEP]")
@click.option("--run-dir", default="runs", show_default=True, help=RUN_DIR_HELP)
def plan(recipe, overrides, start, stop, force, run_dir):
    """Show what `run` would execute or skip, and why, and what would stop it here."""
    from runner.preflight import format_problems, notes, preflight
    loaded = _load(recipe, overrides)
    target = _run_dir(loaded, run_dir)
    rows = _planned(loaded, target, start, stop, force)
    width = max(len(r[0]) for r in rows)
    for label, action, reason in rows:
        click.echo(f"{label:<{width}}  {action:<7} {reason}")
    for line in notes(loaded, rows):
        click.echo(line)
    problems = preflight(loaded, rows, target)
    if problems:
        _fail(format_problems(problems), 2)


@main.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE")
def show(recipe, overrides):
    """Print the resolved recipe with each value's origin (secrets stay ${env:NAME})."""
    from runner.show import chat_markers_note, render
    loaded = _load(recipe, overrides)
    click.echo(render(loaded) + chat_markers_note(loaded), nl=False)


@main.command()
def schema():
    """Print the recipe JSON Schema."""
    from runner.validate import SCHEMA_PATH
    click.echo(SCHEMA_PATH.read_text(encoding="utf-8"), nl=False)


@main.command()
def steps():
    """List registered step types with their inputs, outputs and documentation."""
    from runner.registry import SELECTOR, registered
    for (section, kind), spec in sorted(registered().items()):
        selector = f" {SELECTOR.get(section, 'type')}={kind}" if kind != "default" else ""
        click.echo(f"{section}{selector}  (v{spec.version})")
        if spec.inputs:
            click.echo(f"    reads:  {', '.join(spec.inputs)}")
        click.echo(f"    writes: {', '.join(spec.outputs) or '-'}")
        for line in (spec.doc or "(no description)").splitlines():
            click.echo(f"    {line}")


def _register_optional_commands() -> None:
    from runner import cli_extra
    cli_extra.register(main)


_register_optional_commands()

if __name__ == "__main__":
    main()
