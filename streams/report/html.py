"""ReportData → one self-contained HTML page: inline CSS and SVG, no scripts, no external URLs.

The template lives here as a string so the page renders from an installed wheel too
(package data would need a packaging change). Jinja2 autoescapes every value; only the
SVG strings built by ``streams.report.svg`` (which escape their own labels) go in raw.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from jinja2 import Environment
from markupsafe import Markup

from streams.report.data import (
    DECISIONS,
    PSI_ALERT,
    PSI_WATCH,
    SCORE_FEATURE,
    UNIFORM_BINS,
    ReportData,
)
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
<title>streamscore report {{ start }} – {{ end }}</title>
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
         flex: 1 1 0; min-width: 0; overflow-wrap: anywhere; }
  .kpi b { display: block; font-size: 18px; }
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
<p class="sub">Live traffic scored {{ start }} – {{ end }} UTC · database {{ data.database }}
 · generated {{ generated }} UTC</p>

<div class="kpis">
  <div class="kpi"><b>{{ "{:,}".format(data.events) }}</b><span>events decided</span></div>
  <div class="kpi"><b>{{ pct(data.declines, data.events) }}</b><span>declined</span></div>
  <div class="kpi"><b>{{ pct(data.reviews, data.events) }}</b><span>sent to review</span></div>
  <div class="kpi"><b>{{ "{:,}".format(data.dead_letters) }}</b><span>dead letters</span></div>
  <div class="kpi"><b>{{ data.champion or "—" }}</b><span>champion</span></div>
</div>
{% for note in data.notes %}<p class="note">{{ note }}</p>{% endfor %}

<h2>Score distribution vs training baseline</h2>
{% if data.scores %}
<p>Champion <b>{{ data.scores.model_version }}</b>, {{ "{:,}".format(data.scores.events) }} scored
events on {{ data.scores.live|length }} bins
{%- if data.scores.baseline %} of its training baseline
({{ data.scores.baseline_source }}). PSI against the baseline:
<b class="{{ 'alert' if data.scores.psi is not none and data.scores.psi >= psi_alert else '' }}">
{{ "%.3f"|format(data.scores.psi) if data.scores.psi is not none else "—" }}</b>
(below {{ psi_watch }} stable, above {{ psi_alert }} shifted){% else %}
(no training baseline found){% endif %}.</p>
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
<h3>{{ c.challenger }} ({{ c.role }}) vs {{ c.champion }}</h3>
<p>{{ "{:,}".format(c.events) }} events scored by both; the decisions agree on
<b>{{ "%.1f"|format(c.agreement * 100) }}%</b>.</p>
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
monitored columns; dashed lines at {{ psi_watch }} and {{ psi_alert }}, red dots are alerts.</p>
{% for s in data.drift %}
<h3>{{ feature_name(s.feature) }}
<span class="sub">({{ s.model_version }}, peak {{ "%.3f"|format(s.peak) }})</span></h3>
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


def _edge_labels(edges: tuple[float, ...]) -> list[str]:
    """One label per bin: its lower edge (the first bin is everything below edges[0])."""
    return [f"<{edges[0]:.2g}", *(f"{e:.2g}" for e in edges)] if edges else ["all"]


def _hour_labels(hours: tuple[str, ...]) -> list[str]:
    """``HH:00``, with the date where the day changes."""
    out, day = [], ""
    for h in hours:
        d, t = h.split(" ")
        out.append(f"{d[5:]} {t}" if d != day else t)
        day = d
    return out


def charts(data: ReportData) -> dict[str, Any]:
    """Every chart of the report as an SVG string (lists for repeated sections)."""
    out: dict[str, Any] = {"comparisons": [], "drift": []}
    if data.scores is not None:
        s = data.scores
        out["scores"] = bar_chart(
            _edge_labels(s.edges),
            [Series(f"live ({s.model_version})", s.live, COLORS["live"])],
            outline=Series("training baseline", s.baseline, COLORS["baseline"])
            if s.baseline
            else None,
            title="Score distribution vs training baseline",
            percent=True,
            y_label="share of events",
        )
    hours = _hour_labels(data.decisions.hours)
    out["decisions"] = bar_chart(
        hours,
        [Series(d, data.decisions.counts[d], COLORS[d]) for d in DECISIONS],
        title="Decisions per hour",
        stacked=True,
        y_label="events",
    )
    out["latency"] = line_chart(
        _hour_labels(data.latency_hourly.hours),
        [
            Series("end to end p50", data.latency_hourly.p50, COLORS["p50"]),
            Series("end to end p99", data.latency_hourly.p99, COLORS["p99"]),
        ],
        title="End-to-end latency per hour (ms)",
        y_label="ms",
    )
    uniform = [f"{i / UNIFORM_BINS:.2f}" for i in range(UNIFORM_BINS)]
    for c in data.comparisons:
        out["comparisons"].append(
            bar_chart(
                uniform,
                [
                    Series(f"champion {c.champion}", c.champion_hist, COLORS["champion"]),
                    Series(f"{c.role} {c.challenger}", c.challenger_hist, COLORS["challenger"]),
                ],
                title=f"Scores: {c.champion} vs {c.challenger}",
                percent=True,
                y_label="share of events",
                height=220,
            )
        )
    for d in data.drift:
        marks = [(i, p) for i, (p, a) in enumerate(zip(d.psi, d.alerts, strict=True)) if a]
        out["drift"].append(
            line_chart(
                list(d.windows),
                [Series("PSI", [p if math.isfinite(p) else None for p in d.psi], COLORS["live"])],
                title=f"PSI of {_feature_name(d.feature)} ({d.model_version})",
                thresholds=[
                    Threshold(PSI_WATCH, f"{PSI_WATCH} watch", "#d97706"),
                    Threshold(PSI_ALERT, f"{PSI_ALERT} alert", "#b91c1c"),
                ],
                marks=marks,
                height=180,
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
        start=f"{data.start.astimezone(UTC):%Y-%m-%d %H:%M}",
        end=f"{data.end.astimezone(UTC):%Y-%m-%d %H:%M}",
        generated=f"{(generated or datetime.now(UTC)).astimezone(UTC):%Y-%m-%d %H:%M}",
        decisions=DECISIONS,
        psi_watch=PSI_WATCH,
        psi_alert=PSI_ALERT,
        pct=_pct,
        ms=_ms,
        feature_name=_feature_name,
    )
