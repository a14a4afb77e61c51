"""Small HTML building blocks for the run report: escaping, tables, number formats, the CSS.

Every value passes through markupsafe's escape (html.escape plus a marker for what is already
markup), so text from documents, prompts or model answers can never become markup.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from markupsafe import Markup, escape

CSS = """
:root { --ink: #1d2433; --muted: #5d6778; --line: #dde2ea; --card: #ffffff; --bg: #f4f6fa;
        --accent: #2f6fd0; --good: #1f8a4c; --bad: #c23b3b; --warn: #b7791f; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--ink);
       font: 14px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1120px; margin: 0 auto; padding: 24px 28px 60px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 19px; margin: 0 0 12px; padding-bottom: 6px; border-bottom: 1px solid var(--line); }
h3 { font-size: 15px; margin: 18px 0 8px; }
section { background: var(--card); border: 1px solid var(--line); border-radius: 8px;
          padding: 18px 22px; margin: 18px 0; }
nav { margin: 10px 0 0; display: flex; flex-wrap: wrap; gap: 6px 14px; font-size: 13px; }
nav a { color: var(--accent); text-decoration: none; }
table { border-collapse: collapse; margin: 6px 0 12px; font-size: 13px; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 10px; text-align: left;
         vertical-align: top; }
th { background: #f0f3f8; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.kv th { background: none; color: var(--muted); font-weight: 500; white-space: nowrap; }
pre { background: #f6f8fb; border: 1px solid var(--line); border-radius: 6px; padding: 8px 10px;
      white-space: pre-wrap; word-break: break-word; font-size: 12.5px; margin: 4px 0 10px;
      max-height: 420px; overflow: auto; }
code { font-size: 12.5px; background: #f0f3f8; padding: 0 3px; border-radius: 3px; }
mark { background: #fff0b3; border-bottom: 2px solid #e0b000; }
.muted { color: var(--muted); }
.note { color: var(--muted); font-size: 13px; margin: 4px 0 10px; }
.missing { color: var(--muted); font-style: italic; }
.warn { background: #fff8e6; border-left: 4px solid var(--warn); padding: 6px 10px; margin: 8px 0; }
.error { background: #fdeeee; border-left: 4px solid var(--bad); padding: 6px 10px; margin: 8px 0; }
.badge { display: inline-block; padding: 1px 9px; border-radius: 10px; font-size: 12px;
         font-weight: 600; color: #fff; background: var(--muted); vertical-align: middle; }
.badge.succeeded, .badge.ran, .badge.ok { background: var(--good); }
.badge.failed, .badge.bad { background: var(--bad); }
.badge.running { background: var(--warn); }
.badge.skipped, .badge.reused { background: #7b8799; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(300px, 1fr)); gap: 8px 24px; }
.answer { border: 1px solid var(--line); border-radius: 6px; padding: 8px 12px; margin: 8px 0; }
.answer .label { font-size: 12px; color: var(--muted); text-transform: uppercase;
                 letter-spacing: .04em; margin-top: 6px; }
details > summary { cursor: pointer; color: var(--accent); margin: 6px 0; }
svg { max-width: 100%; height: auto; display: block; margin: 6px 0 12px; }
svg text { font-family: inherit; }
"""


def esc(value) -> Markup:
    return escape("" if value is None else value)


def number(value, digits: int = 6) -> str:
    """Integers with thousands separators, floats to `digits` decimals (losses differ in the 5th), None as -."""
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value and (abs(value) >= 1e6 or abs(value) < 1e-3):
            return f"{value:.{digits}g}"
        return f"{round(value, digits):,}"
    return str(value)


def percent(part, whole) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def size(num_bytes) -> str:
    """Decimal units, as the export step logs them (MB = 10^6 bytes)."""
    if num_bytes is None:
        return "-"
    value = float(num_bytes)
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{int(value)} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1000
    return "-"


def duration(seconds) -> str:
    if seconds is None:
        return "-"
    seconds = float(seconds)
    if 0 < seconds < 0.005:  # "0.00 s" would read as "not measured"
        return "under 0.01 s"
    if seconds < 60:
        return f"{seconds:.2f} s" if seconds < 10 else f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min {rest} s"


def cell(value) -> Markup:
    return value if isinstance(value, Markup) else esc(number(value))


def table(headers: list[str], rows: Iterable[list], numeric: Iterable[int] = ()) -> Markup:
    """rows: lists of values (numbers formatted, text escaped) or Markup (kept as is)."""
    numeric = set(numeric)

    def css(index: int) -> Markup:
        return Markup(' class="num"') if index in numeric else Markup("")

    head = Markup("").join(Markup("<th{}>{}</th>").format(css(i), h) for i, h in enumerate(headers))
    body = Markup("").join(
        Markup("<tr>{}</tr>").format(Markup("").join(
            Markup("<td{}>{}</td>").format(css(i), cell(v)) for i, v in enumerate(row)))
        for row in rows)
    return Markup("<table><thead><tr>{}</tr></thead><tbody>{}</tbody></table>").format(head, body)


def key_values(pairs: Iterable[tuple[str, object]]) -> Markup:
    """A two-column table of labels and values; pairs whose value is None are left out."""
    rows = Markup("").join(Markup("<tr><th>{}</th><td>{}</td></tr>").format(label, cell(value))
                           for label, value in pairs if value is not None)
    return Markup('<table class="kv">{}</table>').format(rows)


def badge(text: str, css: str | None = None) -> Markup:
    """A coloured label; its CSS class is the text itself unless given (statuses have colours)."""
    return Markup('<span class="badge {}">{}</span>').format(css or text, text)


def pre(text, css_class: str = "") -> Markup:
    attr = Markup(' class="{}"').format(css_class) if css_class else Markup("")
    return Markup("<pre{}>{}</pre>").format(attr, text)


def paragraph(text, css_class: str = "note") -> Markup:
    return Markup('<p class="{}">{}</p>').format(css_class, text)


def details(summary, body: Markup) -> Markup:
    return Markup("<details><summary>{}</summary>{}</details>").format(summary, body)


def join(parts: Iterable) -> Markup:
    return Markup("").join(part for part in parts if part)
