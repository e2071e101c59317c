"""Replay as of event time reproduces live scores across a nightly rerun; current features do not.

The world's nightly run R1 (for today) serves the first events. Late transactions for
yesterday then land in the lake for some accounts, and the worker's own crontab reruns
the nightly for today: run R2 overwrites today's dated exports with features that differ
for those accounts, and the worker's reload timer swaps to it. A trickle of probe events
runs from the first batch until the worker logs the swap (they straddle R2's finish: the
reload gap), then a second batch follows.

Replay dedups on (coordinates, model version), and every event already has its live
rows, so nothing is written: a replay compares instead. The test rescores every event
through ``Rescorer.rescore`` (what a replay scores, before the write) and compares each
row with the live one in ClickHouse, then runs ``replay()`` itself and checks that its
counts (runs that differ, scores that changed, rows written) say the same.
"""

from __future__ import annotations

import re
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from streams.kafka import make_consumer, make_producer
from streams.settings import Settings
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
SWAP = re.compile(r"features now from nightly run ([0-9a-f]{32})")


def live_stream(seed: int) -> Iterator[SimRecord]:
    """Valid transactions stamped with the wall clock as each one is made."""
    config = SimulationConfig(
        start=datetime.now(UTC), accounts=WORLD_ACCOUNTS, seed=seed, fraud_rate=WORLD_FRAUD_RATE,
        invalid_fraction=0.0, labels=False, rate=0,
    )  # fmt: skip
    return (r for r in simulate_records(config) if r.event_type == "transaction")


def take(stream: Iterator[SimRecord], n: int) -> list[SimRecord]:
    return [next(stream) for _ in range(n)]


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


def trickle_until_swap(
    settings: Settings,
    worker: subprocess.Popen[bytes],
    stream: Iterator[SimRecord],
    not_run: str,
    timeout: float,
) -> tuple[str, dict[Coordinates, SimRecord]]:
    """Publish one event every 0.5 s until the worker swaps to a run other than
    ``not_run`` (a swap happens on the next batch); that run's id and where the probes
    landed. Each probe's event time is the moment it is sent."""
    log = worker.log_path  # type: ignore[attr-defined]
    topic = raw_topic(settings)
    producer = make_producer(settings)
    landed: dict[Coordinates, SimRecord] = {}
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            assert worker.poll() is None, f"the worker exited; see {log}"
            text = log.read_text(errors="replace")
            assert "nightly run failed" not in text, f"the worker's nightly failed; see {log}"
            swapped = [r for r in SWAP.findall(text) if r != not_run]
            if swapped:
                return swapped[0], landed
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
    raise AssertionError(f"the worker never swapped to a new nightly run; see {log}")


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


def test_replay_as_of_event_time_reproduces_live_scores_across_a_rerun(
    scoring_settings: Settings, start_scorer: Callable[..., subprocess.Popen[bytes]]
) -> None:
    from streams.clickhouse.gateway import ClickHouseGateway
    from streams.features.paths import export_path, run_export_path
    from streams.features.run_exports import kept_runs
    from streams.features.runs import epoch_ms
    from streams.replay import CURRENT, replay

    settings = scoring_settings
    (first_run,) = query(settings, "select run_id from {db}.feature_runs")[0]
    stream = live_stream(seed=21)
    batch1 = take(stream, 300)
    changed_accounts = sorted({r.event["account_id"] for r in batch1[:60]})
    changed = add_late_transactions(settings, changed_accounts)

    # The rerun is the worker's own crontab, once, at a minute that leaves time to start.
    fire = next_minute_after(40)
    landed1 = publish(settings, batch1)
    worker = start_scorer(
        STREAMSCORE_AGENTS="score,sink", STREAMSCORE_NIGHTLY_CRON=f"{fire.minute} {fire.hour} * * *"
    )
    wait_for_predictions(settings, set(landed1), timeout=180, worker=worker)
    second_run, probes = trickle_until_swap(settings, worker, stream, first_run, timeout=600)
    landed2 = publish(settings, take(stream, 300))
    everything = {**landed1, **probes, **landed2}
    wait_for_predictions(settings, set(everything), timeout=180, worker=worker)
    stop(worker)
    # the worker loaded both runs by run id (never the dated fallback of older runs)
    assert "kept no features by run id" not in worker.log_path.read_text()  # type: ignore[attr-defined]

    runs = dict(query(settings, "select run_id, finished_at from {db}.feature_runs"))
    assert set(runs) == {first_run, second_run}
    second_live_ms = epoch_ms(runs[second_run])  # R2's nightly date is R1's: today
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
    # the live path records the snapshot's run: R1 for the first batch, R2 for the second
    by_event_run = {(p, o): run for (p, o, _), (run, _, _) in live.items()}
    assert {by_event_run[(p, o)] for (_, p, o) in landed1} == {first_run}
    assert {by_event_run[(p, o)] for (_, p, o) in landed2} == {second_run}

    topic = raw_topic(settings)

    def as_of(partition: int, offset: int) -> str:
        """The rule, independently: R2 from its finish on (its date is today)."""
        stamp = everything[(topic, partition, offset)].event["event_time"]
        moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
        return second_run if epoch_ms(moment) >= second_live_ms else first_run

    gap = {(p, o) for (_, p, o) in everything if by_event_run[(p, o)] != as_of(p, o)}
    assert gap <= {(p, o) for (_, p, o) in probes}  # only probes straddle the reload

    gateway = ClickHouseGateway.open(settings)
    try:
        replayed = rescored(settings, gateway, "as-of-event-time")
        current = rescored(settings, gateway, CURRENT)
        whole = {"from_time": datetime(2000, 1, 1, tzinfo=UTC)}
        _, as_of_counts, _ = replay(settings, gateway, whole, topic=topic)
        _, current_counts, _ = replay(settings, gateway, whole, topic=topic, features=CURRENT)
    finally:
        gateway.close()

    # As of event time: each event gets the run the rule names, and wherever that is the
    # run the worker served, the very same features and score, bit for bit.
    assert set(replayed) == set(live)
    same = 0
    for key, (run, score, features) in replayed.items():
        assert run == as_of(key[0], key[1]), key
        if (key[0], key[1]) in gap:
            continue
        assert run == live[key][0]
        assert np.float32(score) == np.float32(live[key][1]), key
        assert features == live[key][2], key
        same += 1
    assert same == 2 * (len(everything) - len(gap)) and same >= 2 * 600

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
    late = {(p, o) for (_, p, o), r in landed1.items() if r.event["account_id"] in changed}
    assert late and late <= {(p, o) for p, o, _ in refeatured}

    # replay() writes nothing (every row is there) and reports the same disagreements.
    gap_rows_changed = sum(
        1
        for key, (_, score, _) in replayed.items()
        if (key[0], key[1]) in gap and np.float32(score) != np.float32(live[key][1])
    )
    assert as_of_counts.rows_written == current_counts.rows_written == 0
    assert as_of_counts.rows_present == current_counts.rows_present == len(live)
    assert as_of_counts.run_mismatch == len(gap)
    assert as_of_counts.scores_changed == gap_rows_changed
    assert as_of_counts.unserved == 0
    assert set(as_of_counts.runs_used) == {first_run, second_run}
    assert as_of_counts.snapshots_loaded >= 2
    first_run_events = sum(1 for run in by_event_run.values() if run == first_run)
    assert current_counts.run_mismatch == first_run_events
    assert current_counts.run_changed == {(first_run, second_run): first_run_events}
    assert current_counts.scores_changed == len(moved) > 0
