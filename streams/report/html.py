"""ReportData → one self-contained HTML page: inline CSS and SVG, no scripts, no external URLs.

The template lives here as a string so the page renders from an installed wheel too
(package data would need a packaging change). Jinja2 autoescapes every value; only the
SVG strings built by ``streams.report.svg`` (which escape their own labels) go in raw.

What an analyst reads must not mislead: score axes are labelled in plain percentages
(``streams.report.labels``), never ``4e-07``; every time span carries both dates; a model
id never breaks across lines (``.id``: one line, an ellipsis and its tooltip when it is
wider than its box); drift charts leave out windows under the alert rule's minimum rows.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import PurePath
from typing import Any

from jinja2 import Environment
from markupsafe import Markup

from streams.report.data import (
    DECISIONS,
    PSI_ALERT,
    PSI_WATCH,
    SCORE_FEATURE,
    DriftSeries,
    ReportData,
)
from streams.report.labels import format_score, is_decade, span_label, time_label
from streams.report.svg import Series, Threshold, bar_chart, line_chart

__all__ = ["render_html"]

COLORS = {
    "approve": "#4c9a6a",
    "review": "#e0a030",
    "decline": "#c8463c",
    "live": "#3b6fb6",
    "baseline": "#374151",
    "champion": "#3b6fb6",
    "challenger": "#e07b39",
    "p50": "#3b6fb6",
    "p99": "#c8463c",
}

TEMPLATE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>streamscore report {{ span }}</title>
<style>
  body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #111827;
         background: #f9fafb; margin: 0; }
  main { max-width: 860px; margin: 0 auto; padding: 24px 28px 48px; }
  h1 { font-size: 22px; margin: 0 0 4px; }
  h2 { font-size: 17px; margin: 32px 0 8px; border-bottom: 1px solid #e5e7eb; padding-bottom: 4px; }
  h3 { font-size: 14px; margin: 18px 0 6px; }
  .sub { color: #6b7280; margin: 0 0 16px; }
  .kpis { display: flex; gap: 12px; flex-wrap: wrap; }
  .kpi { background: #fff; border: 1px solid #e5e7eb; border-radius: 8px; padding: 10px 14px;
         flex: 1 1 0; min-width: 0; }
  .kpi b { display: block; font-size: 18px; }
  /* An identifier never breaks inside itself (fraud_lightgbm-1 is not "fraud_lightg" +
     "bm-1"): the champion's box grows to fit it, moves to its own row when the row is
     full, and only an id wider than the page is cut, with an ellipsis and a tooltip. */
  .id { white-space: nowrap; overflow-wrap: normal; word-break: keep-all; }
  .kpi.wide { flex: 1 0 auto; max-width: 100%; box-sizing: border-box; }
  .kpi b.id { overflow: hidden; text-overflow: ellipsis; }
  .kpi span { color: #6b7280; font-size: 12px; }
  .card { background: #fff; border: 1px solid #e5e7eb; border-radius: 8px; padding: 12px;
          margin: 8px 0; }
  table { border-collapse: collapse; width: 100%; background: #fff; }
  th, td { text-align: left; padding: 5px 10px; border-bottom: 1px solid #f0f1f3; }
  th { font-weight: 600; color: #374151; background: #f3f4f6; }
  td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
  .note { color: #92400e; background: #fffbeb; border: 1px solid #fde68a; border-radius: 6px;
          padding: 8px 12px; margin: 8px 0; }
  .empty { color: #6b7280; font-style: italic; }
  .alert { color: #b91c1c; font-weight: 600; }
  footer { color: #9ca3af; font-size: 12px; margin-top: 40px; }
</style>
</head>
<body><main>
<h1>streamscore: scoring report</h1>
<p class="sub">Live traffic scored <span class="id span">{{ span }}</span>
 · database <span class="id">{{ data.database }}</span> · generated {{ generated }} UTC</p>

<div class="kpis">
  <div class="kpi"><b>{{ "{:,}".format(data.events) }}</b><span>events decided</span></div>
  <div class="kpi"><b>{{ pct(data.declines, data.events) }}</b><span>declined</span></div>
  <div class="kpi"><b>{{ pct(data.reviews, data.events) }}</b><span>sent to review</span></div>
  <div class="kpi"><b>{{ "{:,}".format(data.dead_letters) }}</b><span>dead letters</span></div>
  <div class="kpi wide"><b class="id champion" title="{{ data.champion or '' }}">
{{- data.champion or "—" }}</b><span>champion</span></div>
</div>
{% for note in data.notes %}<p class="note">{{ note }}</p>{% endfor %}

<h2>Score distribution vs training baseline</h2>
{% if data.scores %}
<p>Champion <b class="id">{{ data.scores.model_version }}</b>,
{{ "{:,}".format(data.scores.events) }} scored events on {{ data.scores.live|length }} bins
{%- if data.scores.baseline %} of its training baseline
(<span class="id" title="{{ data.scores.baseline_source }}">
{{- basename(data.scores.baseline_source) }}</span>), equal-width bars labelled with
their score edges. PSI against the baseline:
{% if data.scores.psi is not none %}
<b class="{{ 'alert' if data.scores.psi >= psi_alert else '' }}">
{{ "%.3f"|format(data.scores.psi) }}</b>
(below {{ psi_watch }} stable, above {{ psi_alert }} shifted)
{%- else %}<b>—</b> (too few events: under {{ data.min_rows }} a PSI is sampling noise)
{%- endif %}
{%- else %} of log10 score (no training baseline found){% endif %}.</p>
<div class="card">{{ charts.scores }}</div>
{% else %}<p class="empty">No champion scored anything in this window.</p>{% endif %}

<h2>Decisions per hour</h2>
{% if data.events %}<div class="card">{{ charts.decisions }}</div>
{% else %}<p class="empty">No decisions in this window.</p>{% endif %}

<h2>Latency</h2>
{% if data.latency %}
<table>
<tr><th>stage</th><th>what</th>
<th class="n">p50</th><th class="n">p90</th><th class="n">p99</th></tr>
{% for row in data.latency %}
<tr><td>{{ row.name }}</td><td>{{ row.what }}</td><td class="n">{{ ms(row.p50) }}</td>
<td class="n">{{ ms(row.p90) }}</td><td class="n">{{ ms(row.p99) }}</td></tr>
{% endfor %}
</table>
<div class="card">{{ charts.latency }}</div>
{% else %}<p class="empty">No scored events in this window.</p>{% endif %}

<h2>Champion vs challengers</h2>
{% for c in data.comparisons %}
<h3><span class="id">{{ c.challenger }}</span> ({{ c.role }}) vs
<span class="id">{{ c.champion }}</span></h3>
<p>{{ "{:,}".format(c.events) }} events scored by both; the decisions agree on
<b>{{ "%.1f"|format(c.agreement * 100) }}%</b>. Scores on log10 bins.</p>
<div class="card">{{ charts.comparisons[loop.index0] }}</div>
<table>
<tr><th>champion ↓ / challenger →</th>
{% for d in decisions %}<th class="n">{{ d }}</th>{% endfor %}</tr>
{% for a in decisions %}<tr><th>{{ a }}</th>
{% for b in decisions %}
<td class="n">{{ "{:,}".format(c.confusion.get((a, b), 0)) }}</td>
{% endfor %}
</tr>{% endfor %}
</table>
{% else %}<p class="empty">No challenger (shadow or canary) scored in this window.</p>{% endfor %}

<h2>PSI over time per top feature</h2>
{% if not data.drift_available %}<p class="empty">No drift statistics yet
(the drift_stats view does not exist in {{ data.database }}).</p>
{% elif not data.drift %}<p class="empty">No drift statistics yet in this window.</p>
{% else %}
<p>Population stability index per closed window, the {{ data.drift|length }} most drifted
monitored columns; dashed lines at {{ psi_watch }} and {{ psi_alert }}, red dots are alerts.
Windows with fewer than {{ data.min_rows }} events (the alert rule's minimum) are shaded grey
and not plotted: over a handful of events PSI is sampling noise.</p>
{% for s in data.drift %}
<h3><span class="id">{{ feature_name(s.feature) }}</span>
<span class="sub">(<span class="id">{{ s.model_version }}</span>, peak
{{ "%.3f"|format(s.peak) }} over {{ s.windows|length - s.thin|length }} windows
{%- if s.thin %}, {{ s.thin|length }} with too few events{% endif %})</span></h3>
<div class="card">{{ charts.drift[loop.index0] }}</div>
{% endfor %}
{% endif %}

<footer>streamscore report · predictions FINAL, decided rows, run = live</footer>
</main></body>
</html>
"""


