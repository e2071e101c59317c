"""Kept run exports: served by run id after the dated file changes, checked, pruned, cached."""

from __future__ import annotations

import os
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from streams.errors import FeatureError
from streams.features.online import OnlineFeatures, Snapshot
from streams.features.paths import export_path, run_dir
from streams.features.runs import NightlyRun
from streams.settings import Settings

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

DAY = date(2024, 1, 2)


def _export(settings: Settings, day: date, scale: float) -> dict[str, Path]:
    """Dated exports as the nightly job writes them; mart → path."""
    from streams.features.registry import load_service_layout

    out: dict[str, Path] = {}
    for view in load_service_layout(settings, "fraud_v1").views:
        ids = [f"{view.name[0]}1", f"{view.name[0]}2"]
        columns = {view.join_key: ids}
        for j, column in enumerate(view.columns):
            columns[column] = [scale * (j + 1), scale * (j + 1) + 0.5]
        path = export_path(settings, view.model, day)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(columns), path)
        out[view.model] = path
    return out


def _run(run_id: str, day: date = DAY) -> NightlyRun:
    now = datetime.now(UTC)
    return NightlyRun(run_id, day, "fraud_v1", "success", now, now)


def _keep(settings: Settings, run_id: str, day: date, scale: float) -> None:
    from streams.features.run_exports import keep_run_export

    keep_run_export(settings, run_id, day, "fraud_v1", _export(settings, day, scale))


def _account_value(online: OnlineFeatures, snapshot: Snapshot | None) -> float:
    """Account a1's first feature as ``snapshot`` serves it."""
    assert snapshot is not None
    online.use(snapshot)
    return float(online.lookup(["a1"], ["c1"], ["m1"])[0][0, 0])


def test_a_run_serves_what_it_kept_after_a_rerun_overwrote_the_dated_file(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    _keep(settings, "run-1", DAY, 1.0)
    _keep(settings, "run-2", DAY, 100.0)  # a rerun of the same date, other values
    online = OnlineFeatures(settings, latest_run=lambda: _run("run-2"))
    first = online.read_run(_run("run-1"), require_kept=True)
    second = online.read_run(_run("run-2"), require_kept=True)
    assert (first.run_id, second.run_id) == ("run-1", "run-2")
    assert _account_value(online, first) == 1.0  # the dated file holds run-2's 100.0 now
    assert _account_value(online, second) == 100.0
    # the live path loads by run id too
    live = OnlineFeatures(settings, latest_run=lambda: _run("run-1"))
    assert live.refresh_if_newer() and live.run_id == "run-1"
    assert live.lookup(["a1"], ["c1"], ["m1"])[0][0, 0] == 1.0
    # the kept files are read-only
    kept = run_dir(settings, "run-1") / "account_features.parquet"
    assert not os.access(kept, os.W_OK) or os.geteuid() == 0
    assert not (kept.stat().st_mode & 0o222)


def test_a_changed_kept_file_is_refused(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    _keep(settings, "run-1", DAY, 1.0)
    kept = run_dir(settings, "run-1") / "card_features.parquet"
    kept.chmod(0o644)
    pq.write_table(pq.read_table(kept).slice(0, 1), kept)
    online = OnlineFeatures(settings, latest_run=lambda: None)
    with pytest.raises(FeatureError, match="changed after nightly run run-1 kept it"):
        online.read_run(_run("run-1"))


def test_a_run_without_kept_features_is_refused_for_replay_served_live(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    _export(settings, DAY, 7.0)  # a run recorded before runs kept their exports
    online = OnlineFeatures(settings, latest_run=lambda: _run("legacy"))
    assert not online.has_kept(_run("legacy"))
    with pytest.raises(FeatureError, match="kept no features"):
        online.read_run(_run("legacy"), require_kept=True)
    assert _account_value(online, online.read_run(_run("legacy"))) == 7.0
    with pytest.raises(FeatureError, match="not of fraud_v1 for 2024-01-03"):
        _keep(settings, "run-x", DAY, 1.0)
        online.read_run(_run("run-x", DAY + timedelta(days=1)))


def test_manifest_names_its_run_and_files(tmp_path: Path) -> None:
    from streams.features.run_exports import read_manifest

    settings = Settings(home=tmp_path)
    _keep(settings, "run-1", DAY, 1.0)
    manifest = read_manifest(settings, "run-1")
    assert manifest is not None and manifest.nightly_date == DAY
    assert set(manifest.files) == {"account_features", "card_features", "merchant_features"}
    assert all(len(f.sha256) == 64 and f.bytes > 0 for f in manifest.files.values())
    assert read_manifest(settings, "nope") is None
    with pytest.raises(FeatureError, match="already kept"):
        _keep(settings, "run-1", DAY, 1.0)
    (run_dir(settings, "run-1") / "manifest.json").write_text("{", encoding="utf-8")
    with pytest.raises(FeatureError, match="unreadable"):
        read_manifest(settings, "run-1")
    with pytest.raises(FeatureError, match="not a plain name"):
        run_dir(settings, "../etc")


def test_prune_deletes_old_folders_and_keeps_the_window(tmp_path: Path) -> None:
    from streams.features.run_exports import kept_runs, prune_run_exports

    settings = Settings(home=tmp_path, feature_run_retention_days=3)
    today = date(2024, 1, 10)
    history = []
    for k in range(6):  # nights of Jan 5..10
        day = today - timedelta(days=5 - k)
        run_id = f"run-{day.day}"
        _keep(settings, run_id, day, float(k))
        finished = datetime(day.year, day.month, day.day, 2, tzinfo=UTC)
        history.append(NightlyRun(run_id, day, "fraud_v1", "success", finished, finished))
    (run_dir(settings, "crashed")).mkdir()  # no manifest: dated by its mtime (today)
    (run_dir(settings, "crashed").parent / "not a run").mkdir()
    pruned = prune_run_exports(settings, history, today)
    # window from Jan 7; run-6 served Jan 7 until 02:00
    assert pruned == ["run-5"]
    assert sorted(kept_runs(settings)) == sorted(["crashed", *(f"run-{d}" for d in range(6, 11))])
    assert not run_dir(settings, "run-5").exists()
    assert (run_dir(settings, "crashed").parent / "not a run").is_dir()
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        Settings(feature_run_retention_days=0)


def test_snapshot_cache_loads_each_run_once_and_holds_a_few(tmp_path: Path) -> None:
    from streams.replay import SnapshotCache

    settings = Settings(home=tmp_path)
    for k in range(4):
        _keep(settings, f"run-{k}", DAY, float(k + 1))
    online = OnlineFeatures(settings, latest_run=lambda: None)
    cache = SnapshotCache(online, 2, require_kept=True)
    for run_id in ["run-0", "run-0", "run-1", "run-0", "run-1"]:
        snapshot = cache.get(_run(run_id))
        assert snapshot is not None and snapshot.run_id == run_id
    assert cache.loads == 2
    cache.get(_run("run-2"))  # evicts run-0, the least recently used
    cache.get(_run("run-1"))
    cache.get(_run("run-0"))
    assert cache.loads == 4
    assert cache.get(_run("pruned")) is None and cache.loads == 4
    values = [_account_value(online, cache.get(_run(f"run-{k}"))) for k in (0, 1)]
    assert values == [1.0, 2.0]
    assert np.isfinite(values).all()
