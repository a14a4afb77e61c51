"""runs/<name>/report.html: one self-contained page summarizing a run, whatever state it is in.

Header, timings, data funnel, length histograms, mask example, loss curve, eval answers (base
and tuned side by side, with quality signals), gates and export sizes, with inline SVG plots and inline CSS (no network, no JavaScript). A step that did
not run gets the reason instead of a blank; a section whose artifacts cannot be read says so
without taking the rest of the report down.

    python -m runner.reporting.report RUN_DIR
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import datetime
from itertools import zip_longest
from pathlib import Path

from markupsafe import Markup

from runner.plan import COMPLETE
from runner.reporting.report_data import funnel_section, lengths_section, mask_section
from runner.reporting.report_eval import evaluation_section, gates_section
from runner.reporting.report_html import (
    CSS,
    badge,
    details,
    duration,
    join,
    key_values,
    paragraph,
    pre,
    table,
)
from runner.reporting.report_model import export_section, training_section
from runner.reporting.report_run import RunFolder
from runner.reporting.report_svg import PALETTE, Bar, hbars

STATUS_COLOR = {"ran": PALETTE[0], "failed": PALETTE[4], "running": PALETTE[1]}


def write_report(run_dir: Path) -> Path:
    """Write run_dir/report.html (through a temporary name, so no reader sees half a page)."""
    run_dir = Path(run_dir)
    target = run_dir / "report.html"
    page = render_page(RunFolder.load(run_dir))
    tmp = run_dir / f".report.html.tmp{os.getpid()}"
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, target)
    return target


def render_page(run: RunFolder) -> str:
    parts = (("timings", "Timings", timings_section), ("data", "Data funnel", funnel_section),
             ("lengths", "Length histograms", lengths_section), ("mask", "Loss mask", mask_section),
             ("training", "Training", training_section),
             ("evaluation", "Evaluation", evaluation_section), ("gates", "Gates", gates_section),
             ("export", "Export", export_section))
    sections = [_section(anchor, title, render, run) for anchor, title, render in parts]
    nav = join(Markup('<a href="#{}">{}</a>').format(anchor, title) for anchor, title, _ in parts)
    return str(Markup(
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<title>Run report: {name}</title><style>{css}</style></head>'
        '<body><main>{header}<nav>{nav}</nav>{sections}'
        '<p class="note">Written {now} by runner.reporting.report from {folder}.</p></main></body></html>\n').format(
        name=run.name, css=Markup(CSS), header=_guarded(header_section, run), nav=nav, sections=join(sections),
        now=time.strftime("%Y-%m-%d %H:%M:%S"), folder=str(run.path)))


def _guarded(render, run: RunFolder) -> Markup:
    try:
        return render(run)
    except Exception as error:  # a report of a broken run must still show everything else
        return Markup('<div class="error">This section could not be drawn: {}: {}</div>').format(
            type(error).__name__, error)


def _section(anchor: str, title: str, render, run: RunFolder) -> Markup:
    return Markup('<section id="{}"><h2>{}</h2>{}</section>').format(anchor, title, _guarded(render, run))


def _wall_time(manifest: dict) -> str | None:
    """The run's wall time: measured (`wall_s`), else from its whole-second timestamps, which
    cannot tell a 0.3 s run from an instant one: under a second, they say so."""
    if isinstance(manifest.get("wall_s"), (int, float)):
        return duration(manifest["wall_s"])
    try:
        started = datetime.strptime(manifest["started_at"], "%Y-%m-%dT%H:%M:%S%z")
        finished = datetime.strptime(manifest["finished_at"], "%Y-%m-%dT%H:%M:%S%z")
    except (KeyError, TypeError, ValueError):
        return None
    seconds = (finished - started).total_seconds()
    return "under 1 s" if seconds < 1 else duration(seconds)


def _recipe_yaml(recipe: dict) -> str:
    import yaml
    return yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True, width=100)


def header_section(run: RunFolder) -> Markup:
    manifest = run.manifest
    if not manifest:
        return Markup("<header><h1>Run report: {}</h1>{}</header>").format(
            run.name, paragraph(f"No manifest.json in {run.path}: only the step folders found "
                                "there are shown.", "warn"))
    failed = run.failed_step()
    error = (Markup('<div class="error"><b>{} failed:</b>{}</div>').format(
        failed, pre(run.step(failed).get("error") or "(no message)")) if failed else Markup(""))
    facts = key_values([
        ("status", badge(run.status)), ("started", manifest.get("started_at")),
        ("finished", manifest.get("finished_at") or "-"), ("wall time", _wall_time(manifest)),
        ("recipe files", Markup("<br>").join(manifest.get("recipe_files") or ["-"])),
        ("run folder", str(run.path)), ("runner", manifest.get("runner_version")),
        ("python", manifest.get("python")), ("platform", manifest.get("platform")),
    ])
    versions = [[name, version or "not installed"]
                for name, version in (manifest.get("packages") or {}).items()]
    half = (len(versions) + 1) // 2
    packages = table(["package", "version", "package", "version"],
                     [left + right for left, right in zip_longest(versions[:half], versions[half:],
                                                                  fillvalue=[Markup(""), Markup("")])])
    description = run.recipe.get("description")
    return Markup("<header><h1>Run report: {} {}</h1>{}{}<section>{}{}</section></header>").format(
        run.name, badge(run.status), paragraph(description) if description else "", error,
        Markup('<div class="grid"><div>{}</div><div>{}</div></div>').format(facts, packages),
        details("Resolved recipe (secrets stay ${env:NAME})", pre(_recipe_yaml(run.recipe))))


def _when(stamp: str | None, started: str | None) -> str:
    """A step's finishing time; its date only when the run started on another day."""
    if not stamp:
        return "-"
    day, _, clock = stamp.partition("T")
    same_day = started and started.startswith(day)
    return clock[:8] if same_day else f"{day} {clock[:8]}"


