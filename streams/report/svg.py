"""Inline SVG charts for the report: small pure functions, numbers in → ``<svg>`` text out.

No plotting library: a report is a handful of bar and line charts, and an SVG string
keeps the HTML self-contained (no scripts, no external URLs). Every label is escaped.
Marks carry classes (``bar``, ``point``, ``gap``, ``x-label``, ``y-label``) and data
attributes so a test can read the chart back from the rendered page.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from itertools import pairwise

__all__ = ["Series", "Threshold", "bar_chart", "line_chart", "nice_ticks", "thin_labels"]

FONT = "font-family='system-ui, -apple-system, Segoe UI, sans-serif' font-size='11'"
AXIS = "#6b7280"
GRID = "#e5e7eb"
GAP = "#e5e7eb"  # windows left out of a line chart (too few events)
CHAR_PX = 6.5  # about the width of one 11 px character


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
            f"<text class='y-label' x='{frame.left - 6}' y='{y + 4:.1f}' text-anchor='end' "
            f"fill='{AXIS}'>{escape(_fmt(t, percent))}</text>"
        )
    if label:
        out.append(
            f"<text x='12' y='{frame.top + frame.plot_h / 2:.1f}' fill='{AXIS}' "
            f"transform='rotate(-90 12 {frame.top + frame.plot_h / 2:.1f})' "
            f"text-anchor='middle'>{escape(label)}</text>"
        )
    return out


def thin_labels(labels: Sequence[str], xs: Sequence[float], pad: float = 10.0) -> list[int]:
    """Indices of the labels to draw so that none overlaps another (centred text, about
    ``CHAR_PX`` per character); empty labels are never drawn.

    Labels longer than the shortest (a full date where the day changes, among ``HH:00``)
    are placed first; then every k-th label, k the smallest step at which the shortest
    labels do not touch, wherever it fits: regular ticks that never hide a date.
    """
    present = [i for i, label in enumerate(labels) if label]
    if not present:
        return []
    short = min(len(labels[i]) for i in present)
    step = min((xs[b] - xs[a] for a, b in pairwise(present)), default=math.inf)
    every = max(1, math.ceil((short * CHAR_PX + pad) / step)) if step > 0 else 1
    first = [i for i in present if len(labels[i]) > short]
    then = [i for k, i in enumerate(present) if len(labels[i]) == short and k % every == 0]
    kept: list[tuple[float, float]] = []
    out = []
    for i in [*first, *then]:
        half = len(labels[i]) * CHAR_PX / 2
        lo, hi = xs[i] - half - pad / 2, xs[i] + half + pad / 2
        if all(hi <= a or lo >= b for a, b in kept):
            kept.append((lo, hi))
            out.append(i)
    return sorted(out)


def _x_labels(
    frame: _Frame, labels: Sequence[str], xs: Sequence[float], title: str = ""
) -> list[str]:
    base = frame.height - frame.bottom + 16
    out = [
        f"<line x1='{frame.left}' x2='{frame.width - frame.right}' y1='{frame.top + frame.plot_h}' "
        f"y2='{frame.top + frame.plot_h}' stroke='{AXIS}'/>"
    ]
    for i in thin_labels(labels, xs):
        out.append(
            f"<line x1='{xs[i]:.1f}' x2='{xs[i]:.1f}' y1='{frame.top + frame.plot_h}' "
            f"y2='{frame.top + frame.plot_h + 4}' stroke='{AXIS}'/>"
            f"<text class='x-label' x='{xs[i]:.1f}' y='{base}' text-anchor='middle' "
            f"fill='{AXIS}'>{escape(labels[i])}</text>"
        )
    if title:
        out.append(
            f"<text x='{frame.left + frame.plot_w / 2:.1f}' y='{base + 16}' text-anchor='middle' "
            f"fill='{AXIS}'>{escape(title)}</text>"
        )
    return out


def _legend(frame: _Frame, series: Sequence[Series], extra: Sequence[Threshold] = ()) -> list[str]:
    out, x = [], float(frame.left)
    for s in series:
        out.append(f"<rect x='{x:.1f}' y='8' width='12' height='12' rx='2' fill='{s.color}'/>")
        out.append(f"<text class='legend' x='{x + 16:.1f}' y='18'>{escape(s.name)}</text>")
        x += 28 + CHAR_PX * len(s.name)
    for t in extra:
        out.append(
            f"<line x1='{x:.1f}' x2='{x + 14:.1f}' y1='14' y2='14' stroke='{t.color}' "
            "stroke-dasharray='4 3' stroke-width='1.5'/>"
        )
        out.append(f"<text class='legend' x='{x + 18:.1f}' y='18'>{escape(t.label)}</text>")
        x += 30 + CHAR_PX * len(t.label)
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
    boundaries: Sequence[str] | None = None,
    x_label: str = "",
) -> str:
    """Grouped (or stacked) vertical bars, one group per label.

    ``outline`` draws a reference distribution as a step outline over the bars (the
    training baseline behind live proportions). ``boundaries`` (one more than the labels,
    "" for none) puts the axis labels between the bars instead of under them: bins read
    by their edges; ``labels`` then only name the bars in their tooltips.
    """
    # A label on the last boundary is centred on the plot's right edge: room for its half.
    last = boundaries[-1] if boundaries else ""
    frame = _Frame(width, height, right=max(12, math.ceil(len(last) * CHAR_PX / 2) + 4))
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
                f"<rect class='bar' data-series='{escape(s.name)}' data-bin='{i}' "
                f"x='{x:.1f}' y='{y_top:.1f}' width='{bar_w:.1f}' "
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
    if boundaries is not None:
        if len(boundaries) != n + 1:
            raise ValueError(f"{len(boundaries)} boundary labels for {n} bars (need {n + 1})")
        edges = [frame.left + slot * i for i in range(n + 1)]
        out += _x_labels(frame, boundaries, edges, x_label)
    else:
        out += _x_labels(frame, labels, centers, x_label)
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
    gaps: Sequence[int] = (),
    gap_label: str = "",
    tips: Sequence[str] | None = None,
) -> str:
    """Lines over labelled x positions; ``None`` breaks a line. Every value is a dot
    (``tips``: its tooltip per x position). ``marks`` are (x index, value) points drawn as
    red dots (alerts). ``gaps`` are x positions shaded grey, with ``gap_label`` in the
    legend: positions left out on purpose, told apart from missing data."""
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
    for i in gaps:
        if 0 <= i < n:
            tip = f"<title>{escape(tips[i])}</title>" if tips else ""
            out.append(
                f"<rect class='gap' data-x='{i}' x='{xs[i] - step / 2:.1f}' y='{frame.top}' "
                f"width='{step:.1f}' height='{frame.plot_h:.1f}' fill='{GAP}' "
                f"fill-opacity='0.7'>{tip}</rect>"
            )
    for t in thresholds:
        y = frame.y(t.value, peak)
        out.append(
            f"<line x1='{frame.left}' x2='{frame.width - frame.right}' y1='{y:.1f}' "
            f"y2='{y:.1f}' stroke='{t.color}' stroke-dasharray='4 3' stroke-width='1.5'/>"
        )
    for s in series:
        runs: list[list[str]] = [[]]
        dots = []
        for i, (x, v) in enumerate(zip(xs, s.values, strict=True)):
            if v is None or not math.isfinite(v):
                runs.append([])
                continue
            y = frame.y(float(v), peak)
            runs[-1].append(f"{x:.1f},{y:.1f}")
            tip = f"<title>{escape(tips[i])}</title>" if tips else ""
            dots.append(
                f"<circle class='point' data-series='{escape(s.name)}' data-x='{i}' "
                f"cx='{x:.1f}' cy='{y:.1f}' r='2.5' fill='{s.color}'>{tip}</circle>"
            )
        for run in runs:
            if len(run) > 1:
                out.append(
                    f"<polyline points='{' '.join(run)}' fill='none' stroke='{s.color}' "
                    "stroke-width='2' stroke-linejoin='round'/>"
                )
        out += dots
    for i, v in marks:
        if 0 <= i < n and math.isfinite(v):
            out.append(
                f"<circle cx='{xs[i]:.1f}' cy='{frame.y(v, peak):.1f}' r='4' fill='#b91c1c'>"
                f"<title>{escape(labels[i])}: alert</title></circle>"
            )
    out += _x_labels(frame, labels, xs)
    out += _legend(frame, series, thresholds)
    if gap_label:
        out += _gap_legend(frame, gap_label)
    out.append("</svg>")
    return "".join(out)


def _gap_legend(frame: _Frame, label: str) -> list[str]:
    # Right-aligned, clear of the series legend on the left.
    x = frame.width - frame.right - CHAR_PX * len(label) - 16
    return [
        f"<rect x='{x:.1f}' y='8' width='12' height='12' fill='{GAP}'/>",
        f"<text class='legend gap-legend' x='{x + 16:.1f}' y='18'>{escape(label)}</text>",
    ]
