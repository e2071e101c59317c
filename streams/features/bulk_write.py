"""Materialise Feast feature views into the online store in bulk, in Feast's own layout.

Feast's ``materialize`` pulls a view's rows through pandas (its file offline store reads
every dated export of the view, not just the window), makes one ``ValueProto`` object per
value and writes them one at a time: at 100,000 accounts that is 11 M SQLite rows in
4.6 minutes and 4 GB, and a million accounts does not fit in memory. This module writes
exactly what Feast would write, from the same registry objects, in bulk:

* the views, their features and dtypes, entity join keys, batch source (path, timestamp
  field) and the online table's name all come from Feast (``FeatureStore.get_feature_view``
  after ``apply``, Feast's own ``_table_id`` and ``_redis_key`` conventions): nothing is
  restated here;
* the rows are Feast's: those of the view's file source with an event time in
  ``[start, end]`` (both ends inclusive, as Feast's file offline store), the latest per
  entity;
* entity keys (``serialize_entity_key``, version 3) and values (``ValueProto``: double,
  float, int32, int64, bool) are encoded with numpy over whole columns, byte for byte what
  Feast's serialisers produce (tests/unit/test_bulk_write.py compares them, and the rows
  Feast's own ``online_write_batch`` writes, on every edge case);
* SQLite (Feast's ``<project>_<view>`` table, Feast's upsert): every row of a view in
  one transaction, so readers see the old run or the new one, in primary-key order, so
  B-tree pages are appended, not revisited; one statement per entity upserts all its
  features (the key bound once); ``value_text`` is filled as Feast fills it;
* Redis (one hash per entity, ``mmh3("<view>:<feature>")`` fields and ``_ts:<view>``):
  ``HSET`` commands encoded as RESP with Arrow and numpy, ``REDIS_BATCH`` entities at a
  time, sent and their replies counted on a second thread while the next batch is
  encoded; as with Feast's ``skip_dedup``, the last write wins. Given the rows the store
  holds (``held``: the last run written in full, by the views' marks), only the fields
  whose value differs are sent, and each hash ends as a full write would leave it.
  Redis's failures are redis-py's exceptions.

After each view, the materialisation interval is recorded in Feast's registry
(``apply_materialization``), as ``FeatureStore.materialize`` does. On a nightly run, every
SQLite row and Redis hash equals what Feast's own ``materialize`` writes, and Feast's
``get_online_features`` reads it back (tests/integration/test_bulk_materialize.py and the
skew tests in test_nightly.py). What this cannot write as Feast would (another source or
store type, a Redis cluster or one without ``skip_dedup``, versioned views, a non-string
join key, a feature dtype outside the five above) raises FeatureError naming it, before
any write.
"""

from __future__ import annotations

import logging
import sqlite3
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from streams.errors import FeatureError

if TYPE_CHECKING:
    from feast import FeatureStore, FeatureView

__all__ = [
    "REDIS_BATCH",
    "SQLITE_CHUNK",
    "SQLITE_GROUP",
    "RedisWrite",
    "ViewPlan",
    "encode_entity_keys",
    "encode_values",
    "latest_per_entity",
    "materialize_views",
    "read_latest",
    "same_encoding",
    "value_texts",
    "view_plan",
    "write_redis",
    "write_sqlite",
]

log = logging.getLogger("streams.features.bulk_write")

SQLITE_CHUNK = 20_000  # entities encoded at a time for SQLite (≈ 1 M rows, ≈ 100 MB)
SQLITE_GROUP = 400  # features per upsert statement (SQLite binds at most 32,766 values)
REDIS_BATCH = 10_000  # entities per pipelined batch of HSETs
HSET_TS = "_ts:{}"  # the field of a view's event time in an entity's hash (Feast's)
_ENTITY_KEY_VERSION = 3  # the only version Feast writes (streams.features.store)
_STRING = 2  # feast ValueType.STRING: the type tag of a join key and of its value
# ValueProto oneof fields: the tag byte (field number << 3 | wire type) per value type.
_TAGS = {"DOUBLE": 0x29, "FLOAT": 0x35, "INT32": 0x18, "INT64": 0x20, "BOOL": 0x38}
_WIDTH = {"DOUBLE": 8, "FLOAT": 4}  # fixed-width values; the others are varints