def _pct(part: int, whole: int) -> str:
    return f"{part / whole * 100:.1f}%" if whole else "—"


def _ms(value: float) -> str:
    if not math.isfinite(value):
        return "—"
    if value >= 10_000:
        return f"{value / 1000:.1f} s"
    return f"{value:,.1f} ms" if value < 100 else f"{value:,.0f} ms"


def _feature_name(feature: str) -> str:
    return "score" if feature == SCORE_FEATURE else feature


def bin_names(edges: tuple[float, ...]) -> list[str]:
    """One name per bin for its tooltip: its score range (the first bin is everything
    below ``edges[0]``, the last everything from ``edges[-1]``)."""
    if not edges:
        return ["every score"]
    cuts = [format_score(e) for e in edges]
    return [
        f"below {cuts[0]}",
        *(f"{a} – {b}" for a, b in pairwise(cuts)),
        f"{cuts[-1]} and above",
    ]


def boundary_labels(edges: tuple[float, ...], log_scale: bool) -> list[str]:
    """Axis labels at the bin boundaries, outer ones included: every edge of quantile
    bins (between 0% and 100%), only the powers of ten of log bins (1e-6 → ``0.0001%``),
    whose outer bins are as wide as their neighbours."""
    if not edges:
        return ["", ""]
    if not log_scale:
        return ["0%", *(format_score(e) for e in edges), "100%"]
    ratio = edges[1] / edges[0] if len(edges) > 1 else 10.0
    ends = [edges[0] / ratio, *edges, edges[-1] * ratio]
    return [format_score(e) if is_decade(e) else "" for e in ends]


