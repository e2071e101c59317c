"""Replay as of event time reproduces every live score across a nightly rerun, the seconds
after it finished and late events included; current features do not.

The world's nightly run R1 (for today) serves the first events. Late transactions for
yesterday then land in the lake for some accounts, and the worker's own crontab reruns
the nightly for today: run R2 overwrites today's dated exports with features that differ
for those accounts. R2 takes effect STREAMSCORE_FEATURE_SWITCH_DELAY_S (30 s) after it
finishes; the worker checks for runs every STREAMSCORE_FEATURE_RELOAD_S (5 s), so it holds
R2 before then. A probe event every 0.5 s runs from the first batch until well after R2
took effect: probes before R2 finished, between its finish and the worker's reload (the
old reload gap), between the reload and its effective time, and after it. Then late
events arrive, their event times before R2's effective time, and a second batch follows.

The live worker and the replay apply one rule to each event's own time, so every live row
must be reproduced bit for bit: same run, same features, same score, zero mismatches.
Replay dedups on (coordinates, model version), and every event already has its live
rows, so nothing is written: a replay compares instead. The test rescores every event
through ``Rescorer.rescore`` (what a replay scores, before the write) and compares each
row with the live one in ClickHouse, then runs ``replay()`` itself and checks its counts.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from streams.kafka import make_consumer, make_producer
from streams.settings import Settings
from streams.simulate.clock import rfc3339_one
from streams.simulate.records import SimRecord, SimulationConfig, simulate_records
from streams.topics import raw_topic
from tests.integration.conftest import (
    FEAST_STACK_MARKS,
    WORLD_ACCOUNTS,
    WORLD_FRAUD_RATE,
    Coordinates,
    publish,
    query,
    stop,
    wait_for_predictions,
)

pytestmark = FEAST_STACK_MARKS

LATE_AMOUNT = 4321.0
SWITCH_S = 30  # STREAMSCORE_FEATURE_SWITCH_DELAY_S of the test's worker (and its nightly)
RELOAD_S = 5  # STREAMSCORE_FEATURE_RELOAD_S: well under the switch delay
HELD = re.compile(r"features from nightly runs by event time: (.*)")
HELD_RUN = re.compile(r"([0-9a-f]{32}) from (\d{4}-\d\d-\d\dT[\d:.]+\+00:00)")


def live_stream(seed: int) -> Iterator[SimRecord]:
    """Valid transactions stamped with the wall clock as each one is made."""
    config = SimulationConfig(
        start=datetime.now(UTC), accounts=WORLD_ACCOUNTS, seed=seed, fraud_rate=WORLD_FRAUD_RATE,
        invalid_fraction=0.0, labels=False, rate=0,
    )  # fmt: skip
    return (r for r in simulate_records(config) if r.event_type == "transaction")


def take(stream: Iterator[SimRecord], n: int) -> list[SimRecord]:
    return [next(stream) for _ in range(n)]


def event_ms(record: SimRecord) -> int:
    assert record.event is not None
    moment = datetime.fromisoformat(str(record.event["event_time"]).replace("Z", "+00:00"))
    return int(moment.timestamp() * 1000)


def now_ms() -> int:
    return int(time.time() * 1000)


def stamped(record: SimRecord, time_ms: int) -> SimRecord:
    """``record`` with its event time set to ``time_ms`` (a late event: it happened then)."""
    assert record.event is not None
    event = {**record.event, "event_time": rfc3339_one(time_ms)}
    return dataclasses.replace(record, value=orjson.dumps(event), event=event)


def add_late_transactions(settings: Settings, accounts: list[str]) -> set[str]:
    """Yesterday's transactions for ``accounts``, arriving late: they change the features
    of the next nightly run for today (features at D use events before D). The entities
    they name: the accounts, and the cards and merchants of the copied rows."""
    yesterday = datetime.now(UTC).date() - timedelta(days=1)
    part = settings.home / "lake" / "transaction" / f"event_date={yesterday}"
    template = pq.read_table(next(part.glob("*.parquet"))).slice(0, len(accounts))
    assert template.num_rows == len(accounts)
    n = template.num_rows

    def replace(table: pa.Table, name: str, values: list[Any]) -> pa.Table:
        i = table.schema.get_field_index(name)
        return table.set_column(i, table.schema.field(i), pa.array(values, table.field(i).type))

    late = replace(template, "account_id", accounts)
    late = replace(late, "event_id", [str(uuid.uuid4()) for _ in range(n)])
    late = replace(late, "amount", [LATE_AMOUNT] * n)
    noon = datetime(yesterday.year, yesterday.month, yesterday.day, 12, tzinfo=UTC)
    late = replace(late, "event_time", [noon] * n)
    pq.write_table(late, part / "late-arrivals.parquet")
    return {*accounts, *late.column("card_id").to_pylist(), *late.column("merchant_id").to_pylist()}


def next_minute_after(seconds: float) -> datetime:
    moment = datetime.now(UTC) + timedelta(seconds=seconds)
    return moment.replace(second=0, microsecond=0) + timedelta(minutes=1)


@dataclasses.dataclass
class Switch:
    """What the probes saw of the switch to the rerun."""

    run_id: str  # the rerun, R2
    effective_ms: int  # when it took effect, as the worker logged it
    held_seen_ms: int  # when the test first saw the worker hold it (an upper bound)
    probes: dict[Coordinates, SimRecord]


def trickle_across_switch(
    settings: Settings,
    worker: subprocess.Popen[bytes],
    stream: Iterator[SimRecord],
    not_run: str,
    timeout: float,
    after_s: float = 8.0,
) -> Switch:
    """Publish one event every 0.5 s until ``after_s`` past the effective time of the first
    run other than ``not_run`` the worker holds (it logs what it holds at each swap).
    Each probe's event time is the moment it is made."""
    log = worker.log_path  # type: ignore[attr-defined]
    topic = raw_topic(settings)
    producer = make_producer(settings)
    landed: dict[Coordinates, SimRecord] = {}
    deadline = time.monotonic() + timeout
    found: tuple[str, int, int] | None = None
    try:
        while time.monotonic() < deadline:
            assert worker.poll() is None, f"the worker exited; see {log}"
            if found is None:
                text = log.read_text(errors="replace")
                assert "nightly run failed" not in text, f"the worker's nightly failed; see {log}"
                for held in HELD.findall(text):
                    for run_id, since in HELD_RUN.findall(held):
                        if run_id != not_run and found is None:
                            moment = datetime.fromisoformat(since)
                            found = (run_id, int(moment.timestamp() * 1000), now_ms())
            elif now_ms() > found[1] + after_s * 1000:
                return Switch(*found, landed)
            item = next(stream)

            def delivered(err: Any, msg: Any, item: SimRecord = item) -> None:
                assert err is None, err
                landed[(topic, msg.partition(), msg.offset())] = item

            producer.produce(
                topic, value=item.value, key=item.key, headers=list(item.headers),
                on_delivery=delivered,
            )  # fmt: skip
            producer.poll(0)
            time.sleep(0.5)
    finally:
        assert producer.flush(30) == 0
    raise AssertionError(f"the worker never held a new nightly run in time; see {log}")


