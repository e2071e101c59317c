"""Serving-side feature access: in-process numpy tables per entity, swapped atomically per run.

Feast's ``get_online_features`` costs milliseconds per call; the scorer needs a batch of
thousands in well under that. Each nightly run exports exactly the rows it materialises
(one Parquet file per feature view for the nightly date) and keeps a read-only copy under
its run id (``streams.features.run_exports``); this module loads a run by its id, checking
each file's sha256, into a float32 matrix per entity with an ``id → row`` dict, plus one
extra row holding the declared defaults for unknown entities. The live worker and
``streamscore replay`` load runs the same way, so both read the same bytes. A refresh
builds a complete new snapshot and swaps one reference, so a lookup never mixes two runs.

A run recorded before runs kept their exports has no folder: the live worker then reads
the dated export (and logs it); a replay refuses it (``require_kept``), since a rerun or
backfill may have overwritten that file since.

With STREAMSCORE_ONLINE_STORE=redis the live worker reads the run from Redis instead, into
the same tables (``streams.features.redis_store``, which says what happens while Redis
is down); replays read kept exports either way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq

from streams.errors import FeatureError
from streams.features.event import ACCOUNT_MEAN_FEATURE, compute_event_features
from streams.features.paths import export_path, runs_dir
from streams.features.registry import ServiceLayout, ViewLayout, load_service_layout
from streams.features.run_exports import read_manifest, verified_files
from streams.features.runs import NightlyRun

if TYPE_CHECKING:
    from streams.features.redis_store import RedisFeatures
    from streams.settings import Settings

__all__ = ["LatestRun", "OnlineFeatures", "Snapshot", "SnapshotFeatures"]

log = logging.getLogger("streams.features.online")

LatestRun = Callable[[], NightlyRun | None]


@dataclass(frozen=True, slots=True)
class _EntityTable:
    index: dict[str, int]
    values: npt.NDArray[np.float32]  # [entities + 1 × features]; the last row holds defaults

    def rows(self, ids: Sequence[str] | npt.NDArray[np.object_]) -> npt.NDArray[np.intp]:
        default = len(self.values) - 1
        get = self.index.get
        return np.fromiter((get(i, default) for i in ids), dtype=np.intp, count=len(ids))


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One nightly run's entity tables, as loaded: what a batch is served from."""

    feature_date: date
    run_id: str
    tables: tuple[_EntityTable, ...]
    source: str = "export"  # where it was loaded from: "export" (Parquet) or "redis"


