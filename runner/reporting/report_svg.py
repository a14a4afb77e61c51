"""Inline SVG charts for the run report: horizontal bars, histograms and line charts.

Plain SVG written by hand keeps the report one self-contained file with no plotting dependency;
every label goes through markupsafe, so document text in a label stays text.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup

PALETTE = ("#2f6fd0", "#e07b28", "#1f8a4c", "#8e44ad", "#c23b3b", "#7b8799")
TRACK = "#e9edf3"
GRID = "#e3e7ee"
AXIS = "#8a93a3"
FONT = 12


@dataclass
class Bar:
    label: str
    value: float
    text: str                       # shown after the bar
    color: str = PALETTE[0]
    whole: float | None = None      # the bar's own full length (funnel); None: the chart's largest
    tooltip: str = ""


@dataclass
class Series:
    name: str
    points: Sequence[tuple[float, float]]
    color: str = PALETTE[0]


def _f(value: float) -> str:
    return f"{value:.1f}"


def _svg(width: int, height: int, title: str, body: Markup) -> Markup:
    return Markup('<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="{w}" '
                  'height="{h}" role="img" aria-label="{t}"><title>{t}</title>{b}</svg>').format(
        w=width, h=height, t=title, b=body)


def _text(x: float, y: float, text: str, *, anchor: str = "start", size: int = FONT,
          fill: str = "#1d2433", extra: str = "") -> Markup:
    return Markup('<text x="{}" y="{}" font-size="{}" fill="{}" text-anchor="{}"{}>{}</text>').format(
        _f(x), _f(y), size, fill, anchor, Markup(extra), text)


def _rect(x: float, y: float, width: float, height: float, fill: str, tooltip: str = "") -> Markup:
    tip = Markup("<title>{}</title>").format(tooltip) if tooltip else Markup("")
    return Markup('<rect x="{}" y="{}" width="{}" height="{}" rx="2" fill="{}">{}</rect>').format(
        _f(x), _f(y), _f(max(width, 0)), _f(height), fill, tip)


def nice_ticks(low: float, high: float, count: int = 5, *, integer: bool = False) -> list[float]:
    """Round tick values (steps of 1, 2, 2.5 or 5 times a power of ten) covering low..high;
    `integer` keeps steps whole (training steps)."""
    if high <= low:
        pad = abs(low) * 0.05 or 1.0
        low, high = low - pad, high + pad
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    if integer:
        step = max(1, round(step))
    start, end = math.floor(low / step) * step, math.ceil(high / step) * step
    return [round(start + i * step, 12) for i in range(round((end - start) / step) + 1)]


def tick_label(value: float) -> str:
    if abs(value) >= 10_000:
        return f"{value:,.0f}"
    return f"{value:.6g}"


def hbars(bars: Sequence[Bar], title: str, *, width: int = 720, label_width: int = 170,
          text_width: int = 190) -> Markup:
    """One bar per row with a grey track behind it: durations, funnel stages, sizes."""
    row, bar_height = 24, 14
    area = width - label_width - text_width
    largest = max((b.value for b in bars if b.whole is None), default=0) or 1
    parts = []
    for index, bar in enumerate(bars):
        top = 6 + index * row
        whole = bar.whole if bar.whole is not None else largest
        length = area * (bar.value / whole if whole else 0)
        parts += [_text(label_width - 8, top + 11, bar.label, anchor="end"),
                  _rect(label_width, top, area, bar_height, TRACK),
                  _rect(label_width, top, max(length, 1 if bar.value else 0), bar_height,
                        bar.color, bar.tooltip or f"{bar.label}: {bar.text}"),
                  _text(label_width + area + 8, top + 11, bar.text, fill="#3a4354")]
    return _svg(width, 12 + row * len(bars), title, Markup("").join(parts))


def histogram(bins: Sequence[tuple[str, int]], title: str, *, color: str = PALETTE[0],
              width: int = 520, height: int = 230, x_label: str = "") -> Markup:
    """Vertical bars with counts on top; labels turn when the bars get narrow."""
    left, right, top = 46, 10, 24
    slot = (width - left - right) / max(len(bins), 1)
    turned = slot < 58
    bottom = 62 if turned else 36
    plot_w, plot_h = width - left - right, height - top - bottom
    # headroom above the tallest bar for its count label
    ticks = nice_ticks(0, 1.1 * max((c for _, c in bins), default=0) or 1, 4, integer=True)
    scale = plot_h / ticks[-1]
    parts = [_text(left, 14, title, size=13, extra=' font-weight="600"')]
    parts += _y_grid(ticks, left, top + plot_h, plot_w, scale)
    for index, (label, count) in enumerate(bins):
        x = left + index * slot + slot * 0.12
        bar_h = count * scale
        parts.append(_rect(x, top + plot_h - bar_h, slot * 0.76, bar_h, color, f"{label}: {count}"))
        if count:
            parts.append(_text(x + slot * 0.38, top + plot_h - bar_h - 4, f"{count:,}", anchor="middle",
                               size=11))
        cx, cy = x + slot * 0.38, top + plot_h + 14
        parts.append(_text(cx, cy, label, anchor="end" if turned else "middle", size=11,
                           extra=f' transform="rotate(-35 {_f(cx)} {_f(cy)})"' if turned else ""))
    if x_label:
        parts.append(_text(left + plot_w / 2, height - 4, x_label, anchor="middle", size=11,
                           fill=AXIS))
    return _svg(width, height, title, Markup("").join(parts))


def _y_grid(ticks: list[float], left: float, baseline: float, plot_w: float,
            scale: float) -> list[Markup]:
    lines = []
    for tick in ticks:
        y = baseline - (tick - ticks[0]) * scale
        lines.append(Markup('<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="{}"/>').format(
            _f(left), _f(y), _f(left + plot_w), _f(y), GRID))
        lines.append(_text(left - 6, y + 4, tick_label(tick), anchor="end", size=11, fill=AXIS))
    return lines


def line_chart(series: Sequence[Series], title: str, *, x_label: str = "", y_label: str = "",
               width: int = 960, height: int = 300) -> Markup:
    """Lines with point markers (markers only while there are few points) and a legend."""
    left, right, top, bottom = 62, 16, 30, 44
    plot_w, plot_h = width - left - right, height - top - bottom
    points = [p for s in series for p in s.points]
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x_ticks = nice_ticks(min(xs), max(xs), 6, integer=all(float(x).is_integer() for x in xs))
    y_ticks = nice_ticks(min(ys), max(ys), 5)
    x_scale = plot_w / (x_ticks[-1] - x_ticks[0])
    y_scale = plot_h / (y_ticks[-1] - y_ticks[0])

    def at(x: float, y: float) -> tuple[float, float]:
        return left + (x - x_ticks[0]) * x_scale, top + plot_h - (y - y_ticks[0]) * y_scale

    parts = [_text(left, 16, title, size=13, extra=' font-weight="600"')]
    parts += _y_grid(y_ticks, left, top + plot_h, plot_w, y_scale)
    for tick in x_ticks:
        x, _ = at(tick, y_ticks[0])
        parts.append(_text(x, top + plot_h + 16, tick_label(tick), anchor="middle", size=11,
                           fill=AXIS))
    for index, line in enumerate(series):
        parts += _series(line, at)
        legend_x = width - right - 150 * (len(series) - index)
        parts += [_rect(legend_x, 8, 12, 10, line.color), _text(legend_x + 16, 17, line.name, size=11)]
    if x_label:
        parts.append(_text(left + plot_w / 2, height - 6, x_label, anchor="middle", size=11,
                           fill=AXIS))
    if y_label:
        parts.append(_text(14, top + plot_h / 2, y_label, anchor="middle", size=11, fill=AXIS,
                           extra=f' transform="rotate(-90 14 {_f(top + plot_h / 2)})"'))
    return _svg(width, height, title, Markup("").join(parts))


def _series(line: Series, at) -> list[Markup]:
    coords = [at(x, y) for x, y in line.points]
    path = " ".join(f"{_f(x)},{_f(y)}" for x, y in coords)
    parts = [Markup('<polyline points="{}" fill="none" stroke="{}" stroke-width="2"/>').format(
        path, line.color)]
    if len(coords) <= 80:
        for (x, y), (step, value) in zip(coords, line.points, strict=True):
            parts.append(Markup('<circle cx="{}" cy="{}" r="3.2" fill="{}"><title>{}</title>'
                                '</circle>').format(_f(x), _f(y), line.color,
                                                    f"{line.name} at step {tick_label(step)}: {value:.6g}"))
    return parts


def thin(points: Sequence[tuple[float, float]], most: int = 800) -> list[tuple[float, float]]:
    """Every k-th point (and the last) so a long run's curve stays a small file."""
    if len(points) <= most:
        return list(points)
    stride = math.ceil(len(points) / most)
    kept = list(points[::stride])
    return kept if kept[-1] == points[-1] else [*kept, points[-1]]
