"""Which nightly run is in effect at an event's time, and which kept runs the nightly job prunes.

Pure functions over a run history (no ClickHouse): ``select_runs``/``RunTimeline`` against
a brute-force reading of the rule (effective_at, nightly date), the tail of the newest
runs a scoring process holds (``recent_runs_sql``, ``hold_from``), and ``runs_to_prune``
on a daily history.
"""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta

import pytest

from streams.features.runs import (
    COLUMNS,
    NightlyRun,
    RunTimeline,
    epoch_ms,
    hold_from,
    latest_run_sql,
    recent_runs_sql,
    run_from_row,
    runs_to_prune,
    select_runs,
)

D1 = date(2024, 5, 1)


def at(day: date, hour: int, minute: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=UTC)


def run(
    run_id: str,
    nightly: date,
    finished: datetime,
    *,
    status: str = "success",
    service: str = "fraud_v1",
    delay: timedelta | None = None,
) -> NightlyRun:
    """A run finished at ``finished``, in effect ``delay`` later (None: a row recorded
    before effective times, in effect at its finish)."""
    return NightlyRun(
        run_id, nightly, service, status, finished - timedelta(minutes=20), finished,
        effective_at=None if delay is None else finished + delay,
    )  # fmt: skip


def ms(moment: datetime) -> int:
    return epoch_ms(moment)


D2, D3, D4 = (D1 + timedelta(days=k) for k in (1, 2, 3))
HISTORY = [
    run("a", D1, at(D1, 2)),
    run("b", D2, at(D2, 2)),
    run("b-rerun", D2, at(D2, 5)),  # same date, later finish: replaces b from 05:00
    run("failed", D3, at(D3, 2), status="failed"),  # never live
    run("old-rerun", D1, at(D3, 3)),  # an older date rerun later: never picked
    run("future", D4, at(D3, 10)),  # recorded for D4 on D3: serves from D4 00:00 only
]


def test_each_event_gets_the_run_live_at_its_time() -> None:
    events = {
        at(D1, 1): None,  # before the first run finished: no features as of then
        at(D1, 2): "a",  # recorded at that very millisecond: live
        at(D1, 23, 59): "a",
        at(D2, 1): "a",  # D2's run had not finished: the worker served a
        at(D2, 3): "b",
        at(D2, 6): "b-rerun",
        at(D3, 4): "b-rerun",  # the D1 rerun is older by nightly date; the D3 run failed
        at(D3, 11): "b-rerun",  # "future" is recorded but its features are D4's
        at(D4, 0): "future",
    }
    times = [ms(t) for t in events]
    assert select_runs(times, HISTORY) == list(events.values())
    shuffled = HISTORY[:]
    random.Random(3).shuffle(shuffled)
    assert select_runs(times, shuffled) == list(events.values())  # order of rows is irrelevant


def test_timeline_lists_only_runs_that_were_ever_live() -> None:
    timeline = RunTimeline.from_runs(HISTORY)
    assert [r.run_id for r in timeline.runs] == ["a", "b", "b-rerun", "future"]
    assert timeline.starts_ms.tolist() == [
        ms(at(D1, 2)), ms(at(D2, 2)), ms(at(D2, 5)), ms(at(D4, 0)),
    ]  # fmt: skip
    assert timeline.first_live_ms == ms(at(D1, 2))
    assert RunTimeline.from_runs([]).first_live_ms is None
    assert select_runs([ms(at(D2, 3))], []) == [None]


def _brute_force(t: int, history: list[NightlyRun]) -> str | None:
    """The rule as the docstring states it, one event at a time."""
    day = datetime.fromtimestamp(t / 1000, UTC).date()

    def effective(r: NightlyRun) -> int:
        return epoch_ms(r.effective_at or r.finished_at)

    eligible = [r for r in history if r.ok and effective(r) <= t and r.nightly_date <= day]
    if not eligible:
        return None
    return max(eligible, key=lambda r: (r.nightly_date, effective(r), r.run_id)).run_id


