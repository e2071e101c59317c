"""The simulator: determinism, validity against the registry, fraud share, patterns, history."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, date, datetime
from itertools import islice
from pathlib import Path

import duckdb
import numpy as np
import pytest
from click.testing import CliRunner

from streams.ingest import Accepted, DeadLetter, Limits, RawRecord, ingest_record
from streams.schemas import SchemaRegistry
from streams.simulate import (
    ACCEPTED,
    INVALID_KINDS,
    SimulationConfig,
    SimulationError,
    build_population,
    simulate_day,
    simulate_records,
    write_history,
)
from streams.simulate.model import LOCAL_UTC_OFFSET_HOURS
from streams.simulate.records import SCHEMA_IDS
from streams.simulate.stream import simulate_events

START = datetime(2026, 3, 2, tzinfo=UTC)  # a Monday
LIMITS = Limits(262144, 32)


def _records(n: int, **kw: object) -> list:  # type: ignore[type-arg]
    config = SimulationConfig(start=START, accounts=2000, **kw)  # type: ignore[arg-type]
    return list(islice(simulate_records(config), n))


def test_same_seed_same_bytes_other_seed_other_bytes() -> None:
    a = _records(500, invalid_fraction=0.1)
    b = _records(500, invalid_fraction=0.1)
    c = _records(500, invalid_fraction=0.1, seed=8)
    assert [(r.key, r.value, r.headers) for r in a] == [(r.key, r.value, r.headers) for r in b]
    assert [r.value for r in a] != [r.value for r in c]


def test_every_record_gets_its_expected_verdict(registry: SchemaRegistry) -> None:
    records = _records(6000, invalid_fraction=0.08)
    seen: Counter[str] = Counter()
    for offset, rec in enumerate(records):
        raw = RawRecord("raw", 0, offset, 0, rec.key, rec.value, rec.headers)
        result = ingest_record(raw, registry, LIMITS)
        if rec.expected == ACCEPTED:
            assert isinstance(result, Accepted), (rec.event, getattr(result, "message", ""))
            assert result.schema.schema_id == SCHEMA_IDS[rec.event_type]
        else:
            assert isinstance(result, DeadLetter) and result.reason == rec.expected, (
                rec.invalid_kind
            )
        seen[rec.invalid_kind or rec.event_type] += 1
    assert set(INVALID_KINDS) <= set(seen)  # every kind of breakage occurred
    assert seen["label"] > 0
    invalid = sum(n for k, n in seen.items() if k in INVALID_KINDS)
    assert 0.06 < invalid / len(records) < 0.10


def test_schema_ids_match_the_registry(registry: SchemaRegistry) -> None:
    for event_type, schema_id in SCHEMA_IDS.items():
        assert registry.get(event_type, 1).schema_id == schema_id


def test_text_only_records_are_json_lines() -> None:
    import orjson

    for rec in _records(3000, invalid_fraction=0.2, text_only=True):
        assert b"\n" not in rec.value
        orjson.loads(rec.value)  # raises for non-JSON or non-UTF-8


def test_fraud_share_and_scenarios() -> None:
    pop = build_population(5000, 7)
    events = [simulate_day(pop, date(2026, 3, d), 0.02)[0] for d in range(2, 9)]
    scenario = np.concatenate([e.scenario for e in events])
    assert abs((scenario > 0).mean() - 0.02) < 0.005
    assert set(np.unique(scenario)) == {0, 1, 2, 3, 4}
    no_fraud = simulate_day(pop, date(2026, 3, 2), 0.0)[0]
    assert (no_fraud.scenario == 0).all()


def test_fraud_carries_signal() -> None:
    pop = build_population(5000, 7)
    e = np.concatenate  # shorthand
    days = [simulate_day(pop, date(2026, 3, d), 0.02)[0] for d in range(2, 9)]
    scen = e([d.scenario for d in days])
    acct = e([d.account for d in days])
    ratio = e([d.amount for d in days]) / (pop.spend[acct] * 50.0)
    hour = ((e([d.time_ms for d in days]) // 3_600_000) + LOCAL_UTC_OFFSET_HOURS) % 24
    foreign = e([pop.merchant_country[d.merchant] for d in days]) != pop.home[acct]
    risky = e([pop.merchant_risky[d.merchant] for d in days])
    fraud, genuine = scen > 0, scen == 0
    big = scen >= 2  # not card testing
    assert np.median(ratio[big]) > 5 * np.median(ratio[genuine])
    assert (hour[fraud] < 6).mean() > 2 * (hour[genuine] < 6).mean()
    assert foreign[scen == 3].all() and foreign[genuine].mean() < 0.2
    assert risky[scen == 1].mean() > 0.5 > risky[genuine].mean() * 10


def test_diurnal_and_weekly_patterns() -> None:
    pop = build_population(5000, 7)
    monday, sunday = simulate_day(pop, date(2026, 3, 2))[0], simulate_day(pop, date(2026, 3, 8))[0]
    local_hour = ((monday.time_ms // 3_600_000) + LOCAL_UTC_OFFSET_HOURS) % 24
    per_hour = np.bincount(local_hour, minlength=24)
    assert per_hour[2:5].mean() < 0.2 * per_hour[10:20].mean()
    assert len(sunday) < 0.9 * len(monday)


def test_stream_continues_the_history(tmp_path: Path) -> None:
    write_history(str(tmp_path), date(2026, 3, 2), days=1, accounts=500, seed=3)
    live = [
        e.event["event_id"]
        for e in islice(simulate_events(build_population(500, 3), START), 50)
        if e.event_type == "transaction"
    ]
    ids = {
        r[0]
        for r in duckdb.sql(
            f"select event_id from read_parquet('{tmp_path}/transaction/*/*.parquet')"
        ).fetchall()
    }
    assert live and set(live) <= ids


def test_history_layout_counts_and_labels_join(tmp_path: Path) -> None:
    report = write_history(str(tmp_path), date(2026, 3, 31), days=30, accounts=1500, seed=11)
    assert report.start_date == date(2026, 3, 2)
    assert report.rows["transaction"] > 10_000 and report.rows["label"] > 0
    glob = f"read_parquet('{tmp_path}/%s/*/*.parquet', hive_partitioning=true)"
    tx, lb = glob % "transaction", glob % "label"
    days, rows, lo, hi = duckdb.sql(
        f"select count(distinct event_date), count(*), min(event_date)::varchar, "
        f"max(event_date)::varchar from {tx}"
    ).fetchall()[0]
    assert (days, rows, lo, hi) == (30, report.rows["transaction"], "2026-03-02", "2026-03-31")
    labels, orphans, late, fraud_labelled = duckdb.sql(
        f"select count(*), count(*) filter (where t.event_id is null), "
        f"count(*) filter (where l.label_time < t.event_time), "
        f"count(*) filter (where l.is_fraud) from {lb} l left join {tx} t "
        f"on l.transaction_id = t.event_id"
    ).fetchall()[0]
    assert labels == report.rows["label"] and orphans == 0 and late == 0 and fraud_labelled > 0
    max_label = duckdb.sql(f"select max(label_time) from {lb}").fetchall()[0][0]
    assert max_label < datetime(2026, 4, 1, tzinfo=UTC)
    # Rewriting replaces: the same rows, no duplicates.
    write_history(str(tmp_path), date(2026, 3, 31), days=30, accounts=1500, seed=11)
    assert duckdb.sql(f"select count(*) from {tx}").fetchall()[0][0] == rows


def test_history_scale_smoke(tmp_path: Path) -> None:
    report = write_history(str(tmp_path), date(2026, 3, 31), days=3, accounts=20_000)
    assert 15_000 < report.rows["transaction"] < 60_000
    assert report.seconds < 30  # generous: a smoke test, not a benchmark


@pytest.mark.parametrize(
    "kwargs",
    [{"days": 0}, {"fraud_rate": 0.7}, {"accounts": 0}],
)
def test_bad_arguments_raise_simulation_error(tmp_path: Path, kwargs: dict[str, float]) -> None:
    with pytest.raises(SimulationError):
        write_history(str(tmp_path), date(2026, 3, 31), **kwargs)  # type: ignore[arg-type]
    with pytest.raises(SimulationError):
        next(simulate_records(SimulationConfig(start=START, invalid_fraction=1.5)))


def test_cli_writes_jsonl(tmp_path: Path) -> None:
    from streams.cli.simulate import simulate
    from streams.settings import Settings

    out = tmp_path / "events.jsonl"
    result = CliRunner().invoke(
        simulate,
        ["--count", "400", "--out", str(out), "--accounts", "500", "--invalid-fraction", "0.1",
         "--start", "2026-03-02"],
        obj=Settings(home=tmp_path),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert len(out.read_bytes().splitlines()) == 400
    assert "schema_violation" in result.output and "accepted" in result.output