def _timing(run: RunFolder, name: str) -> tuple[list, Bar | None]:
    info = run.step(name)
    if info:
        status, seconds, note = info.get("status") or "unknown", info.get("duration_s"), info.get("error", "")
    else:
        record = run.json(name, COMPLETE) if run.folder(name) else None
        status = ("earlier run" if run.manifest else "finished") if record else "not run"
        seconds = (record or {}).get("duration_s")
        note = run.stale(name) if record else run.absence(name)
    kind, backend = info.get("kind") or "-", run.metrics(name).get("backend")
    if backend and backend != kind:  # training.backend auto: say which one it chose
        kind = f"{kind} ({backend})"
    row = [name, kind, badge(status, status.replace(" ", "-")), duration(seconds),
           _when(info.get("finished_at"), run.manifest.get("started_at")), note or ""]
    if seconds is None:
        return row, None
    earlier = status in ("skipped", "reused", "earlier run")
    return row, Bar(name, seconds, duration(seconds) + (" (earlier run)" if earlier else ""),
                    STATUS_COLOR.get(status, PALETTE[5]))


def timings_section(run: RunFolder) -> Markup:
    names = run.planned_steps()
    if not names:
        return paragraph("No step has run yet.", "missing")
    timed = [_timing(run, name) for name in names]
    bars = [bar for _, bar in timed if bar]
    total = sum(bar.value for bar in bars if not bar.text.endswith("(earlier run)"))
    return join([hbars(bars, "Duration per step") if bars else None,
                 table(["step", "kind", "status", "duration", "finished at", "note"],
                       [row for row, _ in timed], numeric=(3,)),
                 paragraph(f"Time spent in steps this run: {duration(total)}. Skipped and reused "
                           "steps show the duration of the run that made their artifacts.")])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runner.reporting.report",
                                     description="Write RUN_DIR/report.html for a run folder.")
    parser.add_argument("run_dir", help="a run folder, e.g. runs/<recipe name>")
    args = parser.parse_args(argv)
    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        print(f"error: {run_dir} is not a folder; pass a run folder such as runs/<recipe name>",
              file=sys.stderr)
        return 2
    print(write_report(run_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
