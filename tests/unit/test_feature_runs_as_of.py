"""Which nightly run is live at an event's time, and which kept runs the nightly job prunes.

Pure functions over a run history (no ClickHouse): ``select_runs``/``RunTimeline`` against
a brute-force reading of the rule, and ``runs_to_prune`` on a daily history.
"""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta

import pytest

from streams.features.runs import (
    NightlyRun,
    RunTimeline,
    epoch_ms,
    latest_run_sql,
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
) -> NightlyRun:
    return NightlyRun(run_id, nightly, service, status, finished - timedelta(minutes=20), finished)


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
    eligible = [
        r for r in history if r.ok and epoch_ms(r.finished_at) <= t and r.nightly_date <= day
    ]
    if not eligible:
        return None
    return max(eligible, key=lambda r: (r.nightly_date, epoch_ms(r.finished_at), r.run_id)).run_id


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
            history.append(run(f"r{k}", nightly, finished, status=status))
        times = [ms(start + timedelta(minutes=rng.randint(-1440, 14 * 1440))) for _ in range(300)]
        assert select_runs(times, history) == [_brute_force(t, history) for t in times]


def test_after_every_run_finished_the_choice_is_the_live_workers() -> None:
    # latest_run_sql orders by nightly date, then finish: the newest run once all are live.
    assert "order by nightly_date desc, finished_at desc" in latest_run_sql("streamscore")
    late = ms(at(D4, 12))
    live = max((r for r in HISTORY if r.ok), key=lambda r: (r.nightly_date, r.finished_at))
    assert select_runs([late], HISTORY) == [live.run_id]


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
