"""The end-to-end benchmark's pure parts: percentiles, rates, the table. No network."""

from __future__ import annotations

import math

import numpy as np
import pytest

from streams.bench.e2e import (
    E2EResult,
    format_monitoring,
    format_table,
    latency_summary,
    median_run,
    percentile,
    sustained_rate,
)


@pytest.mark.parametrize("q", [0, 1, 25, 50, 90, 99, 99.9, 100])
def test_percentile_matches_numpy_linear_interpolation(q: float) -> None:
    values = [float(v) for v in np.random.default_rng(3).exponential(20.0, size=1001)]
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_percentile_of_small_and_empty_inputs() -> None:
    assert percentile([5.0], 99) == 5.0
    assert percentile([1.0, 3.0], 50) == 2.0
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError, match="percentile"):
        percentile([1.0], 101)


def test_latency_summary_orders_its_percentiles() -> None:
    summary = latency_summary([float(v) for v in range(1, 101)])
    assert summary["p50"] == pytest.approx(50.5)
    assert summary["p50"] <= summary["p90"] <= summary["p99"] <= summary["max"] == 100.0
    assert summary["mean"] == pytest.approx(50.5)
    assert latency_summary([]) == {}


def test_sustained_rate_counts_intervals_between_first_and_last() -> None:
    assert sustained_rate(1_000, 2_000, 1_001) == pytest.approx(1000.0)
    assert sustained_rate(1_000, 1_000, 50) == 0.0  # all in one instant: undefined
    assert sustained_rate(1_000, 3_000, 1) == 0.0


def test_table_marks_goals_met_and_missed() -> None:
    result = E2EResult(
        events=1_000_000, valid=980_000, ceiling_eps=400_000.0, sustained_eps=60_000.0,
        latency_rate=5_000.0, latency_events=150_000,
        latency_ms={"p50": 900.0, "p90": 1500.0, "p99": 2500.0, "max": 3000.0},
        decision_ms={"p50": 8.0, "p90": 12.0, "p99": 20.0, "max": 90.0},
        inserts_per_s=1.1,
    )  # fmt: skip
    lines = format_table(result)
    sustained = next(line for line in lines if "worker sustained" in line)
    ratio = next(line for line in lines if "ratio to ceiling" in line)
    decision_p99, queryable_p99 = [line for line in lines if line.strip().startswith("p99")]
    inserts = next(line for line in lines if "inserts/s" in line)
    assert "60,000/s" in sustained and sustained.endswith("ok")
    assert "0.15" in ratio and ratio.endswith("short")
    assert "20.0 ms" in decision_p99 and decision_p99.endswith("ok")
    assert "2,500.0 ms" in queryable_p99 and queryable_p99.endswith("short")
    assert "1.10" in inserts and inserts.endswith("ok")
    assert result.ratio == pytest.approx(0.15)


def test_json_result_has_every_key_the_issue_names() -> None:
    result = E2EResult(
        events=1_000, ceiling_eps=100_000.0, sustained_eps=50_000.0,
        latency_ms={"p50": 900.0, "p99": 1900.0}, decision_ms={"p50": 8.0, "p99": 20.0},
        inserts_per_s=1.0, startup_s=1.5, peak_rss_mb=800.4, processes=3,
        cpu_us_per_event={"score": 61.5, "stages": 12.0},
    )  # fmt: skip
    assert result.to_json() == {
        "events": 1_000, "ceiling_eps": 100_000, "sustained_eps": 50_000, "ratio": 0.5,
        "decision_p50_ms": 8.0, "decision_p99_ms": 20.0,
        "queryable_p50_ms": 900.0, "queryable_p99_ms": 1900.0,
        "inserts_per_s": 1.0, "startup_s": 1.5, "peak_rss_mb": 800, "processes": 3,
        "cpu_us_per_event": {"score": 61.5, "stages": 12.0},
    }  # fmt: skip
    assert E2EResult().to_json()["decision_p99_ms"] is None  # not measured: null


def test_monitoring_cost_is_measured_against_the_run_without_monitoring() -> None:
    rows = [
        ("off", E2EResult(sustained_eps=10_000.0, peak_rss_mb=900)),
        ("drift", E2EResult(sustained_eps=9_000.0, peak_rss_mb=950)),
        ("drift + shadow", E2EResult(sustained_eps=7_500.0, peak_rss_mb=1200)),
    ]
    header, off, drift, both = format_monitoring(rows)
    assert "cost" in header
    assert off.split()[-3:] == ["10,000", "0.0%", "900MB"]
    assert drift.split()[-3:] == ["9,000", "10.0%", "950MB"]
    assert both.split()[-3:] == ["7,500", "25.0%", "1,200MB"]


def test_median_run_is_the_middle_sustained_rate() -> None:
    runs = [E2EResult(sustained_eps=v) for v in (9.0, 3.0, 7.0, 5.0)]
    assert median_run(runs).sustained_eps == 5.0
    assert median_run(runs[:3]).sustained_eps == 7.0


def test_cpu_per_event_counts_only_what_a_process_spent_after_the_first_decision() -> None:
    import psutil

    from streams.bench.e2e import Usage

    usage = Usage(psutil.Process())
    sum(range(3_000_000))  # start-up work: before the first decision, not counted
    usage.sample(started=False)
    before = usage.cpu_us()
    sum(range(3_000_000))
    usage.sample(started=True)
    spent = usage.cpu_us()
    assert before == {}  # nothing counted yet
    assert set(spent) == {"worker"} and spent["worker"] > 10_000  # this process, > 10 ms
    assert usage.peak_rss > 10 * 2**20
