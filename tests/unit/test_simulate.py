"""The simulator: determinism, validity against the registry, fraud share, patterns, history."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, date, datetime
from itertools import islice, pairwise
from pathlib import Path

import duckdb
import numpy as np
import orjson
import pytest
from click.testing import CliRunner

from streams.ingest import Accepted, DeadLetter, Limits, RawRecord, ingest_record
from streams.schemas import SchemaRegistry
from streams.simulate import (
    ACCEPTED,
    INVALID_KINDS,
    LiveClock,
    SimRecord,
    SimulationConfig,
    SimulationError,
    build_population,
    simulate_day,
    simulate_records,
    write_history,
)
from streams.simulate.clock import rfc3339_one
from streams.simulate.model import LOCAL_UTC_OFFSET_HOURS
from streams.simulate.records import SCHEMA_IDS
from streams.simulate.stream import rfc3339_ms, simulate_events

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


# -- the live clock ----------------------------------------------------------------------


class FakeClock:
    """Epoch seconds that move only when told to; counts its readings."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now
        self.readings = 0

    def __call__(self) -> float:
        self.readings += 1
        return self.now


def _event_ms(rec: SimRecord) -> int:
    assert rec.event is not None
    text = rec.event["event_time" if rec.event_type == "transaction" else "label_time"]
    return int(datetime.fromisoformat(text).timestamp() * 1000)


def _live(n: int, clock: FakeClock, rate: float = 1000.0, **kw: object) -> list[SimRecord]:
    config = SimulationConfig(start=START, accounts=2000, rate=rate, **kw)  # type: ignore[arg-type]
    return list(islice(simulate_records(config, clock=clock), n))


def test_live_records_span_n_over_rate_seconds_of_wall_clock_from_the_first() -> None:
    n, rate = 6000, 1000.0
    clock = FakeClock()
    records = _live(n, clock, rate, invalid_fraction=0.05)
    valid = [r for r in records if r.valid]
    times = [_event_ms(r) for r in valid]
    assert times[0] == 1_800_000_000_000  # the clock's reading when the first was stamped
    span_s = (times[-1] - times[0]) / 1000
    assert span_s == pytest.approx(n / rate, rel=0.01)  # simulated: ~13 days for these
    assert all(a <= b for a, b in pairwise(times))
    assert len(valid) < n  # the invalid records took slots too: the rate counts every record
    # A transaction's invalid copy carries its own slot, just before the transaction's.
    copies = [(a, b) for a, b in pairwise(records) if a.invalid_kind == "bad_mcc"]
    assert copies
    for broken, after in copies:
        assert after.event is not None
        stamp = datetime.fromisoformat(orjson.loads(broken.value)["event_time"])
        assert stamp < datetime.fromisoformat(after.event["event_time"])


def test_live_labels_come_after_their_transactions_on_the_wall_clock() -> None:
    records = _live(8000, FakeClock(), 2000.0)
    sent = {r.event["event_id"]: _event_ms(r) for r in records if r.event_type == "transaction"}  # type: ignore[index]
    labels = [r for r in records if r.event_type == "label"]
    assert labels, "a few simulated weeks of traffic give labels"
    joined = [r for r in labels if r.event["transaction_id"] in sent]  # type: ignore[index]
    assert joined and all(_event_ms(r) > sent[r.event["transaction_id"]] for r in joined)  # type: ignore[index]
    assert all(_event_ms(r) - min(sent.values()) <= 4000 for r in labels)  # 8,000 at 2,000/s


def test_live_stream_is_the_simulated_one_restamped() -> None:
    live = _live(3000, FakeClock(), invalid_fraction=0.05)
    config = SimulationConfig(start=START, accounts=2000, invalid_fraction=0.05)
    simulated = list(islice(simulate_records(config), 3000))
    assert [(r.key, r.headers, r.expected, r.invalid_kind, r.scenario) for r in live] == [
        (r.key, r.headers, r.expected, r.invalid_kind, r.scenario) for r in simulated
    ]

    def timeless(rec: SimRecord) -> dict[str, object]:
        assert rec.event is not None
        return {k: v for k, v in rec.event.items() if k not in ("event_time", "label_time")}

    pairs = [(a, b) for a, b in zip(live, simulated, strict=True) if a.valid]
    assert all(timeless(a) == timeless(b) for a, b in pairs)
    assert all(a.event != b.event for a, b in pairs)  # but every event time differs


