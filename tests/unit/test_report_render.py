"""The report without ClickHouse: SVG helpers, the HTML page, and ``collect`` on fake rows.

Each flaw an analyst found has its pure-function test here (the browser checks are in
tests/integration/test_report.py): PSI of windows under the alert rule's minimum rows,
tiny fraud scores all in one bin, labels like ``4e-07``, windows printed without dates,
identifiers broken mid-word.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import numpy as np
import pytest

from streams.monitoring.drift import ALERT_MIN_ROWS
from streams.report.data import (
    Comparison,
    DriftSeries,
    HourlyDecisions,
    HourlyLatency,
    LatencyRow,
    ReportData,
    ScoreDistribution,
    collect,
    hours_between,
    log_bins,
    psi,
)
from streams.report.html import (
    bin_names,
    boundary_labels,
    charts,
    drift_tips,
    hour_labels,
    render_html,
)
from streams.report.labels import format_score, is_decade, span_label, time_label
from streams.report.svg import Series, Threshold, bar_chart, line_chart, nice_ticks, thin_labels

START = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)
END = START + timedelta(hours=3)
SVG = "{http://www.w3.org/2000/svg}"
SCIENTIFIC = re.compile(r"\d(?:\.\d+)?[eE][-+]?\d")


def parse(svg: str) -> ElementTree.Element:
    return ElementTree.fromstring(svg)  # well-formed XML or this raises


def test_nice_ticks_cover_the_top_with_round_steps() -> None:
    assert nice_ticks(0.2835) == [0.0, 0.1, 0.2, 0.3]
    assert nice_ticks(60) == [0, 20, 40, 60]
    assert nice_ticks(0) == [0.0, 1.0]
    assert nice_ticks(float("nan")) == [0.0, 1.0]


def test_bar_chart_is_valid_svg_with_one_rect_per_positive_value() -> None:
    svg = bar_chart(
        ["a", "b", "c"],
        [Series("x", [1, 0, 3], "#111"), Series("<y>", [2, 2, 2], "#222")],
        title="T & co",
        outline=Series("base", [1, 1, 1], "#333"),
    )
    root = parse(svg)
    ns = "{http://www.w3.org/2000/svg}"
    bars = [r for r in root.iter(f"{ns}rect") if r.find(f"{ns}title") is not None]
    assert len(bars) == 5  # the zero is not drawn
    assert root.find(f"{ns}polyline") is not None
    assert "&lt;y&gt;" in svg and "T &amp; co" in svg


def test_stacked_bars_reach_the_sum() -> None:
    svg = bar_chart(
        ["h"], [Series("a", [30], "#1"), Series("b", [30], "#2")], title="s", stacked=True
    )
    heights = [
        float(str(r.get("height")))
        for r in parse(svg).iter(f"{SVG}rect")
        if r.get("class") == "bar" and r.get("fill") in ("#1", "#2")
    ]
    assert len(heights) == 2 and heights[0] == pytest.approx(heights[1], abs=0.2)
    assert ">60<" in svg  # the axis goes to the stacked total


def test_line_chart_breaks_at_gaps_and_marks_alerts() -> None:
    svg = line_chart(
        ["1", "2", "3", "4", "5"],
        [Series("psi", [0.1, 0.2, None, 0.3, 0.4], "#1")],
        title="psi",
        thresholds=[Threshold(0.25, "alert")],
        marks=[(4, 0.4)],
    )
    parse(svg)
    assert svg.count("<polyline") == 2
    assert svg.count("fill='#b91c1c'") == 1  # one alert dot
    assert "stroke-dasharray" in svg


def test_psi_and_hours() -> None:
    assert psi([0.5, 0.5], [0.5, 0.5]) == 0
    assert psi([0.9, 0.1], [0.5, 0.5]) == pytest.approx(0.4 * math.log(1.8) - 0.4 * math.log(0.2))
    assert hours_between(START + timedelta(minutes=30), END) == [
        "2026-01-05 10:00", "2026-01-05 11:00", "2026-01-05 12:00",
    ]  # fmt: skip


def sample_data(**changes: Any) -> ReportData:
    hours = tuple(hours_between(START, END))
    base = ReportData(
        start=START,
        end=END,
        database="streamscore",
        events=1000,
        declines=20,
        reviews=50,
        human_reviews=10,
        dead_letters=3,
        champion="fraud_lightgbm-1",
        scores=ScoreDistribution(
            "fraud_lightgbm-1",
            (0.2, 0.5),
            (0.7, 0.2, 0.1),
            (0.6, 0.3, 0.1),
            1000,
            0.04,
            "/m/a.json",
        ),
        decisions=HourlyDecisions(
            hours, {"approve": (300, 300, 330), "review": (20, 20, 10), "decline": (5, 10, 5)}
        ),
        latency=(LatencyRow("end_to_end", "produced → queryable", 80.0, 150.0, 400.0),),
        latency_hourly=HourlyLatency(hours, (80.0, None, 90.0), (300.0, None, 500.0)),
        comparisons=(
            Comparison(
                "fraud_lightgbm-1",
                "fraud_logreg-2",
                "shadow",
                1000,
                0.95,
                {
                    ("approve", "approve"): 900,
                    ("approve", "review"): 50,
                    ("decline", "decline"): 50,
                },
                (1e-5, 1e-4, 1e-3),
                (0.1, 0.5, 0.3, 0.1),
                (0.05, 0.45, 0.4, 0.1),
            ),
        ),
        drift_available=False,
    )
    return ReportData(**{**{f: getattr(base, f) for f in base.__dataclass_fields__}, **changes})


def test_page_is_self_contained_and_says_what_is_missing() -> None:
    page = render_html(sample_data(), generated=END)
    assert page.startswith("<!doctype html>")
    assert "<script" not in page and "https://" not in page
    assert not re.search(r"(src|href)=", page)
    assert "No drift statistics yet" in page and "drift_stats view does not exist" in page
    heading = (
        '<span class="id">fraud_logreg-2</span> (shadow) vs\n<span class="id">fraud_lightgbm-1'
    )
    assert heading in page
    assert "95.0%" in page  # agreement
    assert "2.0%" in page  # declined
    assert "80.0 ms" in page and "400 ms" in page
    assert page.count("<svg") == 4  # scores, decisions, latency, one comparison


def test_page_draws_drift_series_and_escapes_names() -> None:
    drift = (
        DriftSeries(
            "m-1",
            "<amount>",
            (START, START + timedelta(minutes=30)),
            1800,
            (0.05, 0.3),
            (500, 400),
            (False, True),
        ),
    )
    page = render_html(
        sample_data(drift_available=True, drift=drift, champion="<b>x</b>"), generated=END
    )
    assert "PSI of &lt;amount&gt;" in page
    assert "<b>x</b>" not in page and "&lt;b&gt;x&lt;/b&gt;" in page
    assert "No drift statistics yet" not in page


def test_empty_window_renders() -> None:
    page = render_html(
        sample_data(
            events=0, champion=None, scores=None, latency=(), comparisons=(), drift_available=True
        ),
        generated=END,
    )
    assert "No champion scored anything" in page
    assert "No drift statistics yet in this window" in page


class FakeRows:
    """Answers each report query by a keyword in its SQL; records parameters."""

    def __init__(self, answers: Mapping[str, list[dict[str, Any]]]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, Mapping[str, Any]]] = []

    def __call__(self, sql: str, parameters: Mapping[str, Any]) -> list[dict[str, Any]]:
        self.calls.append((sql, parameters))
        for key, rows in self.answers.items():
            if key in sql:
                return rows
        return []


def test_collect_shapes_query_results(tmp_path: Path) -> None:
    rows = FakeRows(
        {
            "countIf(decision = 'decline')": [
                {"events": 10, "declines": 1, "reviews": 2, "human_reviews": 0}
            ],
            "dlq_events": [{"n": 4}],
            "order by n desc limit 1": [{"model_version": "m-1", "n": 10}],
            "card_path": [],
            # No baseline: log10 bins; fine bins of a quarter decade (-24: 1e-6).
            "log10(": [
                {"model_version": "m-1", "bin": -24, "n": 6},
                {"model_version": "m-1", "bin": -9, "n": 4},
            ],
            "toString(decision) as decision, count()": [
                {"hour": "2026-01-05 11:00", "decision": "review", "n": 2}
            ],
            "system.tables": [{"n": 0}],
        }
    )
    data = collect(rows, "streamscore", tmp_path, START, END)
    assert data.events == 10 and data.dead_letters == 4 and data.champion == "m-1"
    assert data.scores is not None and data.scores.baseline is None and data.scores.psi is None
    assert data.scores.log_scale and len(data.scores.live) == 16
    assert data.scores.live[0] == 0.6 and data.scores.live[-1] == 0.4
    assert data.scores.edges[0] == pytest.approx(10**-5.75)
    assert data.decisions.counts["review"] == (0, 2, 0)
    assert data.drift_available is False and data.notes  # says the baseline is missing
    window = rows.calls[0][1]
    assert window == {
        "start_ms": int(START.timestamp() * 1000),
        "end_ms": int(END.timestamp() * 1000),
    }
    assert all("`streamscore`." in sql for sql, _ in rows.calls if "system.tables" not in sql)


# ---- PSI only over windows with enough rows -------------------------------------------------


def drift_series(
    psis: list[float], rows: list[int], alerts: list[bool] | None = None
) -> DriftSeries:
    windows = tuple(START + timedelta(minutes=30 * i) for i in range(len(psis)))
    return DriftSeries(
        "m-1",
        "amount",
        windows,
        1800,
        tuple(psis),
        tuple(rows),
        tuple(alerts or [False] * len(psis)),
    )


def test_windows_under_the_alert_minimum_are_not_plotted() -> None:
    # What the demo showed: windows of 1-3 rows with PSI near 10 between real windows.
    s = drift_series([0.02, 9.8, 0.05, 10.4, math.nan, 0.3], [500, 1, 450, 3, 0, 600])
    assert s.min_rows == ALERT_MIN_ROWS
    assert s.plotted == (0.02, None, 0.05, None, None, 0.3)
    assert s.thin == (1, 3, 4)
    assert s.peak == 0.3  # not 10.4


def test_the_drift_chart_greys_thin_windows_and_keeps_its_axis() -> None:
    s = drift_series(
        [0.02, 9.8, 0.05, 10.4, 0.31], [500, 1, 450, 3, 600], [False, False, False, False, True]
    )
    svg = charts(sample_data(drift_available=True, drift=(s,)))["drift"][0]
    root = parse(svg)
    points = [c for c in root.iter(f"{SVG}circle") if c.get("class") == "point"]
    assert sorted(int(str(c.get("data-x"))) for c in points) == [0, 2, 4]
    gaps = [r for r in root.iter(f"{SVG}rect") if r.get("class") == "gap"]
    assert sorted(int(str(r.get("data-x"))) for r in gaps) == [1, 3]
    texts = [t.text or "" for t in root.iter(f"{SVG}text")]
    assert f"2 windows with < {ALERT_MIN_ROWS} events" in texts
    ticks = [float(t.text or "") for t in root.iter(f"{SVG}text") if t.get("class") == "y-label"]
    assert max(ticks) < 1  # the axis is not stretched to 10 by two events
    alerts = [c for c in root.iter(f"{SVG}circle") if c.get("r") == "4"]
    assert len(alerts) == 1


def test_drift_tooltips_give_each_window_with_dates_and_events() -> None:
    s = drift_series([0.02, 9.8], [500, 2])
    assert drift_tips(s) == [
        "2026-01-05 10:00 – 2026-01-05 10:30 UTC: PSI 0.020 over 500 events",
        "2026-01-05 10:30 – 2026-01-05 11:00 UTC: 2 events, too few for a PSI "
        f"(< {ALERT_MIN_ROWS})",
    ]


def test_the_most_drifted_ranking_ignores_thin_windows() -> None:
    rows = FakeRows(
        {
            "countIf(decision = 'decline')": [
                {"events": 0, "declines": 0, "reviews": 0, "human_reviews": 0}
            ],
            "dlq_events": [{"n": 0}],
            "system.columns": [{"name": "psi_alert"}, {"name": "alert"}],
            "system.tables": [{"n": 1}],
            "drift_stats": [
                {
                    "window_s": 1_767_607_200 + 1800 * w,
                    "window_seconds": 1800,
                    "model_version": "m-1",
                    "feature": f,
                    "psi": p,
                    "rows": n,
                    "alert": 0,
                }
                for f, values in (
                    ("noisy", [(0.01, 500), (9.5, 2)]),
                    ("real", [(0.2, 500), (0.3, 400)]),
                )
                for w, (p, n) in enumerate(values)
            ],
        }
    )
    data = collect(rows, "streamscore", Path("/nonexistent"), START, END)
    assert [s.feature for s in data.drift] == ["real", "noisy"]
    assert data.drift[1].rows == (500, 2) and data.drift[1].thin == (1,)
    assert data.drift[0].windows[0] == datetime(2026, 1, 5, 10, 0, tzinfo=UTC)
    # Since migration 0008 the PSI chart marks the PSI rule's alerts, not the missing rule's.
    drift_sql = next(sql for sql, _ in rows.calls if "drift_stats" in sql and "select" in sql)
    assert "toUInt8(psi_alert) as alert" in drift_sql


def test_score_psi_is_not_shown_under_the_minimum_rows() -> None:
    few = ScoreDistribution("m-1", (0.5,), (1.0, 0.0), (0.5, 0.5), 3, None, "/m/a.json")
    page = render_html(sample_data(scores=few), generated=END)
    assert f"too few events: under {ALERT_MIN_ROWS} a PSI is sampling noise" in page


# ---- score axes: readable labels, tiny scores spread over bins ------------------------------


def test_scores_print_as_plain_percentages() -> None:
    assert format_score(1.0) == "100%"
    assert format_score(0.5) == "50%"
    assert format_score(0.0123) == "1.2%"
    assert format_score(0.01) == "1%"
    assert format_score(1e-4) == "0.01%"
    assert format_score(1e-6) == "0.0001%"
    assert format_score(4e-7) == "0.00004%"  # the demo's "4e-07"
    assert format_score(3.5e-6) == "0.00035%"  # and its "3.5e-06"
    assert format_score(0) == "0%"
    assert format_score(1e-12) == "<0.0000001%"
    assert format_score(float("nan")) == "—"
    for value in np.logspace(-9, 0, 200):
        assert not SCIENTIFIC.search(format_score(float(value))), value


def test_decades() -> None:
    assert is_decade(1e-6) and is_decade(1.0) and is_decade(10 ** (-8 / 4))
    assert not is_decade(10**-5.75) and not is_decade(0) and not is_decade(0.5)


def test_tiny_scores_spread_over_log_bins() -> None:
    # Fraud-model scores 1e-6…1e-2: on uniform 0-1 bins every one is in the first.
    scores = 10 ** np.random.default_rng(3).normal(-4, 0.7, 5_000)
    fine: dict[int, int] = {}
    for b in np.floor(np.log10(scores) * 4).astype(int).tolist():
        fine[b] = fine.get(b, 0) + 1
    edges, merged = log_bins({"champion": fine, "challenger": {-16: 10}})
    counts = merged["champion"]
    assert sum(counts) == 5_000 and sum(merged["challenger"]) == 10
    assert len(counts) == len(edges) + 1 <= 24
    assert max(counts) < 0.5 * sum(counts) and sum(1 for c in counts if c) >= 8
    assert all(b / a == pytest.approx(10**0.25) for a, b in pairwise(edges))  # quarter decades
    assert max(edges) < 1e-1 and min(edges) > 1e-8


def test_wide_score_ranges_merge_to_whole_decades() -> None:
    edges, merged = log_bins({"m": {-36: 1, -1: 1}})  # 0 … 1: 36 quarter decades
    assert len(merged["m"]) == 18 and merged["m"][0] == 1 and merged["m"][-1] == 1
    assert all(b / a == pytest.approx(10**0.5) for a, b in pairwise(edges))  # half decades
    edges, merged = log_bins({"m": {-36: 1, -1: 1}}, max_bins=9)
    assert len(merged["m"]) == 9 and all(is_decade(e) for e in edges)
    assert log_bins({"m": {}}) == ((), {"m": (0,)})


def test_score_axis_labels_are_bin_boundaries_in_percent() -> None:
    quantile = (4e-7, 1.2e-6, 3.5e-6)
    assert boundary_labels(quantile, log_scale=False) == [
        "0%", "0.00004%", "0.00012%", "0.00035%", "100%",
    ]  # fmt: skip
    assert bin_names(quantile) == [
        "below 0.00004%", "0.00004% – 0.00012%", "0.00012% – 0.00035%", "0.00035% and above",
    ]  # fmt: skip
    log = tuple(10 ** (b / 2) for b in range(-11, -3))  # half decades 10^-5.5 … 10^-2
    labels = boundary_labels(log, log_scale=True)
    assert len(labels) == len(log) + 2
    assert [x for x in labels if x] == ["0.0001%", "0.001%", "0.01%", "0.1%", "1%"]


def test_score_charts_carry_no_scientific_notation() -> None:
    scores = ScoreDistribution(
        "m-1", (4e-7, 1.2e-6, 3.5e-6), (0.3, 0.3, 0.2, 0.2), (0.25,) * 4, 900, 0.01, "/m/a.json"
    )
    built = charts(sample_data(scores=scores))
    for svg in (built["scores"], *built["comparisons"]):
        root = parse(svg)
        texts = [t.text or "" for t in root.iter(f"{SVG}text")]
        assert not [t for t in texts if SCIENTIFIC.search(t)], texts
        x_labels = [t.text for t in root.iter(f"{SVG}text") if t.get("class") == "x-label"]
        assert len(x_labels) >= 3 and all(str(x).endswith("%") for x in x_labels)
        titles = [t.text or "" for t in root.iter(f"{SVG}title")]
        assert not [t for t in titles if SCIENTIFIC.search(t)], titles


def test_bar_chart_boundaries_must_match_the_bars() -> None:
    with pytest.raises(ValueError, match="3 boundary labels for 3 bars"):
        bar_chart(
            ["a", "b", "c"], [Series("x", [1, 2, 3], "#1")], title="t", boundaries=["", "", ""]
        )


def test_thinned_labels_never_overlap_and_keep_the_dates() -> None:
    labels = hour_labels(tuple(hours_between(START - timedelta(hours=20), END)))
    xs = [52 + 30 * i for i in range(len(labels))]
    kept = thin_labels(labels, xs)
    assert 0 in kept and labels.index("2026-01-05 00:00") in kept  # the first and midnight
    spans = [(xs[i] - len(labels[i]) * 3.25, xs[i] + len(labels[i]) * 3.25) for i in kept]
    assert all(a[1] <= b[0] for a, b in pairwise(spans))
    assert thin_labels(["", "x", ""], [0, 10, 20]) == [1]
    # Decade labels on every other boundary of half-decade bins are all kept when they fit.
    sparse = ["", "1%", "", "10%", "", "100%"]
    assert thin_labels(sparse, [0, 40, 80, 120, 160, 200]) == [1, 3, 5]


# ---- full dates ----------------------------------------------------------------------------


def test_spans_carry_both_dates() -> None:
    end = datetime(2026, 12, 1, 19, 31, 40, tzinfo=UTC)
    # The demo's "2026-11-30 14:24 – 14:24": a 24 h window printed with one date.
    assert span_label(end - timedelta(hours=24), end) == "2026-11-30 19:31 – 2026-12-01 19:31 UTC"
    assert span_label(end - timedelta(minutes=30), end) == "2026-12-01 19:01 – 2026-12-01 19:31 UTC"
    # Within one minute the seconds tell start from end.
    assert span_label(end - timedelta(seconds=30), end) == (
        "2026-12-01 19:31:10 – 2026-12-01 19:31:40 UTC"
    )
    assert time_label(end) == "2026-12-01 19:31" and time_label(end, seconds=True).endswith(":40")


def test_hour_labels_date_the_first_hour_and_each_new_day() -> None:
    hours = ("2026-01-04 22:00", "2026-01-04 23:00", "2026-01-05 00:00", "2026-01-05 01:00")
    assert hour_labels(hours) == ["2026-01-04 22:00", "23:00", "2026-01-05 00:00", "01:00"]


def test_the_page_prints_full_dates() -> None:
    page = render_html(sample_data(start=START - timedelta(days=1)), generated=END)
    assert "2026-01-04 10:00 – 2026-01-05 13:00 UTC" in page
    drift = (drift_series([0.02, 0.03], [500, 500]),)
    svg = charts(sample_data(drift_available=True, drift=drift))["drift"][0]
    x_labels = [t.text for t in parse(svg).iter(f"{SVG}text") if t.get("class") == "x-label"]
    assert x_labels and all(
        re.fullmatch(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}", str(x)) for x in x_labels
    )


# ---- identifiers on one line ---------------------------------------------------------------


def test_identifiers_never_break_mid_word() -> None:
    page = render_html(sample_data(), generated=END)
    assert "overflow-wrap: anywhere" not in page and "word-break: break-all" not in page
    css = re.search(r"\.id \{([^}]*)\}", page)
    assert css and "white-space: nowrap" in css.group(1) and "keep-all" in css.group(1)
    # The champion's KPI: one line, the whole id in its tooltip if it is ever cut.
    assert re.search(r'<b class="id champion" title="fraud_lightgbm-1">fraud_lightgbm-1</b>', page)
    for model in ("fraud_lightgbm-1", "fraud_logreg-2"):
        assert f'<span class="id">{model}</span>' in page