def hour_labels(hours: tuple[str, ...]) -> list[str]:
    """``HH:00``, with the full date on the first hour and where the day changes."""
    out, day = [], ""
    for h in hours:
        d, t = h.split(" ")
        out.append(h if d != day else t)
        day = d
    return out


def drift_tips(d: DriftSeries) -> list[str]:
    """A tooltip per window: its span with dates, its events and PSI (or why there is none)."""
    out = []
    for i, start in enumerate(d.windows):
        span = span_label(start, start + timedelta(seconds=d.window_seconds))
        if d.measured(i):
            out.append(f"{span}: PSI {d.psi[i]:.3f} over {d.rows[i]:,} events")
        else:
            out.append(f"{span}: {d.rows[i]:,} events, too few for a PSI (< {d.min_rows:,})")
    return out


def charts(data: ReportData) -> dict[str, Any]:
    """Every chart of the report as an SVG string (lists for repeated sections)."""
    out: dict[str, Any] = {"comparisons": [], "drift": []}
    if data.scores is not None:
        s = data.scores
        out["scores"] = bar_chart(
            bin_names(s.edges),
            [Series(f"live ({s.model_version})", s.live, COLORS["live"])],
            outline=Series("training baseline", s.baseline, COLORS["baseline"])
            if s.baseline
            else None,
            title="Score distribution vs training baseline",
            percent=True,
            y_label="share of events",
            boundaries=boundary_labels(s.edges, s.log_scale),
            x_label="score, log10 bins" if s.log_scale else "score, training baseline bins",
        )
    hours = hour_labels(data.decisions.hours)
    out["decisions"] = bar_chart(
        hours,
        [Series(d, data.decisions.counts[d], COLORS[d]) for d in DECISIONS],
        title="Decisions per hour",
        stacked=True,
        y_label="events",
    )
    out["latency"] = line_chart(
        hour_labels(data.latency_hourly.hours),
        [
            Series("end to end p50", data.latency_hourly.p50, COLORS["p50"]),
            Series("end to end p99", data.latency_hourly.p99, COLORS["p99"]),
        ],
        title="End-to-end latency per hour (ms)",
        y_label="ms",
    )
    for c in data.comparisons:
        out["comparisons"].append(
            bar_chart(
                bin_names(c.edges),
                [
                    Series(f"champion {c.champion}", c.champion_hist, COLORS["champion"]),
                    Series(f"{c.role} {c.challenger}", c.challenger_hist, COLORS["challenger"]),
                ],
                title=f"Scores: {c.champion} vs {c.challenger}",
                percent=True,
                y_label="share of events",
                height=240,
                boundaries=boundary_labels(c.edges, log_scale=True),
                x_label="score, log10 bins",
            )
        )
    for d in data.drift:
        plotted = d.plotted
        marks = [
            (i, p)
            for i, (p, a) in enumerate(zip(plotted, d.alerts, strict=True))
            if a and p is not None
        ]
        thin = d.thin
        out["drift"].append(
            line_chart(
                [time_label(w) for w in d.windows],
                [Series("PSI", plotted, COLORS["live"])],
                title=f"PSI of {_feature_name(d.feature)} ({d.model_version})",
                thresholds=[
                    Threshold(PSI_WATCH, f"{PSI_WATCH} watch", "#d97706"),
                    Threshold(PSI_ALERT, f"{PSI_ALERT} alert", "#b91c1c"),
                ],
                marks=marks,
                height=200,
                gaps=thin,
                gap_label=f"{len(thin)} windows with < {d.min_rows} events" if thin else "",
                tips=drift_tips(d),
            )
        )
    return out


def render_html(data: ReportData, generated: datetime | None = None) -> str:
    """The whole report page."""
    env = Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True)
    template = env.from_string(TEMPLATE)
    built = charts(data)
    safe: dict[str, Any] = {
        key: [Markup(svg) for svg in value] if isinstance(value, list) else Markup(value)  # noqa: S704 - built by streams.report.svg, which escapes every label
        for key, value in built.items()
    }
    return template.render(
        data=data,
        charts=safe,
        span=span_label(data.start, data.end),
        generated=f"{(generated or datetime.now(UTC)).astimezone(UTC):%Y-%m-%d %H:%M}",
        decisions=DECISIONS,
        psi_watch=PSI_WATCH,
        psi_alert=PSI_ALERT,
        pct=_pct,
        ms=_ms,
        feature_name=_feature_name,
        basename=lambda path: PurePath(path).name,
    )