def test_timeline_agrees_with_the_rule_on_random_histories() -> None:
    rng = random.Random(11)
    start = at(D1, 0)
    for _ in range(40):
        history = []
        for k in range(rng.randint(1, 12)):
            nightly = D1 + timedelta(days=rng.randint(0, 9))
            # mostly after midnight of its date (a nightly), sometimes a backfill or early run
            finished = datetime.combine(nightly, datetime.min.time(), UTC) + timedelta(
                minutes=rng.randint(-3 * 1440, 4 * 1440)
            )
            status = "failed" if rng.random() < 0.15 else "success"
            delay = rng.choice([None, timedelta(seconds=60), timedelta(minutes=rng.randint(0, 90))])
            history.append(run(f"r{k}", nightly, finished, status=status, delay=delay))
        times = [ms(start + timedelta(minutes=rng.randint(-1440, 14 * 1440))) for _ in range(300)]
        assert select_runs(times, history) == [_brute_force(t, history) for t in times]


def test_after_every_run_took_effect_the_choice_is_the_newest() -> None:
    # The newest run's query orders as the rule does: nightly date, then effective_at.
    assert "order by nightly_date desc, effective_at desc" in latest_run_sql("streamscore")
    assert latest_run_sql("streamscore").endswith("limit 1")
    assert recent_runs_sql("streamscore", 5).endswith("limit 5")
    with pytest.raises(ValueError, match="at least one run"):
        recent_runs_sql("streamscore", 0)
    late = ms(at(D4, 12))
    live = max((r for r in HISTORY if r.ok), key=lambda r: (r.nightly_date, r.finished_at))
    assert select_runs([late], HISTORY) == [live.run_id]


def test_a_run_takes_effect_at_its_effective_at_not_its_finish() -> None:
    switch = timedelta(seconds=60)
    history = [
        run("r1", D1, at(D1, 2), delay=switch),
        run("r2", D1, at(D1, 5), delay=switch),  # a rerun of D1: effective 05:01
    ]
    effective = ms(at(D1, 5, 1))
    times = [ms(at(D1, 2)), ms(at(D1, 2, 1)), ms(at(D1, 5)), effective - 1, effective]
    # finished but not in effect: the run before serves (none before r1 took effect)
    assert select_runs(times, history) == [None, "r1", "r1", "r1", "r2"]
    assert RunTimeline.from_runs(history).starts_ms.tolist() == [ms(at(D1, 2, 1)), effective]
    # its nightly date still bounds it: a run for D2 in effect on D1 serves from D2 00:00
    early = run("d2", D2, at(D1, 22), delay=switch)
    assert select_runs([ms(at(D1, 23)), ms(at(D2, 0))], [*history, early]) == ["r2", "d2"]


def test_effective_at_comes_back_from_a_row_and_defaults_to_the_finish() -> None:
    finished = at(D1, 2)
    row = ["r1", D1, "fraud_v1", "success", finished, finished, {"a": 1}, {"x": 0.5}, ""]
    effective = finished + timedelta(seconds=60)
    assert run_from_row([*row, effective]).effective == effective
    assert COLUMNS[-1] == "effective_at"
    old = run_from_row(row)  # selected without the column: in effect at its finish
    assert old.effective_at is None and old.effective == finished
    as_text = run_from_row([*map(str, row[:6]), {}, {}, "", "2024-05-01 02:01:00.000"])
    assert as_text.effective == datetime(2024, 5, 1, 2, 1)  # naive from ClickHouse: UTC
    assert epoch_ms(as_text.effective) == ms(at(D1, 2, 1))
    with pytest.raises(ValueError, match="10 columns, not 3"):
        run_from_row(row[:3])