@dataclass(frozen=True, slots=True)
class ViewPlan:
    """What the bulk writer needs of one Feast feature view, as Feast's registry holds it."""

    name: str
    join_key: str
    features: tuple[tuple[str, str], ...]  # (feature, value type name), the view's order
    source_path: Path
    timestamp_field: str


def view_plan(view: FeatureView, repo_path: Path) -> ViewPlan:
    """The plan for ``view`` (a registry object), or FeatureError if it is not writable here."""
    from feast import FileSource

    source = view.batch_source
    if not isinstance(source, FileSource):
        raise FeatureError(
            f"feature view {view.name}: the bulk writer reads file sources only, not "
            f"{type(source).__name__}"
        )
    if source.field_mapping or source.created_timestamp_column:
        raise FeatureError(
            f"feature view {view.name}: the bulk writer takes no field mapping or created "
            "timestamp column on its source"
        )
    entities = list(view.entity_columns)
    if len(entities) != 1 or entities[0].dtype.to_value_type().name != "STRING":
        raise FeatureError(
            f"feature view {view.name}: the bulk writer writes views with one string join "
            f"key, not {[(f.name, str(f.dtype)) for f in entities]}"
        )
    features: list[tuple[str, str]] = []
    for field in view.features:
        kind = field.dtype.to_value_type().name
        if kind not in _TAGS:
            raise FeatureError(
                f"feature view {view.name}: feature {field.name} is {kind}; the bulk writer "
                f"writes {', '.join(sorted(_TAGS))}"
            )
        features.append((field.name, kind))
    path = Path(source.path)
    if "://" in source.path:
        raise FeatureError(f"feature view {view.name}: {source.path} is not a local path")
    return ViewPlan(
        name=view.name,
        join_key=entities[0].name,
        features=tuple(features),
        source_path=path if path.is_absolute() else Path(repo_path) / path,
        timestamp_field=source.timestamp_field,
    )


# -- reading ---------------------------------------------------------------------------
def read_latest(
    plan: ViewPlan, start: datetime, end: datetime, *, ordered: bool = True
) -> pa.Table:
    """The view's source rows with an event time in ``[start, end]``, the latest per
    entity (Feast's file offline store: both ends inclusive, the last row of the newest
    event time wins), sorted by entity key when ``ordered``. Only the files whose
    statistics overlap the window are read."""
    import pyarrow.dataset as ds

    if not plan.source_path.exists():
        raise FeatureError(f"feature view {plan.name}: no source data at {plan.source_path}")
    columns = [plan.join_key, plan.timestamp_field, *(name for name, _ in plan.features)]
    dataset = ds.dataset(str(plan.source_path), format="parquet")
    missing = sorted(set(columns) - set(dataset.schema.names))
    if missing:
        raise FeatureError(
            f"feature view {plan.name}: {plan.source_path} lacks columns {', '.join(missing)}"
        )
    stamp = ds.field(plan.timestamp_field)
    ts_type = dataset.schema.field(plan.timestamp_field).type
    low, high = (pa.scalar(_aware(t), type=ts_type) for t in (start, end))
    table = dataset.to_table(columns=columns, filter=(stamp >= low) & (stamp <= high))
    return latest_per_entity(plan, table, ordered=ordered)


def latest_per_entity(plan: ViewPlan, table: pa.Table, *, ordered: bool = True) -> pa.Table:
    """``table``'s newest row per entity (the later row on a tie of event times), sorted
    by serialised entity key when ``ordered``: the SQLite table's primary-key order (the
    nightly's exports usually are already; then nothing is copied)."""
    keys = table.column(plan.join_key)
    if keys.null_count:
        raise FeatureError(f"feature view {plan.name}: {keys.null_count} rows have no join key")
    if pc.count_distinct(keys).as_py() != table.num_rows:
        table = table.combine_chunks().append_column("__row", pa.array(np.arange(table.num_rows)))
        table = table.sort_by(
            [
                (plan.join_key, "ascending"),
                (plan.timestamp_field, "descending"),
                ("__row", "descending"),
            ]
        )
        sorted_keys = table.column(plan.join_key).to_numpy(zero_copy_only=False)
        first = np.ones(len(sorted_keys), dtype=bool)
        first[1:] = sorted_keys[1:] != sorted_keys[:-1]
        table = table.filter(pa.array(first)).drop_columns(["__row"])
    if not ordered or table.num_rows < 2:
        return table
    encoded = encode_entity_keys(plan.join_key, table.column(plan.join_key))
    if pc.all(pc.greater_equal(encoded[1:], encoded[:-1])).as_py():
        return table
    return table.take(pc.sort_indices(encoded))


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


