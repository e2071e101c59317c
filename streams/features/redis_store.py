"""The Redis online store: the nightly run's marks around Feast's writes, and whole feature
views read back into the serving side's numpy tables.

Feast's layout (``feast.infra.online_stores.redis``): one hash per entity, keyed by
``serialize_entity_key`` (version 3) of its join key followed by the project name, with
one field per feature, ``mmh3("<view>:<feature>")`` (4 bytes) holding a ``ValueProto``,
and ``_ts:<view>`` holding the row's event time (a protobuf ``Timestamp``; our rows are
stamped at midnight UTC of their feature date). Next to it, one hash of ours per view,
``streamscore:materialized:<view>``: the run id, nightly date and row count of the last
materialisation that finished. The nightly run deletes it before Feast writes and sets it
after (:func:`materializing`), so a view whose writes failed half-way has no mark.

:func:`read_view` scans a view's keys and fetches them in pipelined batches (``HMGET``,
``BATCH`` keys per round trip); :func:`decode_values` turns a column of ``ValueProto``
bytes into float32 with numpy (doubles, floats and varints at once, no per-value parse).
:meth:`RedisFeatures.read_run` returns exactly the rows the mark counts, stamped with the
run's date, or raises: no mark or one for another date (the view was not materialised for
that run, or its writes failed), a count that differs (rows lost or overwritten by an
older date), or a materialisation that ran while it was reading.

When Redis is down (``streams.features.online.OnlineFeatures`` applies this):

* **nightly**: the run checks Redis before dbt runs and wraps every failure of Feast's
  writes; it fails, is recorded ``failed`` in ``feature_runs`` with an error naming the
  Redis online store and its URL (password masked), and nothing it built is served.
* **start-up** (nothing served yet): the run's local Parquet export, the very rows
  Feast materialised from, is served instead, with a WARNING naming Redis and its error;
  ``streamscore_feature_store_up`` says 0 and ``streamscore_features_age_seconds``
  ``{source="export"}`` where the features came from. The next run is read from Redis
  again. Without that export (a scoring machine other than the nightly one) the scoring
  process stops with a FeatureError before it consumes anything; under ``streamscore
  worker`` the supervisor starts it again, 1 s doubling to 30 s apart, until Redis
  answers. Nothing is read from Kafka meanwhile, so nothing is lost.
* **mid-run**: the served run stays. Every reload (30 s) PINGs Redis, so the metric turns
  0 within one reload of Redis going away (a WARNING when it does, an INFO when it is back);
  a newer run that cannot be read is logged as a WARNING naming Redis and its error, and
  tried again at the next reload.

Start-up and mid-run alike when Redis answers but does not hold the run (no mark, another
date, rows missing): it is not served from Redis.
"""

from __future__ import annotations

import contextlib
import logging
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from streams.errors import FeatureError, FeatureStoreDown
from streams.features.store import ENTITY_KEY_SERIALIZATION_VERSION, PROJECT, redis_client
from streams.redact import redact

if TYPE_CHECKING:
    from pathlib import Path

    from redis import Redis

    from streams.features.registry import ServiceLayout, ViewLayout
    from streams.features.runs import NightlyRun
    from streams.settings import Settings

__all__ = [
    "BATCH",
    "MARK_PREFIX",
    "Mark",
    "RedisFeatures",
    "ViewRows",
    "check_reachable",
    "compact_after_load",
    "decode_values",
    "entity_key_head",
    "feature_fields",
    "feature_timestamp",
    "held_runs",
    "materializing",
    "read_mark",
    "read_view",
]

log = logging.getLogger("streams.features.redis_store")

BATCH = 5_000  # keys per SCAN step and per HMGET pipeline
MARK_PREFIX = f"{PROJECT}:materialized:"
_GLOB_SPECIAL = frozenset(b"*?[]\\")
# ValueProto fields a number may be in: (tag byte, bytes after the tag) for fixed widths.
_DOUBLE = (0x29, 8)  # double_val, field 5, 64-bit
_FLOAT = (0x35, 4)  # float_val, field 6, 32-bit
_VARINT_TAGS = (0x18, 0x20, 0x38)  # int32_val (3), int64_val (4), bool_val (7)
_MAX_VARINT = 10


