"""The nightly's bulk online-store writer against Feast's own ``materialize`` on the same
run: every SQLite row and every Redis hash byte for byte, and Feast reading every entity."""

from __future__ import annotations

import logging
import re
import shutil
import sqlite3
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from streams.settings import Settings
from tests.integration.conftest import FEAST_STACK_MARKS, local_redis

pytestmark = FEAST_STACK_MARKS

END = date(2024, 3, 1)
D = END - timedelta(days=1)
VIEWS = ("account", "card", "merchant")
# the bulk writer's line per Redis view
WRITTEN = r"(\w+): \d+ entities, (\d+) feature fields sent, (\d+) held"


def _settings(home: Path, lake: Path, chdb: Path, **fields: Any) -> Settings:
    return Settings(home=home, lake_dir=str(lake), clickhouse_dsn=f"chdb://{chdb}", **fields)


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    from streams.simulate.history import write_history

    root = tmp_path_factory.mktemp("bulk")
    write_history(str(root / "lake"), END, days=100, accounts=150, seed=5, fraud_rate=0.02)
    yield root / "lake"
    shutil.rmtree(root, ignore_errors=True)


def _feast_own(settings: Settings, home: Path, day: date = D) -> Any:
    """A copy of ``settings``' Feast folder (registry, exports) under ``home`` without its
    online store, applied again and materialised for ``day`` by Feast's own ``materialize``."""
    from streams.features.registry import load_service_layout
    from streams.features.store import feature_store
    from streams.nightly import _feast_apply, _materialize

    shutil.rmtree(home / "feast", ignore_errors=True)
    shutil.copytree(
        settings.home / "feast", home / "feast", ignore=shutil.ignore_patterns("online.db")
    )
    own = settings.model_copy(update={"home": home})
    store = _feast_apply(own)
    _materialize(store, load_service_layout(own, own.feature_service), day)
    return feature_store(own)


def _rows(path: Path, view: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as connection:
        return connection.execute(
            f'select * from "streamscore_{view}" order by entity_key, feature_name'
        ).fetchall()


def test_sqlite_rows_are_those_feasts_own_materialize_writes(lake: Path) -> None:
    from streams.features.paths import export_path
    from streams.features.registry import load_service_layout
    from streams.features.store import feature_store
    from streams.nightly import run_nightly

    root = lake.parent
    settings = _settings(root / "home", lake, root / "chdb")
    run = run_nightly(settings, D)
    assert run.ok and min(run.rows.values()) > 0
    feast_store = _feast_own(settings, root / "feast-own")
    ours_db = settings.home / "feast" / "online.db"
    theirs_db = root / "feast-own" / "feast" / "online.db"
    for view in VIEWS:
        theirs = _rows(theirs_db, view)
        assert len(theirs) > 0
        assert _rows(ours_db, view) == theirs, view

    # The registry records the interval, as Feast's materialize does.
    midnight = datetime(D.year, D.month, D.day, tzinfo=UTC)
    ours_store = feature_store(settings)
    for view in VIEWS:
        [interval] = ours_store.get_feature_view(view).materialization_intervals
        assert interval == (midnight - timedelta(hours=12), midnight + timedelta(hours=12))
        # the copied registry holds ours, then the one Feast's own run added: the same
        assert feast_store.get_feature_view(view).materialization_intervals == [interval] * 2

    # Feast's own reader serves every entity of every view with the export's values.
    layout = load_service_layout(settings, settings.feature_service)
    for view in layout.views:
        exported = pq.read_table(export_path(settings, view.model, D))
        ids = exported.column(view.join_key).to_pylist()
        response = ours_store.get_online_features(
            features=[f"{view.name}:{c}" for c in view.columns],
            entity_rows=[{view.join_key: i} for i in ids],
        ).to_dict()
        assert response[view.join_key] == ids
        for column in view.columns:
            expected = exported.column(column).to_numpy(zero_copy_only=False)
            got = np.asarray(response[column], dtype=expected.dtype)
            assert np.array_equal(got, expected), f"{view.name}.{column}"


def _hashes(client: Any) -> dict[bytes, dict[bytes, bytes]]:
    return {
        key: client.hgetall(key)
        for key in client.scan_iter(count=1000)
        if not key.startswith(b"streamscore:materialized:")  # our marks, not Feast's rows
    }


def test_redis_hashes_are_those_feasts_own_materialize_writes(
    lake: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from streams.features.redis_store import read_mark
    from streams.features.store import redis_client
    from streams.nightly import run_nightly

    root = lake.parent
    with local_redis(root / "redis-home") as fields:
        settings = _settings(root / "redis-home", lake, root / "chdb", **fields)
        run = run_nightly(settings, D)
        assert run.ok
        # Feast's own writer into database 1 of the same server
        _feast_own(settings.model_copy(update={"redis_url": fields["redis_url"][:-1] + "1"}),
                   root / "redis-feast-own")  # fmt: skip
        ours = redis_client(settings)
        theirs = redis_client(
            settings.model_copy(update={"redis_url": fields["redis_url"][:-1] + "1"})
        )
        try:
            expected = _hashes(theirs)
            assert len(expected) == sum(run.rows.values())
            assert _hashes(ours) == expected
            for view in VIEWS:
                mark = read_mark(ours, view)
                assert mark is not None and mark.run_id == run.run_id
                assert mark.rows == run.rows[view]

            # The next night over it: ours sends only the values that differ from what the
            # marks say the store holds (run 1's kept export); Feast's own writes them all
            # over its own night. Every hash must end the same.
            caplog.set_level(logging.INFO, logger="streams.features.bulk_write")
            caplog.clear()
            again = run_nightly(settings, END)
            assert again.ok
            held = re.findall(WRITTEN, caplog.text)
            assert {view for view, _, _ in held} == set(VIEWS)
            assert all(int(kept) > 0 for _, _, kept in held), held
            _feast_own(settings.model_copy(update={"redis_url": fields["redis_url"][:-1] + "1"}),
                       root / "redis-feast-own", END)  # fmt: skip
            expected = _hashes(theirs)
            assert _hashes(ours) == expected
            assert all(read_mark(ours, v).run_id == again.run_id for v in VIEWS)  # type: ignore[union-attr]
        finally:
            ours.close()
            theirs.close()