# -- encoding --------------------------------------------------------------------------
def _join(pieces: Sequence[bytes | pa.Array]) -> pa.Array:
    """Row ``i`` is the concatenation of every piece's row ``i`` (a ``bytes`` piece is the
    same in every row): Arrow's element-wise join, one pass in C++."""
    arguments = [
        pa.scalar(piece, type=pa.binary()) if isinstance(piece, bytes) else piece
        for piece in pieces
    ]
    if not any(isinstance(piece, pa.Array) for piece in arguments):
        raise ValueError("at least one piece must be an array")
    return pc.binary_join_element_wise(*arguments, pa.scalar(b"", type=pa.binary()))


def _binary(data: npt.NDArray[np.uint8], sizes: npt.NDArray[np.int64]) -> pa.Array:
    """A binary array of ``len(sizes)`` rows cut from ``data`` back to back."""
    offsets = np.zeros(len(sizes) + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    large = offsets[-1] >= 2**31
    return pa.Array.from_buffers(
        pa.large_binary() if large else pa.binary(),
        len(sizes),
        [None, pa.py_buffer(offsets if large else offsets.astype(np.int32)), pa.py_buffer(data)],
    )


def _fixed(rows: npt.NDArray[np.uint8]) -> pa.Array:
    """An ``(n, width)`` byte matrix as a binary array of ``n`` rows."""
    n, width = rows.shape
    return _binary(np.ascontiguousarray(rows).reshape(-1), np.full(n, width, dtype=np.int64))


def encode_entity_keys(join_key: str, ids: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Feast's ``serialize_entity_key`` (version 3) of ``{join_key: id}`` for each string id:
    key count, then the key (type, length, UTF-8), then the value (type, length, UTF-8)."""
    name = join_key.encode("utf-8")
    head = struct.pack("<III", 1, _STRING, len(name)) + name + struct.pack("<I", _STRING)
    array = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
    sizes = np.asarray(pc.binary_length(array).to_numpy(zero_copy_only=False), dtype="<u4")
    return _join([head, _fixed(sizes.view(np.uint8).reshape(-1, 4)), array.cast(pa.binary())])


def _varints(values: npt.NDArray[np.uint64], tag: int) -> pa.Array:
    """``tag`` then the protobuf base-128 varint of each value (1 to 10 bytes)."""
    n = len(values)
    groups = np.empty((n, 11), dtype=np.uint8)
    groups[:, 0] = tag
    rest = values.copy()
    for i in range(1, 11):
        groups[:, i] = (rest & np.uint64(0x7F)).astype(np.uint8)
        rest >>= np.uint64(7)
    # bytes needed: the position of the highest non-zero 7-bit group, at least one
    nonzero = groups[:, 1:] != 0
    sizes = np.where(nonzero.any(axis=1), 10 - np.argmax(nonzero[:, ::-1], axis=1), 1)
    position = np.arange(11)
    groups[(position >= 1) & (position < sizes[:, None])] |= 0x80  # continuation bits
    return _binary(groups[position <= sizes[:, None]], sizes + 1)


def _with_nulls(values: pa.Array, present: npt.NDArray[np.bool_]) -> pa.Array:
    """``values`` (one row per present value, as built here: no offset) spread over all
    rows, ``b""`` where a value is absent."""
    if present.all():
        return values
    lengths = np.asarray(pc.binary_length(values).to_numpy(zero_copy_only=False), dtype=np.int64)
    data_buffer = values.buffers()[2]
    data = np.frombuffer(data_buffer, dtype=np.uint8) if data_buffer is not None else None
    sizes = np.zeros(len(present), dtype=np.int64)
    sizes[present] = lengths
    if data is None:
        data = np.empty(0, dtype=np.uint8)
    return _binary(data[: int(lengths.sum())], sizes)


def _numbers(
    column: pa.Array | pa.ChunkedArray, kind: str
) -> tuple[npt.NDArray[Any], npt.NDArray[np.bool_]]:
    """The values of ``column`` as ``kind``'s numpy type (floats little-endian, a null as
    NaN; ints and bools with nulls filled), and where a value is encoded (not null, not
    NaN): what ``encode_values`` and ``same_encoding`` read."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if kind in _WIDTH:
        dtype = np.dtype(np.float64 if kind == "DOUBLE" else np.float32).newbyteorder("<")
        numbers = np.asarray(
            array.cast(pa.from_numpy_dtype(dtype.type))
            .fill_null(np.nan)
            .to_numpy(zero_copy_only=False),
            dtype=dtype,
        )
        return numbers, ~np.isnan(numbers)
    target = pa.bool_() if kind == "BOOL" else pa.int32() if kind == "INT32" else pa.int64()
    try:
        typed = array.cast(target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise FeatureError(f"a {kind} feature holds values that are not {kind}: {exc}") from exc
    present = np.asarray(typed.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    filled = typed.fill_null(False if kind == "BOOL" else 0)
    return np.asarray(filled.to_numpy(zero_copy_only=False)), present


def same_encoding(
    now: pa.Array | pa.ChunkedArray, held: pa.Array | pa.ChunkedArray, kind: str
) -> npt.NDArray[np.bool_]:
    """Row by row: does ``encode_values`` give ``now`` and ``held`` the same bytes? Decided
    on the values, without encoding ``held``."""
    a, a_present = _numbers(now, kind)
    b, b_present = _numbers(held, kind)
    if kind in _WIDTH:  # by bits: -0.0 is not 0.0
        a, b = a.view(f"<i{a.itemsize}"), b.view(f"<i{b.itemsize}")
    same: npt.NDArray[np.bool_] = (~a_present & ~b_present) | (a_present & b_present & (a == b))
    return same


def encode_values(column: pa.Array | pa.ChunkedArray, kind: str) -> pa.Array:
    """``ValueProto(<kind>_val=v).SerializeToString()`` for each value; a null (or NaN,
    which Feast takes for a null) gives Feast's empty ``ValueProto``: no bytes."""
    tag = _TAGS[kind]
    numbers, present = _numbers(column, kind)
    if kind in _WIDTH:
        kept = numbers[present]
        fixed = np.empty((len(kept), kept.dtype.itemsize + 1), dtype=np.uint8)
        fixed[:, 0] = tag
        fixed[:, 1:] = kept.view(np.uint8).reshape(len(kept), kept.dtype.itemsize)
        return _with_nulls(_fixed(fixed), present)
    # int32 and int64 go on the wire as the 64-bit two's complement (negatives: 10 bytes)
    wire = numbers.astype(np.int64).view(np.uint64)
    return _with_nulls(_varints(wire[present], tag), present)


def value_texts(column: pa.Array | pa.ChunkedArray, kind: str) -> list[str | None]:
    """What Feast's SQLite store writes to ``value_text``: ``str`` of the value as Python
    reads it back from the ``ValueProto`` (``None`` for a null). One ``str`` per distinct
    value (by bit pattern, so ``-0.0`` stays ``'-0.0'``)."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if kind in _WIDTH:
        dtype = np.float64 if kind == "DOUBLE" else np.float32
        numbers = np.asarray(
            array.cast(pa.from_numpy_dtype(dtype)).fill_null(np.nan).to_numpy(zero_copy_only=False),
            dtype=dtype,
        ).astype(np.float64)
        present = ~np.isnan(numbers)
        bits = numbers.view(np.int64)
        unique, inverse = np.unique(bits, return_inverse=True)
        texts: list[str | None] = [str(v) for v in unique.view(np.float64).tolist()]
    else:
        target = pa.bool_() if kind == "BOOL" else pa.int64()
        typed = array.cast(target)
        present = np.asarray(typed.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
        numbers_int = np.asarray(
            typed.fill_null(False if kind == "BOOL" else 0).to_numpy(zero_copy_only=False)
        ).astype(np.int64)
        unique, inverse = np.unique(numbers_int, return_inverse=True)
        texts = [str(bool(v)) if kind == "BOOL" else str(v) for v in unique.tolist()]
    out = [texts[i] for i in inverse.tolist()]
    if not present.all():
        for i in np.flatnonzero(~present).tolist():
            out[i] = None
    return out


# -- SQLite ----------------------------------------------------------------------------
def _sqlite_path(config: Any) -> Path:
    path = Path(config.online_store.path)
    return path if path.is_absolute() else Path(config.repo_path) / path


def _sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _sqlite_statements(quoted: str, names: Sequence[str], event_ts: int, group: int) -> list[str]:
    """Upserts of one entity's rows, ``group`` features per statement: the entity
    key bound once (``?1``), each feature's value and text after it; the feature names and
    the event time (an int) are literals. Binding 1 + 2F values per entity instead of 6F
    makes SQLite, not Python, the cost (420k rows/s against 290k row by row)."""
    statements = []
    for begin in range(0, len(names), group):
        rows = ", ".join(
            f"(?1, {_sql_text(name)}, ?{2 + 2 * j}, ?{3 + 2 * j}, {int(event_ts)}, null)"
            for j, name in enumerate(names[begin : begin + group])
        )
        statements.append(
            f"insert into {quoted} (entity_key, feature_name, value, value_text, event_ts, "  # noqa: S608 - Feast's table and feature names, quoted
            f"created_ts) values {rows} on conflict(entity_key, feature_name) do update set "
            "value = excluded.value, value_text = excluded.value_text, "
            "event_ts = excluded.event_ts, created_ts = excluded.created_ts"
        )
    return statements


def _sqlite_entities(
    plan: ViewPlan, table: pa.Table, names: Sequence[str], chunk: int, group: int
) -> Iterator[list[list[tuple[Any, ...]]]]:
    """Per chunk of ``chunk`` entities, per statement group: one parameter tuple per entity
    (its key, then value and text of each of the group's features)."""
    kinds = dict(plan.features)
    for begin in range(0, table.num_rows, chunk):
        part = table.slice(begin, chunk)
        keys = encode_entity_keys(plan.join_key, part.column(plan.join_key)).to_pylist()
        groups = []
        for first in range(0, len(names), group):
            columns: list[list[Any]] = [keys]
            for name in names[first : first + group]:
                columns.append(encode_values(part.column(name), kinds[name]).to_pylist())
                columns.append(value_texts(part.column(name), kinds[name]))
            groups.append(list(zip(*columns, strict=True)))
        yield groups


def write_sqlite(
    config: Any,
    view: FeatureView,
    plan: ViewPlan,
    table: pa.Table,
    *,
    chunk: int = SQLITE_CHUNK,
    group: int = SQLITE_GROUP,
) -> int:
    """Upsert ``table``'s rows into Feast's SQLite table of ``view`` in one transaction;
    the number of rows (entity × feature) written."""
    from feast.infra.online_stores.sqlite import _table_id, adapt_datetime_epoch
    from feast.utils import to_naive_utc

    if getattr(config.online_store, "vector_enabled", False):
        raise FeatureError(f"feature view {view.name}: the bulk writer writes no vector store")
    if table.num_rows == 0:
        return 0
    name = _table_id(config.project, view, config.registry.enable_online_feature_view_versioning)
    stamps = table.column(plan.timestamp_field).unique()
    if len(stamps) != 1:
        raise FeatureError(
            f"feature view {view.name}: the bulk writer writes rows of one event time, "
            f"this window holds {len(stamps)}"
        )
    # Feast stores event_ts as its adapter does: whole seconds of the naive UTC time
    event_ts = adapt_datetime_epoch(to_naive_utc(stamps[0].as_py()))
    quoted = '"' + name.replace('"', '""') + '"'
    path = _sqlite_path(config)
    connection = sqlite3.connect(str(path), isolation_level=None)
    try:
        columns = {row[1] for row in connection.execute(f"pragma table_info({quoted})")}
        wanted = {"entity_key", "feature_name", "value", "value_text", "event_ts", "created_ts"}
        if not wanted <= columns:
            raise FeatureError(
                f"{path} has no Feast table {name} with columns {', '.join(sorted(wanted))} "
                "(run feast apply first)"
            )
        if "value_num" in columns:
            raise FeatureError(f"{path}: table {name} has value_num; the bulk writer omits it")
        connection.execute("pragma cache_size = -262144")  # 256 MiB of pages for the B-trees
        # primary-key order: entities by key bytes (read_latest), features by name
        names = sorted(feature for feature, _ in plan.features)
        statements = _sqlite_statements(quoted, names, event_ts, group)
        connection.execute("begin immediate")
        try:
            for groups in _sqlite_entities(plan, table, names, chunk, group):
                for statement, parameters in zip(statements, groups, strict=True):
                    connection.executemany(statement, parameters)
            connection.execute("commit")
        except BaseException:
            connection.execute("rollback")
            raise
    except sqlite3.Error as exc:
        raise FeatureError(f"writing feature view {view.name} to {path} failed: {exc}") from exc
    finally:
        connection.close()
    return int(table.num_rows) * len(plan.features)


# -- Redis -----------------------------------------------------------------------------
def _bulk_string(piece: bytes) -> bytes:
    return b"$" + str(len(piece)).encode() + b"\r\n" + piece + b"\r\n"


def _decimal(array: pa.Array) -> pa.Array:
    """The decimal length of each row of a binary array, as ASCII."""
    return pc.binary_length(array).cast(pa.string()).cast(pa.binary())


def _hset_commands(
    plan: ViewPlan,
    part: pa.Table,
    project: bytes,
    stamp: bytes,
    before: pa.Table | None = None,
    is_new: pa.Array | None = None,
) -> tuple[bytes, int]:
    """RESP of one ``HSET <key> _ts:<view> <stamp> <field> <value> …`` per entity of ``part``,
    fields in the view's feature order, as Feast's ``online_write_batch`` sends them; and
    the number of feature fields in them.

    ``before`` (row for row: the values the store holds for these entities) and ``is_new``
    (entities it does not hold): a field whose encoded value is the one held is left out,
    so the hash ends exactly as if all were written (``_ts`` is always written)."""
    from feast.infra.online_stores.helpers import _mmh3

    keys = _join([encode_entity_keys(plan.join_key, part.column(plan.join_key)), project])
    written = np.zeros(part.num_rows, dtype=np.int64) if before is not None else None
    new = None
    if is_new is not None:
        new = np.asarray(is_new.to_numpy(zero_copy_only=False), dtype=bool)
    fields: list[bytes | pa.Array] = []
    for feature, kind in plan.features:
        values = encode_values(part.column(feature), kind)
        field = [_bulk_string(_mmh3(f"{plan.name}:{feature}")) + b"$", _decimal(values), b"\r\n"]
        if before is None or written is None or new is None:
            fields += [*field, values, b"\r\n"]
            continue
        write = new | ~same_encoding(part.column(feature), before.column(feature), kind)
        fields.append(pc.if_else(pa.array(write), _join([*field, values, b"\r\n"]), b""))
        written += write
    head = b"\r\n" + _bulk_string(HSET_TS.format(plan.name).encode()) + _bulk_string(stamp)
    if written is None:
        count = part.num_rows * len(plan.features)
        arguments: bytes | pa.Array = f"*{2 + 2 * (1 + len(plan.features))}".encode()
    else:
        count = int(written.sum())
        sizes = pa.array((written + 2) * 2).cast(pa.string()).cast(pa.binary())
        arguments = _join([b"*", sizes])
    pieces: list[bytes | pa.Array] = [
        arguments, b"\r\n" + _bulk_string(b"HSET") + b"$", _decimal(keys), b"\r\n", keys, head,
        *fields,
    ]  # fmt: skip
    merged: list[bytes | pa.Array] = []
    for piece in pieces:  # one argument per run of constants
        if isinstance(piece, bytes) and merged and isinstance(merged[-1], bytes):
            merged[-1] = merged[-1] + piece
        else:
            merged.append(piece)
    commands = _join(merged)
    offsets = np.frombuffer(
        commands.buffers()[1], dtype=np.int32 if commands.type == pa.binary() else np.int64
    )
    first, last = int(offsets[commands.offset]), int(offsets[commands.offset + len(commands)])
    return bytes(commands.buffers()[2].slice(first, last - first).to_pybytes()), count


@dataclass(frozen=True, slots=True)
class RedisWrite:
    """What :func:`write_redis` wrote of one view."""

    entities: int
    fields: int  # feature fields sent (``_ts`` not counted)
    held: int  # feature fields left out: the store held their value already


def write_redis(
    config: Any,
    client: Any,
    plan: ViewPlan,
    table: pa.Table,
    *,
    held: pa.Table | None = None,
    batch: int = REDIS_BATCH,
) -> RedisWrite:
    """``HSET`` every entity of ``table`` as Feast's Redis store lays it out, pipelined in
    batches of ``batch`` entities. ``client`` is a redis-py client for Feast's connection.

    ``held``: the rows of this view the store holds (the last run written to it in full,
    one row per entity): the fields whose value it holds already are left out, so every
    hash ends as a write of all its fields would leave it, in a third of the writes at a
    million accounts (two thirds of the values stay the same from one night to the
    next). Entities it lacks get every field."""
    from google.protobuf.timestamp_pb2 import Timestamp  # type: ignore[import-untyped]

    if table.num_rows == 0:
        return RedisWrite(0, 0, 0)
    stamps = table.column(plan.timestamp_field).unique()
    if len(stamps) != 1:
        raise FeatureError(
            f"feature view {plan.name}: the bulk writer writes rows of one event time, "
            f"this window holds {len(stamps)}"
        )
    moment = Timestamp()
    moment.FromDatetime(_aware(stamps[0].as_py()))
    stamp = bytes(moment.SerializeToString())
    project = config.project.encode("utf-8")
    if getattr(config.online_store, "key_ttl_seconds", None):
        raise FeatureError(f"feature view {plan.name}: the bulk writer sets no key TTL")
    positions: pa.Array | None = None
    if held is not None:
        positions = pc.index_in(table.column(plan.join_key), value_set=held.column(plan.join_key))
    counts: list[int] = []

    def batches() -> Iterator[tuple[bytes, int]]:
        for start in range(0, table.num_rows, batch):
            part = table.slice(start, batch)
            before = is_new = None
            if held is not None and positions is not None:
                where = positions.slice(start, batch)
                is_new = pc.is_null(where)
                before = held.take(pc.fill_null(where, 0))
            commands, count = _hset_commands(plan, part, project, stamp, before, is_new)
            counts.append(count)
            yield commands, part.num_rows

    connection = client.connection_pool.get_connection()
    try:
        connection.connect()  # authenticated, database selected, nothing left to read
        _pipeline(connection, batches(), plan.name)
    finally:
        # read off its socket here, so never handed back to redis-py's parser as it is
        connection.disconnect()
        client.connection_pool.release(connection)
    sent = sum(counts)
    return RedisWrite(int(table.num_rows), sent, int(table.num_rows) * len(plan.features) - sent)


def _pipeline(connection: Any, batches: Iterator[tuple[bytes, int]], view: str) -> None:
    """Send each ``(commands, count)`` batch and read its ``count`` replies on a thread of
    its own while this one encodes the next batches (two ahead at most): Redis then
    works all the time instead of waiting for each batch to be encoded."""
    import queue
    import threading

    ready: queue.Queue[tuple[bytes, int] | None] = queue.Queue(maxsize=2)
    failed: list[BaseException] = []

    def send() -> None:
        try:
            while (item := ready.get()) is not None:
                commands, count = item
                connection.send_packed_command([commands], check_health=False)
                _read_replies(connection, count, view)
        except BaseException as exc:  # handed to the encoding thread, which raises it
            failed.append(exc)
            while ready.get() is not None:  # let the encoder finish without blocking
                pass

    sender = threading.Thread(target=send, name=f"redis-{view}", daemon=True)
    sender.start()
    try:
        for item in batches:
            if failed:
                break
            ready.put(item)
    finally:
        ready.put(None)
        sender.join()
    if failed:
        raise failed[0]


def _read_replies(connection: Any, count: int, view: str) -> None:
    """Read the replies to ``count`` HSETs straight off the connection's socket.

    Each is one line, ``:<fields added>`` or an error (``-…``): counting lines replaces
    redis-py's parse of each reply in Python (a third of the writer's time without
    hiredis, 2.5 M replies at a million accounts). Failures are redis-py's exceptions
    (ResponseError for a refusal, ConnectionError otherwise), as its own client raises
    them, so the caller names the store (streams.features.redis_store.materializing).
    """
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import ResponseError

    if count == 0:
        return
    sock = connection._sock  # redis-py keeps the connected socket here
    pending = b""
    seen = 0
    while seen < count:
        try:
            chunk = sock.recv(1 << 20)
        except OSError as exc:
            raise RedisConnectionError(
                f"reading the replies to HSETs of view {view}: {exc}"
            ) from exc
        if not chunk:
            raise RedisConnectionError(f"Redis closed the connection during HSETs of view {view}")
        data = pending + chunk
        end = data.rfind(b"\r\n") + 2
        lines, pending = data[:end], data[end:]
        if lines.startswith(b"-") or b"\n-" in lines:
            start = 0 if lines.startswith(b"-") else lines.index(b"\n-") + 1
            error = lines[start : lines.index(b"\r\n", start)].decode("utf-8", "replace")
            raise ResponseError(f"an HSET of view {view} was refused: {error[1:]}")
        seen += lines.count(b"\r\n")
    if seen != count or pending:
        raise RedisConnectionError(
            f"Redis sent {seen} replies to {count} HSETs of view {view}: the protocol is lost"
        )


# -- the nightly's entry point ---------------------------------------------------------
def materialize_views(
    store: FeatureStore,
    views: Sequence[str],
    start: datetime,
    end: datetime,
    *,
    redis: Any = None,
    held: Mapping[str, Path] | None = None,
) -> dict[str, int]:
    """Write ``views``' rows in ``[start, end]`` to ``store``'s online store (SQLite or
    Redis) and record the interval in its registry; entities written per view.

    ``redis``: the redis-py client to write with (default: Feast's own, from its
    connection string); only a single Redis server, not a cluster or sentinel.
    ``held`` (Redis): per view, the Parquet file of the rows the store holds for it (the
    last run written in full: streams.features.redis_store.held_runs); only the values
    that differ are sent.
    """
    config = store.config
    kind = config.online_store.type
    if kind not in ("sqlite", "redis"):
        raise FeatureError(f"the bulk writer writes SQLite and Redis online stores, not {kind!r}")
    if config.entity_key_serialization_version != _ENTITY_KEY_VERSION:
        raise FeatureError(
            f"the bulk writer encodes entity keys as Feast's version {_ENTITY_KEY_VERSION}, "
            f"this store is configured for {config.entity_key_serialization_version}"
        )
    if config.registry.enable_online_feature_view_versioning:
        raise FeatureError("the bulk writer writes unversioned online feature views only")
    feature_views = [store.get_feature_view(name) for name in views]
    plans = [view_plan(view, Path(store.repo_path)) for view in feature_views]
    client = None
    if kind == "redis":
        if str(getattr(config.online_store.redis_type, "value", "redis")) != "redis":
            raise FeatureError(
                f"the bulk writer writes one Redis server, not {config.online_store.redis_type}"
            )
        if not config.online_store.skip_dedup:
            # Feast then keeps a stored row whose event time is not older; this writes all
            raise FeatureError(
                "the bulk writer writes a Redis store configured with skip_dedup (the last "
                "write wins), as streams.features.store configures it"
            )
        client = redis if redis is not None else _feast_redis(config)
    written: dict[str, int] = {}
    for view, plan in zip(feature_views, plans, strict=True):
        # one view in memory at a time (a million accounts: ~0.5 GB of Arrow)
        table = read_latest(plan, start, end, ordered=client is None)
        if client is not None:
            source = (held or {}).get(view.name)
            before = _held_rows(plan, source) if source is not None else None
            result = write_redis(config, client, plan, table, held=before)
            written[view.name] = result.entities
            log.info(
                "%s: %d entities, %d feature fields sent, %d held already%s",
                view.name, result.entities, result.fields, result.held,
                f" (from {source})" if before is not None else "",
            )  # fmt: skip
            del before
        else:
            write_sqlite(config, view, plan, table)
            written[view.name] = table.num_rows
        del table
        store.registry.apply_materialization(view, store.project, _aware(start), _aware(end))
    return written


def _held_rows(plan: ViewPlan, path: Path) -> pa.Table | None:
    """The rows of ``path`` (a run's kept export of the view) as the store holds them: the
    join key and the features, one row per entity; None (write every field) when the file
    does not have that shape."""
    import pyarrow.parquet as pq

    columns = [plan.join_key, *(feature for feature, _ in plan.features)]
    try:
        rows = pq.read_table(path, columns=columns)
    except (OSError, pa.ArrowInvalid, KeyError) as exc:
        log.warning(
            "%s: cannot read what the store holds from %s (%s): writing all", plan.name, path, exc
        )
        return None
    keys = rows.column(plan.join_key)
    if keys.null_count or pc.count_distinct(keys).as_py() != rows.num_rows:
        log.warning("%s: %s has more than one row per entity: writing every field", plan.name, path)
        return None
    return rows


def _feast_redis(config: Any) -> Any:
    """The redis-py client Feast's own Redis store would write with."""
    from feast.infra.online_stores.redis import RedisOnlineStore

    return RedisOnlineStore()._get_client(config.online_store)