@dataclass(frozen=True, slots=True)
class Mark:
    """What the last finished materialisation of a view wrote."""

    run_id: str
    nightly_date: date
    rows: int


@dataclass(frozen=True, slots=True)
class ViewRows:
    """A view's rows as read: ids, their features (float32, the service's column order),
    and how many of the view's keys were stamped with another date (left out)."""

    ids: list[str]
    values: npt.NDArray[np.float32]
    other_dates: int = 0


# -- Feast's layout --------------------------------------------------------------------
def feature_fields(view: str, columns: Sequence[str]) -> list[bytes]:
    """The hash fields of ``view``'s ``columns``, as Feast names them (4 bytes of mmh3)."""
    from feast.infra.online_stores.helpers import _mmh3

    return [_mmh3(f"{view}:{column}") for column in columns]


def timestamp_field(view: str) -> bytes:
    return f"_ts:{view}".encode()


def feature_timestamp(day: date) -> bytes:
    """The ``_ts`` value Feast stores for a row of feature date ``day`` (midnight UTC)."""
    from google.protobuf.timestamp_pb2 import Timestamp  # type: ignore[import-untyped]

    stamp = Timestamp()
    stamp.FromDatetime(datetime(day.year, day.month, day.day, tzinfo=UTC))
    return bytes(stamp.SerializeToString())


def entity_key_head(join_key: str) -> bytes:
    """What every Redis key of a one-key string entity starts with, before the id's length:
    Feast's serialisation of ``join_key`` = "" without its last 4 bytes (the length 0)."""
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    empty = serialize_entity_key(
        EntityKey(join_keys=[join_key], entity_values=[Value(string_val="")]),
        entity_key_serialization_version=ENTITY_KEY_SERIALIZATION_VERSION,
    )
    return empty[:-4]


def _glob_escape(raw: bytes) -> bytes:
    return b"".join(b"\\" + bytes([c]) if c in _GLOB_SPECIAL else bytes([c]) for c in raw)


def _entity_id(key: bytes, head: bytes, project: bytes) -> str | None:
    """The id in a Redis key of this entity and project; None for any other key."""
    start = len(head) + 4
    if len(key) < start + len(project) or not key.startswith(head):
        return None
    (size,) = struct.unpack_from("<I", key, len(head))
    if start + size + len(project) != len(key) or not key.endswith(project):
        return None
    return key[start : start + size].decode("utf-8")


def decode_values(raw: Sequence[bytes | None], where: str = "a feature") -> npt.NDArray[np.float32]:
    """A column of ``ValueProto`` bytes as float32: double, float, int32, int64 and bool
    values at once with numpy; empty (a null) or missing is NaN, as a null in Parquet."""
    n = len(raw)
    out = np.full(n, np.nan, dtype=np.float32)
    if n == 0:
        return out
    blobs = [b or b"" for b in raw]
    lengths = np.fromiter(map(len, blobs), dtype=np.int64, count=n)
    buf = np.frombuffer(b"".join(blobs), dtype=np.uint8)
    starts = np.cumsum(lengths) - lengths
    present = lengths > 0
    tags = np.zeros(n, dtype=np.uint8)
    tags[present] = buf[starts[present]]
    done = ~present
    for (tag, width), dtype in ((_DOUBLE, "<f8"), (_FLOAT, "<f4")):
        rows = present & (tags == tag) & (lengths == width + 1)
        if rows.any():
            index = starts[rows, None] + 1 + np.arange(width)
            out[rows] = buf[index].copy().view(dtype).ravel().astype(np.float32)
            done |= rows
    rows = present & np.isin(tags, _VARINT_TAGS) & (lengths >= 2) & (lengths <= _MAX_VARINT + 1)
    if rows.any():
        out[rows] = _varints(buf, starts[rows] + 1, lengths[rows] - 1, where)
        done |= rows
    if not done.all():
        first = int(np.flatnonzero(~done)[0])
        raise FeatureError(
            f"Redis holds a value of {where} that is not a number (ValueProto tag "
            f"0x{int(tags[first]):02x}, {int(lengths[first])} bytes)"
        )
    return out


