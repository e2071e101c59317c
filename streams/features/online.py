"""Serving-side feature access: in-process numpy tables per entity, swapped atomically per run.

Feast's ``get_online_features`` costs milliseconds per call; the scorer needs a batch of
thousands in well under that. Each nightly run exports exactly the rows it materialises
(one Parquet file per feature view for the nightly date); this module loads those into a
float32 matrix per entity with an ``id → row`` dict, plus one extra row holding the
declared defaults for unknown entities. A refresh builds a complete new snapshot and swaps
one reference, so a lookup never mixes two runs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq

from streams.errors import FeatureError
from streams.features.event import ACCOUNT_MEAN_FEATURE, compute_event_features
from streams.features.paths import export_path
from streams.features.registry import ServiceLayout, ViewLayout, load_service_layout
from streams.features.runs import NightlyRun

if TYPE_CHECKING:
    from streams.settings import Settings

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
            return None
        return self._read(run.nightly_date, run.run_id)

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
        blocks: list[npt.NDArray[np.float32]] = []
        missing: list[npt.NDArray[np.bool_]] = []
        for view, table in zip(self._layout.views, snapshot.tables, strict=True):
            rows = table.rows(ids[view.name])
            blocks.append(table.values[rows])
            missing.append(rows == len(table.values) - 1)
        return np.hstack(blocks), np.column_stack(missing)

    def vectors(
        self, events: pa.Table | pa.RecordBatch
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
        """All service features for a batch of transactions: entity then event features."""
        ids = {
            view.name: events.column(view.join_key).to_numpy(zero_copy_only=False)
            for view in self._layout.views
        }
        entity, missing = self.lookup_entities(ids)
        event = compute_event_features(
            events, entity[:, self._mean_column], self._layout.event_version
        )
        return np.hstack([entity, event]), missing

    def _load_view(self, view: ViewLayout, feature_date: date) -> _EntityTable:
        path = export_path(self._settings, view.model, feature_date)
        if not path.is_file():
            raise FeatureError(
                f"features for {view.name} at {feature_date} are missing at {path}; "
                "rerun `streamscore nightly --date` for that date"
            )
        table = pq.read_table(path, columns=[view.join_key, *view.columns])
        defaults = np.array([[f.default for f in view.features]], dtype=np.float32)
        values = (
            np.column_stack([table.column(c).to_numpy().astype(np.float32) for c in view.columns])
            if table.num_rows
            else np.empty((0, len(view.columns)), dtype=np.float32)
        )
        keys = table.column(view.join_key).to_pylist()
        return _EntityTable(
            index={str(k): i for i, k in enumerate(keys)},
            values=np.ascontiguousarray(np.vstack([values, defaults]), dtype=np.float32),
        )

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
