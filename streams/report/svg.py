"""Inline SVG charts for the report: small pure functions, numbers in → ``<svg>`` text out.

No plotting library: a report is a handful of bar and line charts, and an SVG string
keeps the HTML self-contained (no scripts, no external URLs). Every label is escaped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

__all__ = ["Series", "Threshold", "bar_chart", "line_chart", "nice_ticks"]

FONT = "font-family='system-ui, -apple-system, Segoe UI, sans-serif' font-size='11'"
AXIS = "#6b7280"
GRID = "#e5e7eb"


@dataclass(frozen=True, slots=True)
class Series:
    """A named run of values, one per x label; ``None`` is a gap (lines only)."""

    name: str
    values: Sequence[float | None]
    color: str


@dataclass(frozen=True, slots=True)
class Threshold:
    """A horizontal reference line."""

    value: float
    label: str
    color: str = "#b91c1c"


def nice_ticks(top: float, count: int = 5) -> list[float]:
    """Round tick values from 0 to at least ``top`` (1, 2, 2.5 or 5 × a power of ten)."""
    if not math.isfinite(top) or top <= 0:
        return [0.0, 1.0]
    raw = top / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    n = math.ceil(top / step - 1e-9)
    return [round(i * step, 10) for i in range(n + 1)]


def _fmt(value: float, percent: bool) -> str:
    if percent:
        return f"{value * 100:.0f}%" if value * 100 >= 1 or value == 0 else f"{value * 100:.1f}%"
    if value >= 1_000_000:
        return f"{value / 1_000_000:.1f}M"
    if value >= 10_000:
        return f"{value / 1000:.0f}k"
    if value >= 1000:
        return f"{value / 1000:.3g}k"
    return f"{value:g}"


@dataclass(frozen=True, slots=True)
class _Frame:
    width: int
    height: int
    left: int = 52
    right: int = 12
    top: int = 28
    bottom: int = 46

    @property
    def plot_w(self) -> float:
        return float(self.width - self.left - self.right)

    @property
    def plot_h(self) -> float:
        return float(self.height - self.top - self.bottom)

    def y(self, value: float, top: float) -> float:
        return self.top + self.plot_h * (1 - (value / top if top else 0))


def _open(frame: _Frame, title: str) -> list[str]:
    return [
        # Scales to its container's width (viewBox keeps the aspect ratio).
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{frame.width}' height='{frame.height}' "
        "style='width:100%;height:auto;display:block' "
        f"viewBox='0 0 {frame.width} {frame.height}' role='img' aria-label='{escape(title)}' "
        f"{FONT}>",
        f"<title>{escape(title)}</title>",
    ]


def _y_axis(frame: _Frame, ticks: Sequence[float], percent: bool, label: str) -> list[str]:
    top = ticks[-1]
    out = []
    for t in ticks:
        y = frame.y(t, top)
        out.append(
            f"<line x1='{frame.left}' x2='{frame.width - frame.right}' y1='{y:.1f}' "
            f"y2='{y:.1f}' stroke='{GRID}'/>"
        )
        out.append(
            f"<text x='{frame.left - 6}' y='{y + 4:.1f}' text-anchor='end' fill='{AXIS}'>"
            f"{escape(_fmt(t, percent))}</text>"
        )
    if label:
        out.append(
            f"<text x='12' y='{frame.top + frame.plot_h / 2:.1f}' fill='{AXIS}' "
            f"transform='rotate(-90 12 {frame.top + frame.plot_h / 2:.1f})' "
            f"text-anchor='middle'>{escape(label)}</text>"
        )
    return out


def _x_labels(frame: _Frame, labels: Sequence[str], centers: Sequence[float]) -> list[str]:
    # Thin the labels so they never overlap: about 7 px per character.
    longest = max((len(label) for label in labels), default=1)
    room = frame.plot_w / max(len(labels), 1)
    every = max(1, math.ceil(longest * 6.5 / max(room, 1)))
    base = frame.height - frame.bottom + 16
    out = [
        f"<line x1='{frame.left}' x2='{frame.width - frame.right}' y1='{frame.top + frame.plot_h}' "
        f"y2='{frame.top + frame.plot_h}' stroke='{AXIS}'/>"
    ]
    for i, (label, x) in enumerate(zip(labels, centers, strict=True)):
        if i % every == 0:
            out.append(
                f"<text x='{x:.1f}' y='{base}' text-anchor='middle' fill='{AXIS}'>"
                f"{escape(label)}</text>"
            )
    return out


def _legend(frame: _Frame, series: Sequence[Series], extra: Sequence[Threshold] = ()) -> list[str]:
    out, x = [], float(frame.left)
    for s in series:
        out.append(f"<rect x='{x:.1f}' y='8' width='12' height='12' rx='2' fill='{s.color}'/>")
        out.append(f"<text x='{x + 16:.1f}' y='18'>{escape(s.name)}</text>")
        x += 28 + 6.5 * len(s.name)
    for t in extra:
        out.append(
            f"<line x1='{x:.1f}' x2='{x + 14:.1f}' y1='14' y2='14' stroke='{t.color}' "
            "stroke-dasharray='4 3' stroke-width='1.5'/>"
        )
        out.append(f"<text x='{x + 18:.1f}' y='18'>{escape(t.label)}</text>")
        x += 30 + 6.5 * len(t.label)
    return out


def bar_chart(
    labels: Sequence[str],
    series: Sequence[Series],
    *,
    title: str,
    width: int = 760,
    height: int = 260,
    stacked: bool = False,
    percent: bool = False,
    y_label: str = "",
    outline: Series | None = None,
) -> str:
    """Grouped (or stacked) vertical bars, one group per label.

    ``outline`` draws a reference distribution as a step outline over the bars (the
    training baseline behind live proportions).
    """
    frame = _Frame(width, height)
    n = len(labels)
    values = [[float(v or 0.0) for v in s.values] for s in series]
    if stacked:
        top = max((sum(col) for col in zip(*values, strict=True)), default=0.0)
    else:
        top = max((v for row in values for v in row), default=0.0)
    if outline is not None:
        top = max(top, max((float(v or 0.0) for v in outline.values), default=0.0))
    ticks = nice_ticks(top)
    peak = ticks[-1]
    out = _open(frame, title)
    out += _y_axis(frame, ticks, percent, y_label)
    slot = frame.plot_w / max(n, 1)
    gap = min(slot * 0.2, 6.0)
    centers = [frame.left + slot * (i + 0.5) for i in range(n)]
    groups = 1 if stacked else max(len(series), 1)
    bar_w = max((slot - gap) / groups, 0.5)
    for i in range(n):
        x0 = frame.left + slot * i + gap / 2
        base = 0.0
        for k, s in enumerate(series):
            v = values[k][i]
            if v <= 0:
                continue
            if stacked:
                y_top, y_bottom = frame.y(base + v, peak), frame.y(base, peak)
                x = x0
                base += v
            else:
                y_top, y_bottom = frame.y(v, peak), frame.y(0, peak)
                x = x0 + bar_w * k
            out.append(
                f"<rect x='{x:.1f}' y='{y_top:.1f}' width='{bar_w:.1f}' "
                f"height='{max(y_bottom - y_top, 0.5):.1f}' fill='{s.color}'>"
                f"<title>{escape(labels[i])} {escape(s.name)}: {escape(_fmt(v, percent))}"
                "</title></rect>"
            )
    if outline is not None:
        points = []
        for i, level in enumerate(outline.values):
            y = frame.y(float(level or 0.0), peak)
            points += [
                f"{frame.left + slot * i:.1f},{y:.1f}",
                f"{frame.left + slot * (i + 1):.1f},{y:.1f}",
            ]
        out.append(
            f"<polyline points='{' '.join(points)}' fill='none' stroke='{outline.color}' "
            "stroke-width='2'/>"
        )
    out += _x_labels(frame, labels, centers)
    out += _legend(frame, [*series, *([outline] if outline else [])])
    out.append("</svg>")
    return "".join(out)


def line_chart(
    labels: Sequence[str],
    series: Sequence[Series],
    *,
    title: str,
    width: int = 760,
    height: int = 240,
    thresholds: Sequence[Threshold] = (),
    marks: Sequence[tuple[int, float]] = (),
    y_label: str = "",
    percent: bool = False,
) -> str:
    """Lines over labelled x positions; ``None`` breaks a line. ``marks`` are (x index,
    value) points drawn as red dots (alerts)."""
    frame = _Frame(width, height)
    n = len(labels)
    finite = [float(v) for s in series for v in s.values if v is not None and math.isfinite(v)]
    top = max([*finite, *(t.value for t in thresholds), 0.0])
    ticks = nice_ticks(top * 1.05 if top else 1.0)
    peak = ticks[-1]
    out = _open(frame, title)
    out += _y_axis(frame, ticks, percent, y_label)
    step = frame.plot_w / max(n, 1)
    xs = [frame.left + step * (i + 0.5) for i in range(n)]
    for t in thresholds:
        y = frame.y(t.value, peak)
        out.append(
            f"<line x1='{frame.left}' x2='{frame.width - frame.right}' y1='{y:.1f}' "
            f"y2='{y:.1f}' stroke='{t.color}' stroke-dasharray='4 3' stroke-width='1.5'/>"
        )
    for s in series:
        runs: list[list[str]] = [[]]
        for x, v in zip(xs, s.values, strict=True):
            if v is None or not math.isfinite(v):
                runs.append([])
                continue
            runs[-1].append(f"{x:.1f},{frame.y(float(v), peak):.1f}")
        for run in runs:
            if len(run) == 1:
                cx, cy = run[0].split(",")
                out.append(f"<circle cx='{cx}' cy='{cy}' r='2.5' fill='{s.color}'/>")
            elif run:
                out.append(
                    f"<polyline points='{' '.join(run)}' fill='none' stroke='{s.color}' "
                    "stroke-width='2' stroke-linejoin='round'/>"
                )
    for i, v in marks:
        if 0 <= i < n and math.isfinite(v):
            out.append(
                f"<circle cx='{xs[i]:.1f}' cy='{frame.y(v, peak):.1f}' r='4' fill='#b91c1c'>"
                f"<title>{escape(labels[i])}: alert</title></circle>"
            )
    out += _x_labels(frame, labels, xs)
    out += _legend(frame, series, thresholds)
    out.append("</svg>")
    return "".join(out)
