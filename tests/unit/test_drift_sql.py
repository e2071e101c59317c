"""One PSI: the drift_stats view (migrations 0007, 0008) on an in-process chDB against the Python.

The same counts go through ``drift_statistics``/``Baseline`` and through ``drift_deltas``
and the view; PSI, KS, JS distance, noise floor, missing floor and both alert rules must
agree to 1e-9. Then the
delta table's own promises: a re-sent batch counts once, whole windows replace
themselves, windows written before the migration stay visible, and the monitor's two
write paths land there. chDB hosts one data path per process: the module's clients are
closed at the end so that other tests can open theirs.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from streams.clickhouse.client import connect
from streams.clickhouse.gateway import ClickHouseGateway
from streams.clickhouse.migrations import apply_migrations, load_migrations
from streams.errors import ConfigError
from streams.monitoring.drift import (
    EPSILON,
    SCORE,
    Baseline,
    DriftAccumulator,
    HistogramRow,
    drift_statistics,
    psi,
    window_table,
)
from streams.monitoring.metrics import WorkerMetrics
from streams.monitoring.stream import DriftMonitor
from streams.report import data as report_data
from streams.settings import Settings

MINUTE = 60_000
T0 = 1_767_225_600_000  # 2026-01-01T00:00Z
_BASELINE_COLUMNS = (
    "model_version", "feature", "feature_index", "edges", "expected", "threshold",
    "reference_rows", "critical", "missing_expected",
)  # fmt: skip
LEGACY = HistogramRow("legacy-1", "f", 0, T0 - 60 * MINUTE, MINUTE, 0, 300, 2, [100, 100, 100])


@pytest.fixture(scope="module")
def gateway(chdb_settings: Settings) -> Iterator[ClickHouseGateway]:
    """Migrated to 0006, a window written whole the old way, then migrated to the end."""
    database = chdb_settings.clickhouse_database
    client = connect(chdb_settings)
    try:
        before = [m for m in load_migrations() if m.version < 7]
        apply_migrations(client, database, before)
        old = ClickHouseGateway(client, database)
        table = window_table([LEGACY], "old-worker").drop_columns(
            ["source", "first_offset", "last_offset"]
        )
        old.insert_arrow("drift_histograms", table.append_column("flushed_at", _now(1)))
    finally:
        client.close()
    opened = ClickHouseGateway.open(chdb_settings)
    yield opened
    opened.close()


def _now(n: int) -> pa.Array:
    return pa.array([T0] * n, type=pa.int64()).cast(pa.timestamp("ms", tz="UTC"))


def insert_baselines(gateway: ClickHouseGateway, model: str, columns: list[Baseline]) -> None:
    rows = [
        [model, b.name, b.column, b.edges.tolist(), b.expected.tolist(), b.threshold,
         b.reference_rows, b.critical, b.missing_expected]
        for b in columns
    ]  # fmt: skip
    gateway.insert_columns("drift_baselines", list(zip(*rows, strict=True)), _BASELINE_COLUMNS)


def stats(gateway: ClickHouseGateway, model: str) -> dict[tuple[str, int], dict[str, Any]]:
    result = gateway.query(
        "select feature, toUnixTimestamp64Milli(window_start) as w, rows, psi, ks, "
        "js_distance, noise_floor, alert, missing_rate, psi_alert, missing_alert, "
        f"missing_floor, missing_expected from {gateway.table('drift_stats')} "
        "where model_version = {m:String}",
        {"m": model},
    )
    names = result.column_names
    return {(r[0], int(r[1])): dict(zip(names, r, strict=True)) for r in result.result_rows}


def test_the_view_and_the_python_compute_the_same_statistics(gateway: ClickHouseGateway) -> None:
    rng = np.random.default_rng(11)
    model = "psi-1"
    columns: list[Baseline] = []
    cases: list[tuple[Baseline, list[int]]] = []
    for i in range(40):
        bins = int(rng.integers(2, 21))
        expected = rng.dirichlet(np.ones(bins))
        if i % 3 == 0:
            expected[rng.integers(0, bins)] = 0.0  # an empty baseline bin: floored
            expected /= expected.sum()
        if i % 5 == 0:
            expected = np.round(expected, 3)  # a sidecar's rounding: not summing to 1
        rows = int(rng.choice([50, 199, 200, 250, 5_000]))
        counts = rng.multinomial(rows, rng.dirichlet(np.ones(bins) * 0.7)).tolist()
        if i == 7:
            counts = [0] * bins  # nothing counted (every value NaN)
        reference = int(rng.choice([0, 10_000]))
        threshold = 0.1 if i % 4 else 0.0
        expected_missing = float(rng.choice([0.0, 0.02, 0.3]))
        b = Baseline(
            f"f{i}", i, np.arange(bins - 1.0), expected, threshold, reference, expected_missing
        )
        # Rows served from defaults: none, about the expected share, or far more.
        share = float(rng.choice([0.0, expected_missing, expected_missing + 0.2]))
        missing = int(rng.binomial(max(sum(counts), 1), min(share, 1.0)))
        columns.append(b)
        cases.append((b, counts, missing))
    # The baseline's own proportions with half the rows served from defaults: the missing
    # rule alone.
    alone = Baseline("f40", 40, np.array([0.5]), np.array([0.5, 0.5]), 0.1, 10_000)
    columns.append(alone)
    cases.append((alone, [125, 125], 125))
    insert_baselines(gateway, model, columns)
    rows = [
        HistogramRow(model, b.name, b.column, T0, MINUTE, 0, max(sum(c), 1), m, c)
        for b, c, m in cases
    ]
    gateway.insert_arrow("drift_deltas", window_table(rows, "w"))
    found = stats(gateway, model)
    for b, counts, missing in cases:
        got = found[(b.name, T0)]
        value, ks, js = drift_statistics(np.array(counts), b.expected)
        n = max(sum(counts), 1)
        assert abs(got["psi"] - value) <= 1e-9, (b.name, got["psi"], value)
        assert abs(got["ks"] - ks) <= 1e-9 and abs(got["js_distance"] - js) <= 1e-9, b.name
        assert abs(got["noise_floor"] - b.noise_floor(n)) <= 1e-9 * max(1.0, b.noise_floor(n))
        assert abs(got["missing_floor"] - b.missing_floor(n)) <= 1e-9, b.name
        assert got["missing_expected"] == b.missing_expected
        assert abs(got["missing_rate"] - missing / n) <= 1e-12
        assert bool(got["psi_alert"]) == b.alerts(value, n), b.name
        assert bool(got["missing_alert"]) == b.missing_alerts(missing, n), b.name
        assert bool(got["alert"]) == (b.alerts(value, n) or b.missing_alerts(missing, n))
        # The report's PSI is the same function.
        assert report_data.psi(counts, b.expected) == value
    # Both rules were exercised, each alone.
    for rule, other in (("psi_alert", "missing_alert"), ("missing_alert", "psi_alert")):
        assert any(found[(b.name, T0)][rule] and not found[(b.name, T0)][other] for b, *_ in cases)
    assert any(not found[(b.name, T0)]["alert"] for b, *_ in cases)
    assert found[("f7", T0)]["psi"] == 0.0


def test_the_one_psi_floors_and_renormalises() -> None:
    expected = np.array([0.5, 0.5, 0.0])
    p = np.array([0.9, 0.1, 0.0])
    pf, qf = np.maximum(p, EPSILON), np.maximum(expected, EPSILON)
    pf, qf = pf / pf.sum(), qf / qf.sum()
    assert psi([90, 10, 0], expected) == pytest.approx(float(np.sum((pf - qf) * np.log(pf / qf))))
    assert report_data.psi is psi


def test_a_resent_batch_counts_once_and_batches_add_up(gateway: ClickHouseGateway) -> None:
    model = "deltas-1"
    columns = [Baseline("amount", 0, np.array([0.0, 10.0]), np.array([0.2, 0.6, 0.2]), 0.1),
               Baseline(SCORE, -1, np.array([0.5]), np.array([0.5, 0.5]), 0.1)]  # fmt: skip
    insert_baselines(gateway, model, columns)
    acc = DriftAccumulator(MINUTE, {model: columns})
    x = np.array([[-1.0], [5.0], [5.0], [20.0]], dtype=np.float32)
    missing = np.zeros((4, 1), dtype=np.bool_)
    scores = np.array([0.1, 0.7, np.nan, 0.9], dtype=np.float32)
    tables = []
    for batch in range(2):
        seen = acc.observe(
            np.array([0, 0, 1, 1]), np.full(4, T0 + batch * 1_000), x, missing, {model: scores},
            now_ms=T0, offsets=np.arange(4) + 4 * batch, source="valid",
        )  # fmt: skip
        tables.append(seen.deltas.table("w"))
    # One insert of both batches (the sink's bulk insert), then the first re-sent alone.
    gateway.insert_arrow("drift_deltas", pa.concat_tables(tables))
    gateway.insert_arrow("drift_deltas", tables[0])
    found = stats(gateway, model)
    assert found[("amount", T0)]["rows"] == 8
    assert found[(SCORE, T0)]["rows"] == 8
    assert found[(SCORE, T0)]["missing_rate"] == pytest.approx(2 / 8)
    counts = gateway.query(
        f"select sumForEach(counts) from {gateway.table('drift_deltas')} final "
        "where model_version = {m:String} and feature = 'amount'",
        {"m": model},
    ).result_rows[0][0]
    assert list(counts) == [2, 4, 2]
    value = drift_statistics(np.array([2, 4, 2]), columns[0].expected)[0]
    assert found[("amount", T0)]["psi"] == pytest.approx(value, abs=1e-9)


def test_windows_written_before_the_migration_are_kept(gateway: ClickHouseGateway) -> None:
    insert_baselines(
        gateway, "legacy-1", [Baseline("f", 0, np.array([1.0, 2.0]), np.full(3, 1 / 3), 0.1)]
    )
    found = stats(gateway, "legacy-1")
    assert found[("f", LEGACY.window_start_ms)]["rows"] == 300
    assert found[("f", LEGACY.window_start_ms)]["psi"] == pytest.approx(0.0, abs=1e-12)


def test_the_monitors_write_paths(gateway: ClickHouseGateway) -> None:
    model = "monitor-1"
    columns = [Baseline("amount", 0, np.array([0.0, 10.0]), np.array([0.2, 0.6, 0.2]), 0.1)]
    insert_baselines(gateway, model, columns)
    clock = [(T0 + 6 * MINUTE) / 1000]
    common: dict[str, Any] = {
        "window_seconds": 60, "thresholds": {}, "event_type": "transaction",
        "source_topic": "raw", "entity_features": [1], "entity_names": ["account"],
        "worker_id": "w", "clock": lambda: clock[0],
    }  # fmt: skip
    x = np.array([[5.0], [5.0], [20.0]], dtype=np.float32)
    missing = np.zeros((3, 1), dtype=np.bool_)
    scores = {model: np.array([0.1, 0.2, 0.3], dtype=np.float32)}
    parts, offsets = np.array([0, 0, 3]), np.array([10, 11, 5])

    metrics = WorkerMetrics()
    deltas = DriftMonitor(gateway, emit="deltas", valid_topic="valid", metrics=metrics, **common)
    deltas.accumulator.set_baselines({model: columns})
    event_ms = np.array([T0 + 5 * MINUTE, T0 + 5 * MINUTE, T0 + 9_999 * MINUTE])  # one future
    seen = deltas.observe_arrays(parts, offsets, event_ms, x, missing, scores)
    assert (seen.future, seen.binned) == (1, 2)
    deltas.write_deltas(deltas.delta_table(seen), "valid|0:10-11|monitor-1")
    deltas.write_deltas(deltas.delta_table(seen), "valid|0:10-11|monitor-1")  # a retry
    with pytest.raises(ConfigError, match="twice"):
        deltas.write(seen.closed)
    assert b'outcome="future",reason="",stage="drift"} 1.0' in metrics.exposition()
    found = stats(gateway, model)
    assert found[("amount", T0 + 5 * MINUTE)]["rows"] == 2

    # Whole windows (the scoring agent's path): re-emitting one replaces it.
    whole = DriftMonitor(gateway, **common)
    whole.accumulator.set_baselines({model: columns})
    start = T0 + 20 * MINUTE
    clock[0] = (start + 15 * MINUTE) / 1000
    whole.observe_arrays(parts, offsets, np.full(3, start), x, missing, scores)
    closed = whole.observe_arrays(parts[:1], offsets[:1], np.array([start + 12 * MINUTE]), x[:1],
                                  missing[:1], {model: scores[model][:1]}).closed  # fmt: skip
    assert len(closed) == 2  # partitions 0 and 3 (quiet: it follows partition 0)
    whole.write(closed)
    whole.write(closed.histogram_rows())
    assert whole.take_deltas() is None
    assert stats(gateway, model)[("amount", start)]["rows"] == 3
    assert math.isclose(
        stats(gateway, model)[("amount", start)]["psi"],
        drift_statistics(np.array([0, 2, 1]), columns[0].expected)[0],
        abs_tol=1e-9,
    )


def test_deltas_need_a_valid_topic(gateway: ClickHouseGateway) -> None:
    with pytest.raises(ConfigError, match="valid_topic"):
        DriftMonitor(
            gateway, window_seconds=60, thresholds={}, event_type="t", source_topic="raw",
            entity_features=[], entity_names=[], worker_id="w", emit="deltas",
        )  # fmt: skip