def _varints(
    buf: npt.NDArray[np.uint8],
    starts: npt.NDArray[np.int64],
    sizes: npt.NDArray[np.int64],
    where: str,
) -> npt.NDArray[np.float32]:
    """Protobuf varints (two's complement int64) at ``starts``, ``sizes`` bytes each."""
    position = np.arange(_MAX_VARINT)
    inside = position < sizes[:, None]
    index = np.minimum(starts[:, None] + position, len(buf) - 1)
    data = np.where(inside, buf[index], 0).astype(np.uint64)
    # Every byte but the last has its continuation bit set, the last has it clear.
    last = np.take_along_axis(data, (sizes - 1)[:, None], axis=1).ravel()
    more = (data & 0x80) != 0
    if (last & 0x80).any() or (more.sum(axis=1) != sizes - 1).any():
        raise FeatureError(f"Redis holds a malformed integer of {where}")
    shifts = (7 * position).astype(np.uint64)
    parts = (data & np.uint64(0x7F)) << shifts  # bits past 64 fall off: int64 wrap-around
    signed: npt.NDArray[np.int64] = np.bitwise_or.reduce(parts, axis=1).view(np.int64)
    return signed.astype(np.float32)


# -- reading ---------------------------------------------------------------------------
def read_view(
    client: Redis,
    view: str,
    join_key: str,
    columns: Sequence[str],
    day: date,
    *,
    project: str = PROJECT,
    batch: int = BATCH,
) -> ViewRows:
    """Every entity of ``view`` stamped with feature date ``day``: ids and ``columns``."""
    head = entity_key_head(join_key)
    project_bytes = project.encode("utf-8")
    pattern = _glob_escape(head) + b"*" + _glob_escape(project_bytes)
    fields = [*feature_fields(view, columns), timestamp_field(view)]
    stamp = feature_timestamp(day)
    keys = list(client.scan_iter(match=pattern, count=batch))
    ids: list[str] = []
    raw: list[list[bytes | None]] = [[] for _ in columns]
    other = 0
    for begin in range(0, len(keys), batch):
        chunk = keys[begin : begin + batch]
        with client.pipeline(transaction=False) as pipe:
            for key in chunk:
                pipe.hmget(key, fields)
            replies: list[list[bytes | None]] = pipe.execute()
        for key, reply in zip(chunk, replies, strict=True):
            if reply[-1] is None:
                continue  # the entity's key holds other views only
            entity = _entity_id(key, head, project_bytes)
            if entity is None:
                continue  # another project or entity matched the pattern
            if reply[-1] != stamp:
                other += 1
                continue
            ids.append(entity)
            for column, value in zip(raw, reply, strict=False):
                column.append(value)
    if not ids:
        return ViewRows([], np.empty((0, len(columns)), dtype=np.float32), other)
    values = np.column_stack(
        [decode_values(col, f"{view}.{name}") for col, name in zip(raw, columns, strict=True)]
    )
    return ViewRows(ids, np.ascontiguousarray(values, dtype=np.float32), other)


def read_mark(client: Redis, view: str) -> Mark | None:
    """The mark of ``view``'s last finished materialisation, None if there is none."""
    raw: dict[bytes, bytes] = client.hgetall(MARK_PREFIX + view)  # type: ignore[assignment]
    if not raw:
        return None
    try:
        return Mark(
            raw[b"run_id"].decode(),
            date.fromisoformat(raw[b"nightly_date"].decode()),
            int(raw[b"rows"]),
        )
    except (KeyError, ValueError) as exc:
        raise FeatureError(f"Redis key {MARK_PREFIX + view} is not a streamscore mark") from exc


def read_run_views(client: Redis, layout: ServiceLayout, run: NightlyRun) -> list[ViewRows]:
    """Each of ``layout``'s views as materialised for ``run``'s date, checked (module doc)."""
    out = []
    for view in layout.views:
        before = read_mark(client, view.name)
        _check_mark(view, run, before)
        assert before is not None
        rows = read_view(client, view.name, view.join_key, view.columns, run.nightly_date)
        if read_mark(client, view.name) != before:
            raise FeatureError(
                f"view {view.name} was materialised again while it was read from Redis"
            )
        if len(rows.ids) != before.rows:
            raise FeatureError(
                f"Redis holds {len(rows.ids)} rows of view {view.name} for {run.nightly_date} "
                f"but run {before.run_id} materialised {before.rows} ({rows.other_dates} keys "
                "are stamped with another date): rows were lost or overwritten since"
            )
        if before.run_id != run.run_id:
            # Same date: a rerun, or another service's run sharing the view, wrote it last.
            log.info(
                "view %s in Redis was materialised by run %s for %s (serving run %s)",
                view.name, before.run_id, run.nightly_date, run.run_id,
            )  # fmt: skip
        out.append(rows)
    return out


