"""``streamscore bench nightly``'s closing JSON: the measured night at the top level, the
night before beside it."""

from __future__ import annotations

from pathlib import Path

from streams.bench.nightly import HistoryResult, StoreResult, summary


def _history() -> HistoryResult:
    return HistoryResult(
        Path("/lake"), 1000, 90, 7, {"transaction": 52_000, "label": 250}, 1500, 50, 12.5,
        300.0, reused=False,
    )  # fmt: skip


def _night(store: str, seconds: float) -> StoreResult:
    return StoreResult(
        store, seconds, {"dbt_build": seconds / 2, "materialize": seconds / 4},
        {"nightly": 100.0, "dbt": 200.0}, {"account": 1000}, {"note": store},
    )  # fmt: skip


def test_the_measured_night_is_at_the_top_and_the_night_before_beside_it() -> None:
    out = summary(
        _history(),
        [_night("redis", 60.0), _night("sqlite", 90.0)],
        {"redis": _night("redis", 150.0)},
    )
    for key in ("accounts", "history_s", "nightly_s", "steps_s", "peak_rss_mb"):
        assert key in out
    assert (out["store"], out["nightly_s"], out["history_s"]) == ("redis", 60.0, 12.5)
    redis, sqlite = out["stores"]["redis"], out["stores"]["sqlite"]
    assert redis["nightly_s"] == 60.0 and redis["note"] == "redis"
    assert redis["night_before"] == {
        "nightly_s": 150.0,
        "steps_s": {"dbt_build": 75.0, "materialize": 37.5},
        "peak_rss_mb": {"nightly": 100.0, "dbt": 200.0},
    }
    assert sqlite["nightly_s"] == 90.0 and "night_before" not in sqlite


def test_without_a_night_before_there_is_none() -> None:
    out = summary(_history(), [_night("sqlite", 90.0)])
    assert "night_before" not in out["stores"]["sqlite"]
