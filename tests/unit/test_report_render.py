"""The report without ClickHouse: SVG helpers, the HTML page, and ``collect`` on fake rows."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest

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
    psi,
)
from streams.report.html import render_html
from streams.report.svg import Series, Threshold, bar_chart, line_chart, nice_ticks

START = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)
END = START + timedelta(hours=3)


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
        float(h)
        for h in re.findall(
            r"<rect x='[^']+' y='[^']+' width='[^']+' height='([^']+)' fill='#[12]'", svg
        )
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
                (0.5,) + (0.025,) * 19,
                (0.4,) + (0.6 / 19,) * 19,
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
    assert "fraud_logreg-2 (shadow) vs fraud_lightgbm-1" in page
    assert "95.0%" in page  # agreement
    assert "2.0%" in page  # declined
    assert "80.0 ms" in page and "400 ms" in page
    assert page.count("<svg") == 4  # scores, decisions, latency, one comparison


def test_page_draws_drift_series_and_escapes_names() -> None:
    drift = (DriftSeries("m-1", "<amount>", ("10:00", "10:30"), (0.05, 0.3), (False, True)),)
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
            "arrayCount": [{"bin": 0, "n": 6}, {"bin": 19, "n": 4}],
            "toString(decision) as decision, count()": [
                {"hour": "2026-01-05 11:00", "decision": "review", "n": 2}
            ],
            "system.tables": [{"n": 0}],
        }
    )
    data = collect(rows, "streamscore", tmp_path, START, END)
    assert data.events == 10 and data.dead_letters == 4 and data.champion == "m-1"
    assert data.scores is not None and data.scores.baseline is None and data.scores.psi is None
    assert data.scores.live[0] == 0.6 and data.scores.live[-1] == 0.4
    assert data.decisions.counts["review"] == (0, 2, 0)
    assert data.drift_available is False and data.notes  # says the baseline is missing
    window = rows.calls[0][1]
    assert window == {
        "start_ms": int(START.timestamp() * 1000),
        "end_ms": int(END.timestamp() * 1000),
    }
    assert all("`streamscore`." in sql for sql, _ in rows.calls if "system.tables" not in sql)