Row = tuple[str, float, tuple[float, ...]]  # feature run, score, features


def rescored(settings: Settings, gateway: Any, features: str) -> dict[tuple[int, int, str], Row]:
    """Every event of the raw topic as a replay scores it: (partition, offset, model) → row."""
    from streams.replay import Rescorer, read_range, resolve_range

    rescorer = Rescorer(settings, gateway, run_id=f"check-{features}", features=features)
    consumer = make_consumer(settings, f"check-{uuid.uuid4().hex[:8]}")
    out: dict[tuple[int, int, str], Row] = {}
    try:
        span = resolve_range(
            consumer, raw_topic(settings), from_time=datetime(2000, 1, 1, tzinfo=UTC)
        )
        for batch in read_range(consumer, span):
            groups, counts = rescorer.rescore(batch)
            assert counts.unserved == 0 and not counts.invalid
            for group in groups:
                table = group.scored.predictions
                columns = table.select(
                    ["partition", "offset", "model_version", "feature_run_id", "score", "features"]
                ).to_pylist()
                for row in columns:
                    key = (row["partition"], row["offset"], row["model_version"])
                    out[key] = (row["feature_run_id"], row["score"], tuple(row["features"]))
    finally:
        consumer.close()
    return out


def test_replay_as_of_event_time_reproduces_every_live_score_across_a_rerun(
    scoring_settings: Settings, start_scorer: Callable[..., subprocess.Popen[bytes]]
) -> None:
    from streams.clickhouse.gateway import ClickHouseGateway
    from streams.features.paths import export_path, run_export_path
    from streams.features.run_exports import kept_runs
    from streams.features.runs import epoch_ms
    from streams.replay import CURRENT, replay

    settings = scoring_settings
    ((first_run, first_done, first_effective),) = query(
        settings, "select run_id, finished_at, effective_at from {db}.feature_runs"
    )
    # the service's first run has no run to switch from: it takes effect at its finish
    assert epoch_ms(first_effective) == epoch_ms(first_done)
    stream = live_stream(seed=21)
    batch1 = take(stream, 300)
    changed_accounts = sorted({r.event["account_id"] for r in batch1[:60]})  # type: ignore[index]
    changed = add_late_transactions(settings, changed_accounts)

    # The rerun is the worker's own crontab, once, at a minute that leaves time to start.
    fire = next_minute_after(40)
    landed1 = publish(settings, batch1)
    worker = start_scorer(
        STREAMSCORE_AGENTS="score,sink",
        STREAMSCORE_NIGHTLY_CRON=f"{fire.minute} {fire.hour} * * *",
        STREAMSCORE_FEATURE_SWITCH_DELAY_S=str(SWITCH_S),
        STREAMSCORE_FEATURE_RELOAD_S=str(RELOAD_S),
    )
    wait_for_predictions(settings, set(landed1), timeout=180, worker=worker)
    switch = trickle_across_switch(settings, worker, stream, first_run, timeout=600)
    second_run, probes = switch.run_id, switch.probes
    # Late events: they happened before R2 took effect (in the 40 s before), arrive after.
    late_items = [
        stamped(item, switch.effective_ms - 2000 * (k + 1))
        for k, item in enumerate(take(stream, 20))
    ]
    landed_late = publish(settings, late_items)
    landed2 = publish(settings, take(stream, 300))
    everything = {**landed1, **probes, **landed_late, **landed2}
    wait_for_predictions(settings, set(everything), timeout=180, worker=worker)
    stop(worker)
    log = worker.log_path.read_text()  # type: ignore[attr-defined]
    # the worker loaded both runs by run id (never the dated fallback of older runs), and
    # R2 before it took effect
    assert "kept no features by run id" not in log
    assert "before this process had loaded it" not in log
    assert switch.held_seen_ms < switch.effective_ms

    runs = {
        run: (epoch_ms(done), epoch_ms(effective))
        for run, done, effective in query(
            settings, "select run_id, finished_at, effective_at from {db}.feature_runs"
        )
    }
    assert set(runs) == {first_run, second_run}
    second_done, second_effective = runs[second_run]
    assert second_effective == second_done + SWITCH_S * 1000 == switch.effective_ms
    # R2 rewrote today's dated export; R1's kept copy still holds what R1 served.
    today = query(settings, "select nightly_date from {db}.feature_runs limit 1")[0][0]
    dated = pq.read_table(export_path(settings, "account_features", today))
    assert dated.equals(pq.read_table(run_export_path(settings, second_run, "account_features")))
    kept_first = pq.read_table(run_export_path(settings, first_run, "account_features"))
    assert not dated.equals(kept_first)
    assert sorted(kept_runs(settings)) == sorted(runs)  # both kept, nothing else

    live: dict[tuple[int, int, str], Row] = {
        (p, o, m): (run, score, tuple(features))
        for p, o, m, run, score, features in query(
            settings,
            "select partition, offset, model_version, feature_run_id, score, features "
            "from {db}.predictions",
        )
    }
    assert len(live) == 2 * len(everything)  # champion and shadow
    by_event_run = {(p, o): run for (p, o, _), (run, _, _) in live.items()}
    topic = raw_topic(settings)

    def as_of(partition: int, offset: int) -> str:
        """The rule, independently: R2 from its effective time on (its date is today)."""
        return (
            second_run
            if event_ms(everything[(topic, partition, offset)]) >= second_effective
            else first_run
        )

    # Live: every event was served the run in effect at its event time.
    assert {key: by_event_run[key[1:]] for key in everything} == {
        key: as_of(*key[1:]) for key in everything
    }
    assert {by_event_run[(p, o)] for (_, p, o) in landed1} == {first_run}
    assert {by_event_run[(p, o)] for (_, p, o) in landed_late} == {first_run}
    assert {by_event_run[(p, o)] for (_, p, o) in landed2} == {second_run}
    # the probes cover every phase of the switch, each phase served as the rule says
    phases: dict[str, set[str]] = {}
    for (_, p, o), item in probes.items():
        t = event_ms(item)
        phase = (
            "before R2 finished" if t < second_done
            else "finished, not yet held" if t < switch.held_seen_ms - 1000
            else "held, not in effect" if t < second_effective
            else "in effect"
        )  # fmt: skip
        phases.setdefault(phase, set()).add(by_event_run[(p, o)])
    assert phases["before R2 finished"] == {first_run}
    assert phases["held, not in effect"] == {first_run}
    assert phases["in effect"] == {second_run}
    in_gap = [i for i in probes.values() if second_done <= event_ms(i) < second_effective]
    assert len(in_gap) >= 20  # 30 s at two a second, less a few
    assert phases.get("finished, not yet held", {first_run}) == {first_run}

    gateway = ClickHouseGateway.open(settings)
    try:
        replayed = rescored(settings, gateway, "as-of-event-time")
        current = rescored(settings, gateway, CURRENT)
        whole = {"from_time": datetime(2000, 1, 1, tzinfo=UTC)}
        _, as_of_counts, _ = replay(settings, gateway, whole, topic=topic)
        _, current_counts, _ = replay(settings, gateway, whole, topic=topic, features=CURRENT)
    finally:
        gateway.close()

    # As of event time: every row, the switch's seconds and the late events included, with
    # the very same run, features and score, bit for bit.
    assert set(replayed) == set(live)
    for key, (run, score, features) in replayed.items():
        assert run == live[key][0] == as_of(key[0], key[1]), key
        assert np.float32(score) == np.float32(live[key][1]), key
        assert features == live[key][2], key

    # Current features: every event with R2; the first batch's events of the changed
    # accounts are scored differently, and only events whose features changed are.
    assert {run for run, _, _ in current.values()} == {second_run}
    moved = {k for k, (_, s, _) in current.items() if np.float32(s) != np.float32(live[k][1])}
    refeatured = {k for k, (_, _, f) in current.items() if f != live[k][2]}
    assert moved and moved <= refeatured
    first_batch = {(p, o) for (_, p, o) in landed1}
    assert {(p, o) for p, o, _ in moved} & first_batch
    # (merchant features also change: their fraud-rate prior is global, so the late
    # rows move every merchant's a little)
    late = {(p, o) for (_, p, o), r in landed1.items() if r.event["account_id"] in changed}  # type: ignore[index]
    assert late and late <= {(p, o) for p, o, _ in refeatured}

    # replay() writes nothing (every row is there) and finds no disagreement at all.
    assert as_of_counts.rows_written == current_counts.rows_written == 0
    assert as_of_counts.rows_present == current_counts.rows_present == len(live)
    assert as_of_counts.run_mismatch == 0 and as_of_counts.run_changed == {}
    assert as_of_counts.rows_compared == len(live) and as_of_counts.scores_changed == 0
    assert as_of_counts.unserved == 0
    assert set(as_of_counts.runs_used) == {first_run, second_run}
    assert as_of_counts.snapshots_loaded >= 2
    first_run_events = sum(1 for run in by_event_run.values() if run == first_run)
    assert current_counts.run_mismatch == first_run_events
    assert current_counts.run_changed == {(first_run, second_run): first_run_events}
    assert current_counts.scores_changed == len(moved) > 0