def test_live_same_seed_and_clock_same_bytes_other_clock_only_other_times() -> None:
    a = _live(1500, FakeClock(), invalid_fraction=0.1)
    b = _live(1500, FakeClock(), invalid_fraction=0.1)
    later = _live(1500, FakeClock(1_800_000_060.0), invalid_fraction=0.1)
    assert [(r.key, r.value, r.headers) for r in a] == [(r.key, r.value, r.headers) for r in b]
    assert [r.value for r in a] != [r.value for r in later]
    assert [_event_ms(r) + 60_000 for r in a if r.valid] == [_event_ms(r) for r in later if r.valid]


def test_live_at_rate_zero_stamps_the_clock_as_each_record_is_made() -> None:
    clock = FakeClock()
    config = SimulationConfig(start=START, accounts=2000, rate=0.0, labels=False)
    records = simulate_records(config, clock=clock)
    times = []
    for step in (0.0, 0.25, 0.25, -5.0, 1.0):  # a clock stepping back is not followed
        clock.now += step
        times.append(_event_ms(next(records)))
    assert times == [1_800_000_000_000, 1_800_000_000_250, 1_800_000_000_500,
                     1_800_000_000_500, 1_800_000_000_500]  # fmt: skip


def test_live_clock_schedule_and_bad_rates() -> None:
    clock = FakeClock()
    live = LiveClock(3.0, clock)
    assert live.start_ms is None
    assert [live.next_ms() for _ in range(4)] == [
        1_800_000_000_000,
        1_800_000_000_333,
        1_800_000_000_666,
        1_800_000_001_000,
    ]
    assert clock.readings == 1  # a schedule: the clock is read once, at the first stamp
    assert rfc3339_one(1_800_000_000_333) == "2027-01-15T08:00:00.333Z"
    assert rfc3339_one(1_800_000_000_333) == rfc3339_ms(np.array([1_800_000_000_333]))[0]
    for bad in (-1.0, float("nan")):
        with pytest.raises(SimulationError):
            LiveClock(bad)
        with pytest.raises(SimulationError):
            next(simulate_records(SimulationConfig(start=START, rate=bad)))


def test_cli_with_a_rate_stamps_the_wall_clock(tmp_path: Path) -> None:
    import time

    from streams.cli.simulate import simulate
    from streams.settings import Settings

    out = tmp_path / "live.jsonl"
    began = time.time()
    result = CliRunner().invoke(
        simulate,
        ["--count", "300", "--rate", "1000", "--out", str(out), "--accounts", "500",
         "--invalid-fraction", "0", "--no-labels", "--start", "2026-03-02"],
        obj=Settings(home=tmp_path),
    )  # fmt: skip
    ended = time.time()
    assert result.exit_code == 0, result.output
    times = [
        datetime.fromisoformat(orjson.loads(line)["event_time"]).timestamp()
        for line in out.read_bytes().splitlines()
    ]
    assert len(times) == 300
    assert began - 0.01 <= times[0] and times[-1] <= ended + 0.01  # today, not March 2026
    assert times[-1] - times[0] == pytest.approx(0.299, abs=0.002)
    # --clock simulated keeps the population's pace from --start.
    result = CliRunner().invoke(
        simulate,
        ["--count", "50", "--rate", "1000", "--clock", "simulated", "--out", str(out),
         "--accounts", "500", "--start", "2026-03-02"],
        obj=Settings(home=tmp_path),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    first = orjson.loads(out.read_bytes().splitlines()[0])["event_time"]
    assert first.startswith("2026-03-02T")