def _check_mark(view: ViewLayout, run: NightlyRun, mark: Mark | None) -> None:
    if mark is None:
        raise FeatureError(
            f"Redis holds no finished materialisation of view {view.name} (run "
            f"{run.run_id} for {run.nightly_date} wrote elsewhere, or a later run's writes "
            "failed half-way)"
        )
    if mark.nightly_date != run.nightly_date:
        raise FeatureError(
            f"Redis holds view {view.name} for {mark.nightly_date} (run {mark.run_id}), not "
            f"for {run.nightly_date} (run {run.run_id})"
        )


def _down(settings: Settings, exc: Exception) -> FeatureStoreDown:
    return FeatureStoreDown(
        f"the Redis online store at {redact(settings.redis_url)} does not answer: "
        f"{redact(f'{type(exc).__name__}: {exc}')}"
    )


def _unreachable(exc: Exception) -> bool:
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    # AuthenticationError and BusyLoadingError are ConnectionErrors; NOAUTH is answered
    # as a ResponseError by some servers.
    return isinstance(exc, (RedisConnectionError, RedisTimeoutError, OSError)) or (
        "NOAUTH" in str(exc) or "WRONGPASS" in str(exc)
    )


class RedisFeatures:
    """The serving side's view of the Redis online store: reads whole runs, and whether
    it answered last time (``up``: None before the first contact)."""

    store = "redis"

    def __init__(self, settings: Settings, client: Redis | None = None) -> None:
        self._settings = settings
        self._client = client
        self.url = redact(settings.redis_url)
        self.up: bool | None = None
        self.error = ""

    def _redis(self) -> Redis:
        if self._client is None:
            self._client = redis_client(self._settings)
        return self._client

    def ping(self) -> bool:
        """PING Redis; True when it answered. Logs when that changes."""
        from redis.exceptions import RedisError

        try:
            self._redis().ping()
        except (RedisError, OSError) as exc:
            self._saw(_down(self._settings, exc))
            return False
        self._saw(None)
        return True

    def read_run(self, layout: ServiceLayout, run: NightlyRun) -> list[ViewRows]:
        """``run``'s views from Redis (:func:`read_run_views`). FeatureStoreDown when Redis
        does not answer, FeatureError when what it holds is not that run's."""
        from redis.exceptions import RedisError

        try:
            views = read_run_views(self._redis(), layout, run)
        except (RedisError, OSError) as exc:
            if not _unreachable(exc):
                self._saw(None)
                raise FeatureError(
                    f"the Redis online store at {self.url} failed reading nightly run "
                    f"{run.run_id}: {redact(f'{type(exc).__name__}: {exc}')}"
                ) from None
            down = _down(self._settings, exc)
            self._saw(down)
            raise down from None
        except FeatureError as exc:
            self._saw(None)
            raise FeatureError(f"the Redis online store at {self.url}: {exc}") from None
        self._saw(None)
        counts = ", ".join(
            f"{v.name} {len(r.ids)}" for v, r in zip(layout.views, views, strict=True)
        )
        log.info("nightly run %s read from Redis at %s (%s rows)", run.run_id, self.url, counts)
        return views

    def _saw(self, error: FeatureStoreDown | None) -> None:
        if error is not None and self.up is not False:
            log.warning("%s", error)
        elif error is None and self.up is False:
            log.info("the Redis online store at %s answers again", self.url)
        self.up = error is None
        self.error = "" if error is None else str(error)


# -- the nightly run's side ------------------------------------------------------------
def check_reachable(settings: Settings) -> None:
    """Raise FeatureStoreDown unless the configured Redis answers (no-op for SQLite)."""
    if settings.online_store != "redis":
        return
    from redis.exceptions import RedisError

    client = redis_client(settings)
    try:
        client.ping()
    except (RedisError, OSError) as exc:
        raise _down(settings, exc) from None
    finally:
        client.close()