def test_the_newest_runs_give_the_whole_historys_choice_from_their_first_start() -> None:
    # A scoring process reads the RECENT_RUNS newest runs (nightly date, effective_at
    # desc) and holds a tail of their timeline: wherever it holds a run, that run is the
    # whole history's choice.
    rng = random.Random(5)
    for _ in range(60):
        history = []
        for k in range(rng.randint(1, 14)):
            nightly = D1 + timedelta(days=rng.randint(0, 6))
            finished = datetime.combine(nightly, datetime.min.time(), UTC) + timedelta(
                minutes=rng.randint(-1440, 3 * 1440)
            )
            delay = rng.choice([None, timedelta(seconds=60), timedelta(hours=3)])
            history.append(run(f"r{k}", nightly, finished, delay=delay))
        newest = sorted(
            history,
            key=lambda r: (r.nightly_date, epoch_ms(r.effective_at or r.finished_at), r.run_id),
            reverse=True,
        )[: rng.randint(1, 4)]
        recent = RunTimeline.from_runs(newest)
        now = ms(at(D1, 0)) + rng.randint(0, 9 * 1440) * 60_000
        first = hold_from(recent, now)
        held = recent.tail(first)
        start = int(held.starts_ms[0])
        times = [start + rng.randint(0, 9 * 86_400_000) for _ in range(200)]
        index = held.at(times).tolist()
        assert min(index) >= 0
        assert [held.runs[i].run_id for i in index] == select_runs(times, history)
        assert held.at([start - 1]).tolist() == [-1]  # before the tail: not its to answer
        live = recent.at([now])[0]
        assert first == max(live - 1, 0)  # the run before the live one, if any


def test_naive_times_from_clickhouse_are_utc() -> None:
    naive = run("n", D1, datetime(2024, 5, 1, 2, 0))
    assert select_runs([ms(at(D1, 2))], [naive]) == ["n"]
    assert select_runs([ms(at(D1, 2)) - 1], [naive]) == [None]


# -- retention -----------------------------------------------------------------------

TODAY = date(2024, 9, 1)


def daily(days: int, service: str = "fraud_v1") -> list[NightlyRun]:
    """One run a night at 02:00 for the ``days`` nights up to TODAY."""
    out = []
    for k in range(days):
        day = TODAY - timedelta(days=days - 1 - k)
        out.append(run(f"{service}-{day}", day, at(day, 2), service=service))
    return out


def test_prune_keeps_the_window_and_the_run_live_at_its_start() -> None:
    history = daily(120)
    kept = {r.run_id: r.nightly_date for r in history}
    pruned = runs_to_prune(history, kept, TODAY, 90)
    cutoff = TODAY - timedelta(days=90)
    # The run for the day before the cutoff served the cutoff's first two hours.
    expected = sorted(r.run_id for r in history if r.nightly_date < cutoff - timedelta(days=1))
    assert pruned == expected
    assert len(pruned) == 120 - 91 - 1
    survivors = [r for r in history if r.run_id not in pruned]
    # every event in the window is replayable from what is left
    window = [ms(at(cutoff, 0)) + k * 3_600_000 for k in range(91 * 24)]
    assert select_runs(window, survivors) == select_runs(window, history)
    assert None not in select_runs(window, survivors)


def test_prune_never_removes_the_live_run_nor_a_younger_one() -> None:
    stopped = daily(200)[:50]  # nightlies stopped 150 days ago: the live run is old
    kept = {r.run_id: r.nightly_date for r in stopped}
    pruned = runs_to_prune(stopped, kept, TODAY, 90)
    assert stopped[-1].run_id not in pruned and len(pruned) == 49
    young = daily(10)
    assert runs_to_prune(young, {r.run_id: r.nightly_date for r in young}, TODAY, 90) == []


def test_prune_removes_folders_of_unknown_runs_only_past_the_window() -> None:
    history = daily(5)
    kept = {r.run_id: r.nightly_date for r in history}
    kept["killed-old"] = TODAY - timedelta(days=91)  # no success row: failed or killed
    kept["killed-new"] = TODAY - timedelta(days=2)  # perhaps a run still exporting
    assert runs_to_prune(history, kept, TODAY, 90) == ["killed-old"]
    # a failed row does not protect its folder either
    failed = run("killed-old", TODAY - timedelta(days=91), at(TODAY, 1), status="failed")
    assert runs_to_prune([*history, failed], kept, TODAY, 90) == ["killed-old"]


def test_prune_judges_each_feature_service_on_its_own() -> None:
    ours = daily(100)
    other = daily(200, service="other_v1")[:20]  # another service, idle for 180 days
    kept = {r.run_id: r.nightly_date for r in [*ours, *other]}
    pruned = set(runs_to_prune([*ours, *other], kept, TODAY, 90))
    assert other[-1].run_id not in pruned  # its live run
    assert {r.run_id for r in other[:-1]} <= pruned
    assert len(pruned & {r.run_id for r in ours}) == 100 - 92


def test_retention_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least one day"):
        runs_to_prune([], {}, TODAY, 0)
