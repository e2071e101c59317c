"""The live worker's switch-over by event time: runs loaded before they take effect, each
event served the run in effect at its time, the previous run kept for late events.

``OnlineFeatures`` on hand-written kept exports (no ClickHouse, no broker): what it holds
at each moment (``fetch_held``), the per-event lookup across a switch (``vectors_as_of``)
and the ``predictions`` rows ``score_events`` builds from it (``feature_run_id`` and
``feature_date`` per row).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from streams.features.online import OnlineFeatures
from streams.features.paths import export_path
from streams.features.runs import NightlyRun, epoch_ms
from streams.scoring.modelset import ModelSet
from streams.scoring.pipeline import (
    DecodedBatch,
    ValidEvent,
    decode_events,
    input_columns,
    score_events,
)
from streams.settings import Settings

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

DAY = date(2024, 1, 2)
SWITCH = timedelta(seconds=60)


def at(hour: int, minute: int = 0, second: int = 0, ms: int = 0) -> int:
    """Epoch ms of a moment of DAY (UTC)."""
    moment = datetime(DAY.year, DAY.month, DAY.day, hour, minute, second, tzinfo=UTC)
    return epoch_ms(moment) + ms


def finished(hour: int, minute: int = 0) -> datetime:
    return datetime(DAY.year, DAY.month, DAY.day, hour, minute, tzinfo=UTC)


def _export(settings: Settings, day: date, scale: float) -> dict[str, Path]:
    """Dated exports as the nightly job writes them (ids x1, x2 per entity); mart → path."""
    from streams.features.registry import load_service_layout

    out: dict[str, Path] = {}
    for view in load_service_layout(settings, "fraud_v1").views:
        columns: dict[str, list[object]] = {view.join_key: [f"{view.name[0]}1", f"{view.name[0]}2"]}
        for j, column in enumerate(view.columns):
            columns[column] = [scale * (j + 1), scale * (j + 1) + 0.5]
        path = export_path(settings, view.model, day)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(columns), path)
        out[view.model] = path
    return out


def _keep(settings: Settings, run: NightlyRun, scale: float) -> NightlyRun:
    from streams.features.run_exports import keep_run_export

    exports = _export(settings, run.nightly_date, scale)
    keep_run_export(settings, run.run_id, run.nightly_date, "fraud_v1", exports)
    return run


def _run(run_id: str, done: datetime, day: date = DAY) -> NightlyRun:
    return NightlyRun(
        run_id, day, "fraud_v1", "success", done - timedelta(minutes=20), done,
        effective_at=done + SWITCH,
    )  # fmt: skip


@dataclass
class World:
    settings: Settings
    runs: list[NightlyRun]  # what feature_runs holds (newest last)
    online: OnlineFeatures


@pytest.fixture
def world(tmp_path: Path) -> World:
    settings = Settings(home=tmp_path)
    # r1 (a1's first feature 1.0) at 10:00, then a rerun of the same date, r2 (100.0),
    # finishing at 12:00: in effect from 12:01.
    runs = [
        _keep(settings, _run("r1", finished(10)), 1.0),
        _keep(settings, _run("r2", finished(12)), 100.0),
    ]
    online = OnlineFeatures(
        settings, latest_run=lambda: runs[-1], recent_runs=lambda: list(reversed(runs))
    )
    return World(settings, runs, online)


def _event(i: int, time_ms: int, account: str = "a1") -> ValidEvent:
    stamp = datetime.fromtimestamp(time_ms / 1000, UTC).isoformat(timespec="milliseconds")
    payload = {
        "event_id": f"evt-{i}",
        "account_id": account,
        "card_id": "c1",
        "merchant_id": "m2",
        "amount": 20.0 + i,
        "currency": "EUR",
        "merchant_country": "DE",
        "card_country": "DE",
        "channel": "ecom",
        "entry_mode": "chip",
        "card_present": False,
        "is_3ds": True,
        "event_time": stamp.replace("+00:00", "Z"),
    }
    return ValidEvent(0, 100 + i, ("raw", 0, 1000 + i), 1_000, 2_000, b"k", orjson.dumps(payload))


def _batch(online: OnlineFeatures, times: list[int]) -> DecodedBatch:
    events = [_event(i, t) for i, t in enumerate(times)]
    return decode_events(events, input_columns(online.layout))


def _first_feature(vectors: np.ndarray) -> list[float]:
    return [float(v) for v in vectors[:, 0]]  # account's first feature: the run's scale


def test_a_run_is_held_before_it_takes_effect_and_serves_from_its_effective_at(
    world: World,
) -> None:
    online = world.online
    # 12:00:30: r2 finished (recorded) but is not in effect until 12:01; r1 is
    assert online.switch_if_newer(now_ms=at(12, 0, 30))
    held = online.held
    assert held is not None and held.run_ids == ("r1", "r2") and held.current == 0
    assert online.run_id == "r1"  # what is in effect now
    assert held.starts_ms.tolist() == [at(10, 1), at(12, 1)]
    # a batch straddling the switch, out of order: each row by its own event time
    times = [at(12, 0, 59, 999), at(12, 1), at(11), at(12, 5), at(12, 0, 30)]
    batch = _batch(online, times)
    served = online.vectors_as_of(batch.table, np.array(times, dtype=np.int64))
    assert served.index is not None and served.stale == 0
    assert [served.run_ids[i] for i in served.index] == ["r1", "r2", "r1", "r2", "r1"]
    assert [served.feature_dates[i] for i in served.index] == [DAY] * 5
    assert _first_feature(served.x) == [1.0, 100.0, 1.0, 100.0, 1.0]
    # every row bit for bit as its run alone serves it (what a replay's group does)
    for position, snapshot in enumerate(held.snapshots):
        alone, missing = online.pinned(snapshot).vectors(batch.table)
        rows = np.flatnonzero(
            np.array([served.run_ids[i] for i in served.index]) == snapshot.run_id
        )
        assert rows.size and np.array_equal(served.x[rows], alone[rows]), position
        assert np.array_equal(served.missing[rows], missing[rows])


def test_a_batch_inside_one_runs_time_is_one_lookup(world: World) -> None:
    online = world.online
    online.switch_if_newer(now_ms=at(12, 0, 30))
    times = [at(12, 2), at(12, 3), at(12, 1)]
    batch = _batch(online, times)
    served = online.vectors_as_of(batch.table, np.array(times, dtype=np.int64))
    assert served.index is None and served.run_ids == ("r2",) and served.stale == 0
    held = online.held
    assert held is not None
    alone, missing = online.pinned(held.snapshots[1]).vectors(batch.table)
    assert np.array_equal(served.x, alone) and np.array_equal(served.missing, missing)
    empty = _batch(online, [])
    assert online.vectors_as_of(empty.table, np.array([], dtype=np.int64)).x.shape[0] == 0


def test_an_event_before_every_held_run_gets_the_oldest_and_is_counted(world: World) -> None:
    online = world.online
    online.switch_if_newer(now_ms=at(12, 0, 30))
    times = [at(9), at(12, 2), at(10, 0, 59)]  # r1 took effect at 10:01
    batch = _batch(online, times)
    served = online.vectors_as_of(batch.table, np.array(times, dtype=np.int64))
    assert served.stale == 2
    assert served.index is not None
    assert [served.run_ids[i] for i in served.index] == ["r1", "r2", "r1"]


def test_held_runs_move_on_with_time_reusing_what_is_loaded(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    online, runs = world.online, world.runs
    online.switch_if_newer(now_ms=at(12, 0, 30))
    before = online.held
    assert before is not None
    assert online.fetch_held(now_ms=at(12, 0, 45)) is None  # nothing changed
    # after 12:01 r2 is the live run: r1 is kept (late events), nothing is loaded again
    after = online.fetch_held(now_ms=at(12, 2))
    assert after is not None and after.run_ids == ("r1", "r2") and after.current == 1
    assert after.snapshots[0] is before.snapshots[0] and after.snapshots[1] is before.snapshots[1]
    # loaded and not yet in use (the next batch swaps): the same answer is not loaded twice
    assert online.fetch_held(now_ms=at(12, 3), pending=after) is None
    online.use_held(after)
    assert online.run_id == "r2" and online.feature_date == DAY
    # a third run: held from its record on, and r1 goes once r3 is live
    runs.append(_keep(world.settings, _run("r3", finished(14)), 1000.0))
    with_r3 = online.fetch_held(now_ms=at(14, 0, 10))
    assert with_r3 is not None and with_r3.run_ids == ("r1", "r2", "r3")
    assert with_r3.current == 1 and with_r3.snapshots[1] is after.snapshots[1]
    online.use_held(with_r3)
    described = with_r3.describe()
    assert "r2 from 2024-01-02T12:01:00.000+00:00 (current)" in described
    assert described.endswith("r3 from 2024-01-02T14:01:00.000+00:00")
    caplog.set_level(logging.WARNING)
    later = online.fetch_held(now_ms=at(14, 5))
    assert later is not None and later.run_ids == ("r2", "r3") and later.current == 1
    assert not caplog.records  # r3 was loaded before it took effect
    online.use_held(later)
    # a run loaded only after its effective time: said, since events were served the run before
    runs.append(_keep(world.settings, _run("r4", finished(16)), 5.0))
    late = online.fetch_held(now_ms=at(16, 3))
    assert late is not None and late.run_ids == ("r3", "r4")
    assert "nightly run r4 took effect at 2024-01-02T16:01:00.000+00:00, 120.0 s before" in (
        caplog.text
    )


def test_an_older_run_without_kept_features_is_not_held(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(home=tmp_path)
    legacy = _run("legacy", finished(1), DAY - timedelta(days=1))
    _export(settings, legacy.nightly_date, 7.0)  # dated export only: from before kept runs
    runs = [legacy, _keep(settings, _run("r1", finished(10)), 1.0)]
    online = OnlineFeatures(settings, recent_runs=lambda: runs)
    caplog.set_level(logging.WARNING)
    assert online.switch_if_newer(now_ms=at(11))
    held = online.held
    assert held is not None and held.run_ids == ("r1",)
    assert "nightly run legacy kept no features by run id: not held" in caplog.text
    # its events are older than every held run: served r1, and counted
    batch = _batch(online, [at(5)])
    assert online.vectors_as_of(batch.table, np.array([at(5)], dtype=np.int64)).stale == 1
    # the run in effect now is served from its dated export, as before runs kept theirs
    alone = OnlineFeatures(settings, recent_runs=lambda: runs[:1])
    assert alone.switch_if_newer(now_ms=at(11)) and alone.run_id == "legacy"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelSet]:
    from models import train_synthetic
    from streams.features.registry import load_feature_service
    from streams.scoring.registry import RegistryConfig

    root = tmp_path_factory.mktemp("switch-models")
    settings = Settings(home=root, models_dir=root / "models", providers="cpu")
    spec = load_feature_service(settings, "fraud_v1")
    for version in ("1", "2"):
        train_synthetic(
            settings.models_dir / "artifacts", "lightgbm", spec=spec, version=version,
            n_estimators=5,
        )  # fmt: skip
    config = RegistryConfig.model_validate(
        {
            "champion": "fraud_lightgbm-1",
            "challengers": [{"model": "fraud_lightgbm-2", "role": "shadow"}],
        }
    )
    yield ModelSet.from_registry(settings, spec, config)


def test_each_predictions_row_records_the_run_that_served_its_event(
    world: World, models: ModelSet
) -> None:
    online = world.online
    online.switch_if_newer(now_ms=at(12, 0, 30))
    times = [at(12, 0, 50), at(12, 1, 10), at(9), at(12, 0, 59, 999), at(12, 1)]
    batch = _batch(online, times)
    scored = score_events(batch, online, models, run="live", worker_id="w1", picked_up_ms=2_500)
    rows = scored.predictions
    n = len(times)
    assert rows.num_rows == 2 * n  # champion and shadow blocks
    expected = ["r1", "r2", "r1", "r1", "r2"]
    assert rows.column("feature_run_id").to_pylist() == expected * 2
    assert rows.column("feature_date").to_pylist() == [DAY] * (2 * n)
    assert scored.stale_events == 1  # 09:00: before r1 took effect
    # the scores are those of each run's group scored alone (a replay's groups)
    held = online.held
    assert held is not None
    for snapshot in held.snapshots:
        rows_of = [i for i, run in enumerate(expected) if run == snapshot.run_id]
        part = DecodedBatch(
            [batch.events[i] for i in rows_of], batch.table.take(pa.array(rows_of)), [], []
        )
        alone = score_events(
            part, online.pinned(snapshot), models, run="replay", worker_id="w1",
            picked_up_ms=2_500,
        )  # fmt: skip
        assert alone.predictions.column("feature_run_id").to_pylist() == [snapshot.run_id] * (
            2 * len(rows_of)
        )
        for block in range(2):
            live = np.array(rows.column("score").to_pylist()[block * n : (block + 1) * n])
            replayed = alone.predictions.column("score").to_pylist()
            replayed_block = replayed[block * len(rows_of) : (block + 1) * len(rows_of)]
            assert np.array_equal(live[rows_of].astype(np.float32), np.float32(replayed_block))
        assert np.array_equal(scored.features[rows_of], alone.features)
    # one run for the whole batch: the run id is one constant, as before
    single = _batch(online, [at(12, 5), at(12, 6)])
    one = score_events(single, online, models, run="live", worker_id="w1", picked_up_ms=2_500)
    assert one.predictions.column("feature_run_id").to_pylist() == ["r2"] * 4
    assert one.stale_events == 0


def test_the_switch_waits_twice_the_reload_interval_by_default(tmp_path: Path) -> None:
    from streams.agents.score import RELOAD_EVERY_S

    settings = Settings(home=tmp_path)
    assert settings.feature_reload_s == RELOAD_EVERY_S
    assert settings.feature_switch_delay_s == 2 * settings.feature_reload_s
    with pytest.raises(ValueError, match="greater than or equal to 0"):
        Settings(feature_switch_delay_s=-1)
    with pytest.raises(ValueError, match="greater than 0"):
        Settings(feature_reload_s=0)
