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

The live worker serves each event with the run in effect at its event time, the rule a
replay applies (``streams.features.runs``). It holds the newest runs' tail of that
timeline (:class:`HeldRuns`, :meth:`OnlineFeatures.fetch_held`): the run in effect before
the live one, the live one, and a newer run from when it is recorded until its
``effective_at``; :meth:`OnlineFeatures.vectors_as_of` picks per event. A batch inside
one run's time, the usual case, is one lookup as before; one straddling a switch is
looked up per run and put back in row order. An event from before every held run (very
late) gets the oldest held one and is counted (``AsOfVectors.stale``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
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
from streams.features.runs import NightlyRun, RunTimeline, hold_from, live_index

if TYPE_CHECKING:
    from streams.features.redis_store import RedisFeatures
    from streams.settings import Settings

__all__ = [
    "AsOfVectors",
    "HeldRuns",
    "LatestRun",
    "OnlineFeatures",
    "RecentRuns",
    "Snapshot",
    "SnapshotFeatures",
]

log = logging.getLogger("streams.features.online")

LatestRun = Callable[[], NightlyRun | None]
RecentRuns = Callable[[], Sequence[NightlyRun]]  # the newest few (runs.recent_runs_sql)


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


_ALWAYS = np.array([np.iinfo(np.int64).min], dtype=np.int64)


@dataclass(frozen=True, slots=True)
class HeldRuns:
    """The snapshots a scoring process serves, each event by its time: ``snapshots[i]``
    from ``starts_ms[i]`` until the next start (a tail of ``runs.RunTimeline``, the rule a
    replay applies); an event before ``starts_ms[0]`` gets ``snapshots[0]`` and is counted
    stale. ``current``: the one in effect when they were loaded (what ``run_id``,
    ``feature_date``, ``lookup`` and ``vectors`` report and serve)."""

    starts_ms: npt.NDArray[np.int64]
    snapshots: tuple[Snapshot, ...]
    current: int = 0
    asked: tuple[str, ...] = ()  # the runs the timeline named (some may not have loaded)

    @classmethod
    def single(cls, snapshot: Snapshot) -> HeldRuns:
        """``snapshot`` for every event, whatever its time."""
        return cls(_ALWAYS, (snapshot,), 0, (snapshot.run_id,))

    @property
    def run_ids(self) -> tuple[str, ...]:
        return tuple(s.run_id for s in self.snapshots)

    def pick(self, times_ms: npt.ArrayLike) -> tuple[npt.NDArray[np.intp], int]:
        """Per event time (epoch ms): its snapshot's index; and how many were before every
        start (given the oldest)."""
        index = live_index(self.starts_ms, times_ms)
        stale = int(np.count_nonzero(index < 0))
        return (np.maximum(index, 0) if stale else index), stale

    def describe(self) -> str:
        """``run (from <UTC time>)`` per held run, oldest first, the current one marked."""
        parts = []
        for i, (start, snapshot) in enumerate(
            zip(self.starts_ms.tolist(), self.snapshots, strict=True)
        ):
            since = "" if start == _ALWAYS[0] else f" from {_iso(start)}"
            mark = " (current)" if i == self.current and len(self.snapshots) > 1 else ""
            parts.append(f"{snapshot.run_id}{since}{mark}")
        return ", ".join(parts)


@dataclass(frozen=True, slots=True)
class AsOfVectors:
    """A batch's feature vectors and the run each row was served from: rows where
    ``index`` is i used ``run_ids[i]`` (features for ``feature_dates[i]``); ``index`` None:
    every row the one run. ``stale``: rows older than every held run (given the oldest)."""

    x: npt.NDArray[np.float32]
    missing: npt.NDArray[np.bool_]
    run_ids: tuple[str, ...]
    feature_dates: tuple[date, ...]
    index: npt.NDArray[np.intp] | None = None
    stale: int = 0


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
        recent_runs: RecentRuns | None = None,
    ) -> None:
        self._settings = settings
        self._layout: ServiceLayout = load_service_layout(
            settings, feature_service or settings.feature_service
        )
        self._latest_run = latest_run or self._latest_run_from_clickhouse
        # fetch_held's view of feature_runs: the newest few runs (default: the newest one)
        self._recent_runs = recent_runs
        self._snapshot: Snapshot | None = None
        self._held: HeldRuns | None = None
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

    @property
    def held(self) -> HeldRuns | None:
        """What ``vectors_as_of`` serves from (None before anything is loaded)."""
        return self._held

    def switch_if_newer(self, now_ms: int | None = None) -> bool:
        """:meth:`fetch_held` and :meth:`use_held`: True when what is served changed."""
        held = self.fetch_held(now_ms)
        if held is None:
            return False
        self.use_held(held)
        return True

    def fetch_held(
        self, now_ms: int | None = None, *, pending: HeldRuns | None = None
    ) -> HeldRuns | None:
        """The runs to hold at ``now_ms`` (default: now), loaded, if they differ from those
        held (or from ``pending``, loaded and not yet in use): of the newest runs'
        timeline, the run in effect before the live one, the live one and any newer run
        waiting for its start. A run is loaded as soon as it is recorded, before it takes
        effect; snapshots already loaded are reused. None when nothing changed, or the
        newest run could not be read from Redis while one is served. Nothing is swapped
        (:meth:`use_held` does)."""
        runs = [r for r in self._runs() if r.ok]
        if not runs:
            return None
        now = int(time.time() * 1000) if now_ms is None else now_ms
        timeline = RunTimeline.from_runs(runs)
        tail = timeline.tail(hold_from(timeline, now))
        current = max(int(tail.at([now])[0]), 0)
        served = self._held
        held = pending or served
        asked = tuple(r.run_id for r in tail.runs)
        if held is not None and (held.asked, held.current) == (asked, current):
            if self._redis is not None:
                self._redis.ping()  # streamscore_feature_store_up between loads too
            return None
        known = {s.run_id: s for h in (served, pending) if h is not None for s in h.snapshots}
        return self._load_tail(tail, current, known, late=held is not None, now_ms=now)

    def _runs(self) -> Sequence[NightlyRun]:
        if self._recent_runs is not None:
            return self._recent_runs()
        run = self._latest_run()
        return [] if run is None else [run]

    def _load_tail(
        self,
        tail: RunTimeline,
        current: int,
        known: Mapping[str, Snapshot],
        *,
        late: bool,
        now_ms: int,
    ) -> HeldRuns | None:
        """``tail``'s runs, loaded (or taken from ``known``); ``late``: warn of a run in
        effect before it was loaded (not at start-up, when that is how runs are found)."""
        newest = len(tail.runs) - 1
        loaded: list[Snapshot | None] = []
        for i, run in enumerate(tail.runs):
            if run.run_id in known:
                loaded.append(known[run.run_id])
            elif i == newest and self._redis is not None:
                snapshot = self._read_from_redis(run)
                if snapshot is None:
                    return None  # logged; what is held stays, tried again next reload
                loaded.append(snapshot)
            elif i >= current:
                loaded.append(self.read_run(run))  # (a run from before kept runs: dated)
            elif self.has_kept(run):
                loaded.append(self.read_run(run, require_kept=True))
            else:
                # A run in effect before the live one, from before runs kept their exports:
                # its dated export may hold a later rerun's rows now, so it is not held.
                log.warning(
                    "nightly run %s kept no features by run id: not held, events from before "
                    "%s are served run %s",
                    run.run_id, _iso(int(tail.starts_ms[i + 1])), tail.runs[i + 1].run_id,
                )  # fmt: skip
                loaded.append(None)
        first = max((i + 1 for i, s in enumerate(loaded) if s is None), default=0)
        snapshots = tuple(s for s in loaded[first:] if s is not None)
        if late:
            for i, run in enumerate(tail.runs[current:], start=current):
                start = int(tail.starts_ms[i])
                if run.run_id not in known and start < now_ms:
                    log.warning(
                        "nightly run %s took effect at %s, %.1f s before this process had "
                        "loaded it: events of that time were served the previous run "
                        "(raise STREAMSCORE_FEATURE_SWITCH_DELAY_S above the reload "
                        "interval plus a load; a replay reports them)",
                        run.run_id, _iso(start), (now_ms - start) / 1000,
                    )  # fmt: skip
        return HeldRuns(
            tail.starts_ms[first:],
            snapshots,
            max(current - first, 0),
            tuple(r.run_id for r in tail.runs),
        )

    def use_held(self, held: HeldRuns) -> None:
        """Serve ``held`` from the next lookup on (one reference: atomic)."""
        self._held = held
        self._snapshot = held.snapshots[held.current]

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
        """Serve ``snapshot`` from the next lookup on, for every event (one reference: atomic)."""
        self._held = HeldRuns.single(snapshot)
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

    def vectors_as_of(
        self, events: pa.Table | pa.RecordBatch, times_ms: npt.ArrayLike
    ) -> AsOfVectors:
        """``vectors`` with each event served by the held run in effect at its time
        (``times_ms``, epoch ms per row): one lookup when the whole batch is in one run's
        time; otherwise one per run, put back in row order."""
        held = self._held  # one read: the whole batch sees one set of runs
        if held is None:
            raise FeatureError(
                "no features loaded: no successful nightly run yet (run `streamscore nightly`)"
            )
        index, stale = held.pick(times_ms)
        n = len(index)
        first = int(index[0]) if n else held.current
        if n == 0 or bool((index == first).all()):
            one = held.snapshots[first]
            x, missing = _vectors(self._layout, one, self._mean_column, events)
            return AsOfVectors(x, missing, (one.run_id,), (one.feature_date,), None, stale)
        used = np.unique(index)
        parts = []
        for i in used.tolist():
            rows = np.flatnonzero(index == i)
            part = events.take(pa.array(rows))
            parts.append(
                (rows, *_vectors(self._layout, held.snapshots[i], self._mean_column, part))
            )
        _, x0, m0 = parts[0]
        x = np.empty((n, x0.shape[1]), dtype=x0.dtype)
        missing = np.empty((n, m0.shape[1]), dtype=np.bool_)
        for rows, part_x, part_missing in parts:
            x[rows] = part_x
            missing[rows] = part_missing
        chosen = [held.snapshots[i] for i in used.tolist()]
        return AsOfVectors(
            x,
            missing,
            tuple(s.run_id for s in chosen),
            tuple(s.feature_date for s in chosen),
            np.searchsorted(used, index).astype(np.intp),
            stale,
        )

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


def _iso(epoch_ms: int) -> str:
    return datetime.fromtimestamp(epoch_ms / 1000, UTC).isoformat(timespec="milliseconds")


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