def compact_after_load(client: Redis, where: str) -> None:
    """Start the append-only file's rewrite (``BGREWRITEAOF``) after a load, on a server
    that leaves it to its clients (``auto-aof-rewrite-percentage 0``, as
    streams.infra.redis configures its own): the file then holds each feature once, not
    every night's writes. Not waited for; a server that rewrites by itself, keeps no such
    file or refuses the commands is left alone (logged)."""
    from redis.exceptions import RedisError

    try:
        persistence: dict[str, Any] = client.info("persistence")  # type: ignore[assignment]
        if not int(persistence.get("aof_enabled", 0)):
            return
        rule: dict[str, Any] = client.config_get("auto-aof-rewrite-percentage")  # type: ignore[assignment]
        if str(rule.get("auto-aof-rewrite-percentage", "")) != "0":
            return
        client.bgrewriteaof()  # type: ignore[no-untyped-call]
        log.info("%s: rewriting its append-only file after the load", where)
    except RedisError as exc:
        log.warning("%s: its append-only file was not rewritten after the load (%s)", where, exc)


def held_runs(
    settings: Settings, layout: ServiceLayout, client: Redis | None = None
) -> dict[str, Path]:
    """Per view, the kept export (streams.features.run_exports) of the run the Redis store
    holds in full, by the view's mark (set only after a whole write, removed before the
    next): the bulk writer then sends only the values that differ from it. Views with no
    mark, no kept export or one that fails its sha256, a server that has evicted keys, or
    Redis not answering: none (every field is written) and a WARNING saying why."""
    if settings.online_store != "redis":
        return {}
    from redis.exceptions import RedisError

    from streams.features.run_exports import read_manifest, verified_files

    own = client is None
    client = client or redis_client(settings)
    held: dict[str, Path] = {}
    try:
        stats: dict[str, Any] = client.info("stats")  # type: ignore[assignment]
        if int(stats.get("evicted_keys", 0)):
            log.warning(
                "the Redis online store has evicted %s keys: writing every field of every view",
                stats["evicted_keys"],
            )
            return {}
        for view in layout.views:
            mark = read_mark(client, view.name)
            manifest = read_manifest(settings, mark.run_id) if mark is not None else None
            if mark is None or manifest is None or manifest.nightly_date != mark.nightly_date:
                continue
            held[view.name] = verified_files(settings, manifest, [view.model])[view.model]
    except (RedisError, OSError, FeatureError) as exc:
        log.warning("what the Redis online store holds is unknown (%s): writing every field", exc)
        return {}
    finally:
        if own:
            client.close()
    return held


@contextlib.contextmanager
def materializing(
    settings: Settings,
    run_id: str,
    day: date,
    rows: Mapping[str, int],
    client: Redis | None = None,
) -> Iterator[None]:
    """Around Feast's writes of ``rows``' views for ``day``: their marks are removed first
    and set after, and any failure inside names the Redis online store (a FeatureError).
    Does nothing for SQLite."""
    if settings.online_store != "redis":
        yield
        return
    from redis.exceptions import RedisError

    where = f"the Redis online store at {redact(settings.redis_url)}"
    client = client or redis_client(settings)
    try:
        try:
            if rows:
                client.delete(*(MARK_PREFIX + view for view in rows))
        except (RedisError, OSError) as exc:
            raise _down(settings, exc) from None
        try:
            yield
        except FeatureError:
            raise
        except Exception as exc:
            raise FeatureError(
                f"materialising {day} into {where} failed: {redact(f'{type(exc).__name__}: {exc}')}"
            ) from None
        mapping: dict[str, Any]
        try:
            with client.pipeline(transaction=True) as pipe:
                for view, count in rows.items():
                    mapping = {"run_id": run_id, "nightly_date": day.isoformat(), "rows": count}
                    pipe.hset(MARK_PREFIX + view, mapping=mapping)
                pipe.execute()
        except (RedisError, OSError) as exc:
            raise _down(settings, exc) from None
        compact_after_load(client, where)
    finally:
        client.close()