class OnlineFeatures:
    """Batch lookup of the latest successful nightly run's entity features.

    ``latest_run`` answers which run is live (default: ClickHouse ``feature_runs``); pass a
    fake in tests.
    """

    def __init__(
        self,
        settings: Settings,
        feature_service: str | None = None,
        *,
        latest_run: LatestRun | None = None,
    ) -> None:
        self._settings = settings
        self._layout: ServiceLayout = load_service_layout(
            settings, feature_service or settings.feature_service
        )
        self._latest_run = latest_run or self._latest_run_from_clickhouse
        self._snapshot: Snapshot | None = None
        self._mean_column = self.entity_feature_names.index(ACCOUNT_MEAN_FEATURE)
        # STREAMSCORE_ONLINE_STORE=redis: the live run is read from Redis (fetch_newer);
        # read_run (replays, fallbacks) reads the kept exports either way.
        self._redis: RedisFeatures | None = None
        if settings.online_store == "redis":
            from streams.features.redis_store import RedisFeatures

            self._redis = RedisFeatures(settings)

    @property
    def layout(self) -> ServiceLayout:
        return self._layout

    @property
    def entities(self) -> tuple[str, ...]:
        """Entity order of the missing mask's columns (the service's view order)."""
        return tuple(view.name for view in self._layout.views)

    @property
    def entity_feature_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self._layout.entity_features)

    @property
    def feature_date(self) -> date | None:
        snapshot = self._snapshot
        return snapshot.feature_date if snapshot else None

    @property
    def run_id(self) -> str | None:
        snapshot = self._snapshot
        return snapshot.run_id if snapshot else None

    def refresh_if_newer(self) -> bool:
        """Swap to the newest successful run if it is not the one loaded; True if swapped."""
        snapshot = self.fetch_newer()
        if snapshot is None:
            return False
        self.use(snapshot)
        return True

    def fetch_newer(self) -> Snapshot | None:
        """The newest successful run's features, loaded, if that run is not the one in
        use; None otherwise. Nothing is swapped (:meth:`use` does)."""
        run = self._latest_run()
        if run is None or not run.ok:
            return None
        current = self._snapshot
        if current is not None and (current.run_id, current.feature_date) == (
            run.run_id,
            run.nightly_date,
        ):
            if self._redis is not None:
                self._redis.ping()  # streamscore_feature_store_up between loads too
            return None
        if self._redis is not None:
            return self._read_from_redis(run)
        return self.read_run(run)

    def _read_from_redis(self, run: NightlyRun) -> Snapshot | None:
        """``run`` from Redis; when that fails, what ``streams.features.redis_store`` says:
        keep the served run, or with none, serve the run's kept export, or raise."""
        assert self._redis is not None
        try:
            views = self._redis.read_run(self._layout, run)
        except FeatureError as exc:
            if self._snapshot is not None:
                log.warning(
                    "feature reload failed, keeping nightly run %s: %s", self._snapshot.run_id, exc
                )
                return None
            if not self.has_kept(run):
                raise FeatureError(
                    f"{exc}; nightly run {run.run_id} kept no export here to serve instead: "
                    "nothing is scored until Redis answers"
                ) from None
            log.warning(
                "%s; serving nightly run %s from its local export until a later run loads",
                exc, run.run_id,
            )  # fmt: skip
            return self.read_run(run, require_kept=True)
        tables = tuple(
            _table(view, rows.ids, rows.values)
            for view, rows in zip(self._layout.views, views, strict=True)
        )
        return Snapshot(run.nightly_date, run.run_id, tables, source="redis")

    @property
    def online_store(self) -> str:
        return self._settings.online_store

    @property
    def store_up(self) -> bool | None:
        """Whether Redis answered its last check; None when no store is checked (SQLite:
        runs are served from their exports) or before the first."""
        return None if self._redis is None else self._redis.up

    @property
    def served_source(self) -> str | None:
        """Where the served run was loaded from ("redis", "export"), None before one is."""
        snapshot = self._snapshot
        return snapshot.source if snapshot else None

    def has_kept(self, run: NightlyRun) -> bool:
        """Whether ``run`` kept its features by run id (not pruned, not from before)."""
        return read_manifest(self._settings, run.run_id) is not None

    def read_run(self, run: NightlyRun, *, require_kept: bool = False) -> Snapshot:
        """Run ``run``'s features as it kept them under its id, each file checked against
        its sha256. A run that kept none (pruned, or recorded before runs kept their
        exports) is read from the dated export, or refused with ``require_kept``."""
        manifest = read_manifest(self._settings, run.run_id)
        if manifest is None:
            if require_kept:
                raise FeatureError(
                    f"nightly run {run.run_id} (for {run.nightly_date}) kept no features under "
                    f"{runs_dir(self._settings)}: pruned after "
                    f"{self._settings.feature_run_retention_days} days, or recorded before runs "
                    "kept their exports"
                )
            log.warning(
                "nightly run %s kept no features by run id: serving the dated export for %s",
                run.run_id, run.nightly_date,
            )  # fmt: skip
            return self._read(run.nightly_date, run.run_id)
        service = self._layout.spec.name
        if (manifest.nightly_date, manifest.feature_service) != (run.nightly_date, service):
            raise FeatureError(
                f"nightly run {run.run_id} kept features of {manifest.feature_service} for "
                f"{manifest.nightly_date}, not of {service} for {run.nightly_date}"
            )
        paths = verified_files(self._settings, manifest, [v.model for v in self._layout.views])
        tables = tuple(_load_table(view, paths[view.model]) for view in self._layout.views)
        return Snapshot(run.nightly_date, run.run_id, tables)

    def pinned(self, snapshot: Snapshot) -> SnapshotFeatures:
        """A feature source serving ``snapshot`` only (a replay scores each run's events
        with the run they were live under); this object's own snapshot is left alone."""
        return SnapshotFeatures(self._layout, snapshot, self._mean_column)

    def use(self, snapshot: Snapshot) -> None:
        """Serve ``snapshot`` from the next lookup on (one reference: atomic)."""
        self._snapshot = snapshot

    def load(self, feature_date: date, run_id: str = "") -> None:
        """Load the features exported for ``feature_date`` and swap them in atomically."""
        self.use(self._read(feature_date, run_id))

    def _read(self, feature_date: date, run_id: str) -> Snapshot:
        tables = tuple(self._load_view(view, feature_date) for view in self._layout.views)
        return Snapshot(feature_date, run_id, tables)

    def lookup(
        self,
        account_ids: Sequence[str] | npt.NDArray[np.object_],
        card_ids: Sequence[str] | npt.NDArray[np.object_],
        merchant_ids: Sequence[str] | npt.NDArray[np.object_],
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
        """Entity features [rows × entity features in service order] and missing [rows × entities].

        An unknown entity gets the declared defaults and ``True`` in its mask column.
        """
        return self.lookup_entities(
            {"account": account_ids, "card": card_ids, "merchant": merchant_ids}
        )

    def lookup_entities(
        self, ids: Mapping[str, Sequence[str] | npt.NDArray[np.object_]]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
        """``lookup`` keyed by entity name, for services over other entities."""
        snapshot = self._snapshot  # one read: the whole batch sees one run
        if snapshot is None:
            raise FeatureError(
                "no features loaded: no successful nightly run yet (run `streamscore nightly`)"
            )
        return _lookup(self._layout, snapshot, ids)

    def vectors(
        self, events: pa.Table | pa.RecordBatch
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
        """All service features for a batch of transactions: entity then event features."""
        snapshot = self._snapshot
        if snapshot is None:
            raise FeatureError(
                "no features loaded: no successful nightly run yet (run `streamscore nightly`)"
            )
        return _vectors(self._layout, snapshot, self._mean_column, events)

    def _load_view(self, view: ViewLayout, feature_date: date) -> _EntityTable:
        path = export_path(self._settings, view.model, feature_date)
        if not path.is_file():
            raise FeatureError(
                f"features for {view.name} at {feature_date} are missing at {path}; "
                "rerun `streamscore nightly --date` for that date"
            )
        return _load_table(view, path)

    def _latest_run_from_clickhouse(self) -> NightlyRun | None:
        from streams.clickhouse import connect
        from streams.features.runs import latest_successful_run

        client = connect(self._settings)
        try:
            return latest_successful_run(
                client, self._settings.clickhouse_database, self._layout.spec.name
            )
        finally:
            client.close()


class SnapshotFeatures:
    """A feature source (``scoring.pipeline.FeatureSource``) serving one snapshot."""

    def __init__(self, layout: ServiceLayout, snapshot: Snapshot, mean_column: int) -> None:
        self._layout = layout
        self._snapshot = snapshot
        self._mean_column = mean_column

    @property
    def layout(self) -> ServiceLayout:
        return self._layout

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    @property
    def run_id(self) -> str:
        return self._snapshot.run_id

    @property
    def feature_date(self) -> date:
        return self._snapshot.feature_date

    def vectors(
        self, events: pa.Table | pa.RecordBatch
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
        return _vectors(self._layout, self._snapshot, self._mean_column, events)


def _lookup(
    layout: ServiceLayout,
    snapshot: Snapshot,
    ids: Mapping[str, Sequence[str] | npt.NDArray[np.object_]],
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
    blocks: list[npt.NDArray[np.float32]] = []
    missing: list[npt.NDArray[np.bool_]] = []
    for view, table in zip(layout.views, snapshot.tables, strict=True):
        rows = table.rows(ids[view.name])
        blocks.append(table.values[rows])
        missing.append(rows == len(table.values) - 1)
    return np.hstack(blocks), np.column_stack(missing)


def _vectors(
    layout: ServiceLayout, snapshot: Snapshot, mean_column: int, events: pa.Table | pa.RecordBatch
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
    ids = {
        view.name: events.column(view.join_key).to_numpy(zero_copy_only=False)
        for view in layout.views
    }
    entity, missing = _lookup(layout, snapshot, ids)
    event = compute_event_features(events, entity[:, mean_column], layout.event_version)
    return np.hstack([entity, event]), missing


def _load_table(view: ViewLayout, path: Path) -> _EntityTable:
    table = pq.read_table(path, columns=[view.join_key, *view.columns])
    values = (
        np.column_stack([table.column(c).to_numpy().astype(np.float32) for c in view.columns])
        if table.num_rows
        else np.empty((0, len(view.columns)), dtype=np.float32)
    )
    return _table(view, table.column(view.join_key).to_pylist(), values)


def _table(
    view: ViewLayout, keys: Sequence[object], values: npt.NDArray[np.float32]
) -> _EntityTable:
    """An entity table of ``keys`` (row order of ``values``) plus the defaults row."""
    defaults = np.array([[f.default for f in view.features]], dtype=np.float32)
    return _EntityTable(
        index={str(k): i for i, k in enumerate(keys)},
        values=np.ascontiguousarray(np.vstack([values, defaults]), dtype=np.float32),
    )
