"""The bulk online-store writer against Feast's own serialisers and writers, byte for byte."""

from __future__ import annotations

import math
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from streams.errors import FeatureError
from streams.features import bulk_write

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]

DAY = datetime(2024, 6, 2, tzinfo=UTC)
IDS = ["acc_000000", "acc_000001", "", "café-ü", "x" * 300, "acc_9"]
DOUBLES = [0.0, -0.0, 1.5, -2.25, 1e-300, 5e-324, 1.7976931348623157e308, 0.1, 123456.789, 3.0]
INT64S = [0, 1, 127, 128, 300, 2**31, 2**63 - 1, -1, -(2**63), 16384]
INT32S = [0, 1, -1, 2**31 - 1, -(2**31), 200, 127, 128, 5, 6]
FLOATS = [0.1, -3.5, 0.0, 1e-30, 2.5, 7.0, -0.0, 1e30, 3.25, 100.0]
BOOLS = [True, False, True, True, False, False, True, False, True, True]


def _feast_value(kind: str, value: Any) -> bytes:
    from feast.type_map import python_values_to_proto_values
    from feast.value_type import ValueType

    [proto] = python_values_to_proto_values(
        pa.array([value]).to_numpy(zero_copy_only=False), ValueType[kind]
    )
    return bytes(proto.SerializeToString())


def test_entity_keys_are_feasts_serialisation() -> None:
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    ours = bulk_write.encode_entity_keys("account_id", pa.array(IDS)).to_pylist()
    theirs = [
        serialize_entity_key(
            EntityKey(join_keys=["account_id"], entity_values=[Value(string_val=i)]),
            entity_key_serialization_version=3,
        )
        for i in IDS
    ]
    assert ours == theirs
    # a slice (non-zero Arrow offset) encodes the same rows
    assert (
        bulk_write.encode_entity_keys("account_id", pa.array(IDS).slice(2, 3)).to_pylist()
        == (theirs[2:5])
    )


@pytest.mark.parametrize(
    ("kind", "values"),
    [("DOUBLE", DOUBLES), ("INT64", INT64S), ("INT32", INT32S), ("FLOAT", FLOATS), ("BOOL", BOOLS)],
)
def test_values_are_feasts_value_protos(kind: str, values: list[Any]) -> None:
    arrow_type = {
        "DOUBLE": pa.float64(),
        "INT64": pa.int64(),
        "INT32": pa.int32(),
        "FLOAT": pa.float32(),
        "BOOL": pa.bool_(),
    }[kind]
    column = pa.array(values, type=arrow_type)
    ours = bulk_write.encode_values(column, kind).to_pylist()
    assert ours == [_feast_value(kind, v) for v in column.to_pylist()]
    assert bulk_write.encode_values(column.slice(3, 4), kind).to_pylist() == ours[3:7]


def test_nan_and_null_doubles_are_feasts_empty_value() -> None:
    column = pa.array([1.0, None, math.nan, math.inf, -math.inf], type=pa.float64())
    ours = bulk_write.encode_values(column, "DOUBLE").to_pylist()
    assert ours[1] == ours[2] == b"" == _feast_value("DOUBLE", math.nan)
    assert ours[3] == _feast_value("DOUBLE", math.inf)
    assert ours[4] == _feast_value("DOUBLE", -math.inf)
    assert bulk_write.value_texts(column, "DOUBLE") == ["1.0", None, None, "inf", "-inf"]


@pytest.mark.parametrize(
    ("kind", "values", "arrow_type"),
    [
        ("DOUBLE", DOUBLES, pa.float64()),
        ("INT64", INT64S, pa.int64()),
        ("FLOAT", FLOATS, pa.float32()),
        ("BOOL", BOOLS, pa.bool_()),
    ],
)
def test_value_texts_are_feasts(kind: str, values: list[Any], arrow_type: pa.DataType) -> None:
    from feast.infra.online_stores.helpers import extract_text_and_num
    from feast.protos.feast.types.Value_pb2 import Value

    column = pa.array(values, type=arrow_type)
    expected = []
    for blob in bulk_write.encode_values(column, kind).to_pylist():
        proto = Value()
        proto.ParseFromString(blob)
        expected.append(extract_text_and_num(proto, False)[0])
    assert bulk_write.value_texts(column, kind) == expected


def test_an_int64_feature_holding_fractions_is_refused() -> None:
    with pytest.raises(FeatureError, match="INT64"):
        bulk_write.encode_values(pa.array([1.5, 2.0]), "INT64")


# -- a Feast repo in a temporary folder ------------------------------------------------
def _objects(root: Path, path: str = "data/things") -> tuple[Any, Any]:
    from feast import Entity, FeatureView, Field, FileSource, ValueType
    from feast.types import Float64, Int64, String

    thing = Entity(name="thing", join_keys=["thing_id"], value_type=ValueType.STRING)
    source = FileSource(name="things", path=path, timestamp_field="event_timestamp")
    view = FeatureView(
        name="thing",
        entities=[thing],
        ttl=timedelta(days=2),
        schema=[
            Field(name="thing_id", dtype=String),  # as Feast's apply infers it from the source
            Field(name="count_1d", dtype=Int64),
            Field(name="amount", dtype=Float64),
            Field(name="ratio", dtype=Float64),
        ],
        source=source,
        online=True,
    )
    return thing, view


def _config(root: Path, online: dict[str, Any]) -> Any:
    from feast.repo_config import RepoConfig

    return RepoConfig(
        project="proj",
        provider="local",
        registry={"path": str(root / "registry.db")},
        online_store=online,
        offline_store={"type": "file"},
        entity_key_serialization_version=3,
        repo_path=root,
    )


def _rows(n: int, day: datetime, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    amounts = rng.gamma(2.0, 50.0, n).round(2)
    amounts[::7] = 0.0
    ratio = rng.random(n)
    ratio[::5] = np.nan  # Feast writes NaN as an empty value
    return pa.table(
        {
            "thing_id": pa.array([f"t_{i:05d}" for i in rng.permutation(n)]),
            "event_timestamp": pa.array([day] * n, type=pa.timestamp("us", tz="UTC")),
            "count_1d": pa.array(rng.integers(-3, 400, n), type=pa.int64()),
            "amount": pa.array(amounts),
            "ratio": pa.array(ratio),
        }
    )


def _table_rows(path: Path, table: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as connection:
        return connection.execute(
            f'select * from "{table}" order by entity_key, feature_name'
        ).fetchall()


def _feast_sqlite(root: Path, view: Any, entity: Any, tables: list[pa.Table]) -> Path:
    from feast.infra.online_stores.sqlite import SqliteOnlineStore
    from feast.utils import _convert_arrow_to_proto

    config = _config(root, {"type": "sqlite", "path": str(root / "online.db")})
    store = SqliteOnlineStore()
    store.update(config, [], [view], [], [entity], partial=False)
    for table in tables:
        store.online_write_batch(
            config, view, _convert_arrow_to_proto(table, view, _join_keys(view)), None
        )
    return root / "online.db"


def _our_sqlite(
    root: Path, view: Any, entity: Any, tables: list[pa.Table], chunk: int, group: int = 400
) -> Path:
    from feast.infra.online_stores.sqlite import SqliteOnlineStore

    config = _config(root, {"type": "sqlite", "path": str(root / "online.db")})
    SqliteOnlineStore().update(config, [], [view], [], [entity], partial=False)
    plan = bulk_write.view_plan(view, root)
    for table in tables:
        written = bulk_write.write_sqlite(
            config, view, plan, bulk_write.latest_per_entity(plan, table), chunk=chunk, group=group
        )
        assert written == table.num_rows * 3
    return root / "online.db"


def test_sqlite_rows_are_what_feasts_online_write_batch_writes(tmp_path: Path) -> None:
    entity, view = _objects(tmp_path)
    first = _rows(500, DAY, seed=1)
    # the next night: other values for the same entities, some entities new
    second = _rows(700, DAY + timedelta(days=1), seed=2)
    feast_db = _feast_sqlite(tmp_path / "feast", view, entity, [first, second])
    ours_db = _our_sqlite(tmp_path / "ours", view, entity, [first, second], chunk=64)
    # features split over two statements per entity (views wider than SQLITE_GROUP)
    split_db = _our_sqlite(tmp_path / "split", view, entity, [first, second], chunk=50, group=2)
    theirs = _table_rows(feast_db, "proj_thing")
    assert len(theirs) == 700 * 3
    assert _table_rows(ours_db, "proj_thing") == theirs
    assert _table_rows(split_db, "proj_thing") == theirs


def test_feast_reads_what_the_bulk_writer_wrote(tmp_path: Path) -> None:
    from feast.infra.online_stores.sqlite import SqliteOnlineStore
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    entity, view = _objects(tmp_path)
    rows = _rows(50, DAY, seed=3)
    _our_sqlite(tmp_path, view, entity, [rows], chunk=7)
    config = _config(tmp_path, {"type": "sqlite", "path": str(tmp_path / "online.db")})
    ids = rows.column("thing_id").to_pylist()
    read = SqliteOnlineStore().online_read(
        config,
        view,
        [EntityKey(join_keys=["thing_id"], entity_values=[Value(string_val=i)]) for i in ids],
    )
    for i, (stamp, values) in enumerate(read):
        assert stamp == DAY and values is not None
        assert values["count_1d"].int64_val == rows.column("count_1d")[i].as_py()
        assert values["amount"].double_val == rows.column("amount")[i].as_py()
        ratio = rows.column("ratio")[i].as_py()
        assert (
            values["ratio"].WhichOneof("val") is None
            if math.isnan(ratio)
            else (values["ratio"].double_val == ratio)
        )


def test_read_latest_keeps_the_newest_row_per_entity_inside_the_window(tmp_path: Path) -> None:
    _, view = _objects(tmp_path)
    folder = tmp_path / "data" / "things"
    folder.mkdir(parents=True)
    before = _rows(20, DAY - timedelta(days=1), seed=4)
    on_day = _rows(20, DAY, seed=5)
    later = _rows(20, DAY + timedelta(days=1), seed=6)
    for name, table in (("a", before), ("b", on_day), ("c", later)):
        pq.write_table(table, folder / f"{name}.parquet")
    # a second row for two entities at the same time, written later: the later row wins
    again = on_day.slice(0, 2).set_column(2, "count_1d", pa.array([9_999, 9_998], pa.int64()))
    pq.write_table(again, folder / "d.parquet")
    plan = bulk_write.view_plan(view, tmp_path)
    got = bulk_write.read_latest(plan, DAY - timedelta(hours=12), DAY + timedelta(hours=12))
    assert got.num_rows == 20
    assert set(got.column("event_timestamp").to_pylist()) == {DAY}
    by_id = dict(
        zip(got.column("thing_id").to_pylist(), got.column("count_1d").to_pylist(), strict=True)
    )
    assert by_id[on_day.column("thing_id")[0].as_py()] == 9_999
    assert by_id[on_day.column("thing_id")[1].as_py()] == 9_998
    keys = bulk_write.encode_entity_keys("thing_id", got.column("thing_id")).to_pylist()
    assert keys == sorted(keys)  # primary-key order
    # both ends of the window are inclusive, as in Feast's file offline store
    edge = bulk_write.read_latest(plan, DAY, DAY)
    assert edge.num_rows == 20


def test_views_the_bulk_writer_cannot_write_are_named(tmp_path: Path) -> None:
    from feast import FeatureView, Field
    from feast.types import String

    entity, view = _objects(tmp_path)
    odd = FeatureView(
        name="odd",
        entities=[entity],
        schema=[Field(name="thing_id", dtype=String), Field(name="label", dtype=String)],
        source=view.batch_source,
    )
    with pytest.raises(FeatureError, match="odd: feature label is STRING"):
        bulk_write.view_plan(odd, tmp_path)
    keyless = FeatureView(name="keyless", entities=[entity], schema=[], source=view.batch_source)
    with pytest.raises(FeatureError, match=r"keyless: .* one string join key"):
        bulk_write.view_plan(keyless, tmp_path)
    with pytest.raises(FeatureError, match="no source data"):
        bulk_write.read_latest(bulk_write.view_plan(view, tmp_path), DAY, DAY)


# -- Redis: the commands Feast's own writer sends ---------------------------------------
class _RecordingPipeline:
    def __init__(self, calls: list[tuple[bytes, dict[Any, Any]]]) -> None:
        self.calls = calls

    def __enter__(self) -> _RecordingPipeline:
        return self

    def __exit__(self, *_: object) -> None:
        return None

    def hset(self, name: bytes, mapping: dict[Any, Any]) -> None:
        self.calls.append((name, mapping))

    def execute(self) -> list[Any]:
        return [1] * len(self.calls)


class _RecordingClient:
    def __init__(self) -> None:
        self.calls: list[tuple[bytes, dict[Any, Any]]] = []

    def pipeline(self, transaction: bool = True) -> _RecordingPipeline:
        return _RecordingPipeline(self.calls)


def test_redis_commands_are_the_hsets_feast_sends(tmp_path: Path) -> None:
    from feast.infra.online_stores.redis import RedisOnlineStore
    from feast.utils import _convert_arrow_to_proto
    from redis.connection import Connection

    _, view = _objects(tmp_path)
    config = _config(
        tmp_path, {"type": "redis", "connection_string": "127.0.0.1:1", "skip_dedup": True}
    )
    rows = _rows(40, DAY, seed=7)
    recording = _RecordingClient()
    feast_store = RedisOnlineStore()
    feast_store._client = recording
    feast_store.online_write_batch(
        config, view, _convert_arrow_to_proto(rows, view, _join_keys(view)), None
    )
    packer = Connection()
    expected = {
        name: b"".join(
            packer.pack_command("HSET", name, *[x for pair in mapping.items() for x in pair])
        )
        for name, mapping in recording.calls
    }
    plan = bulk_write.view_plan(view, tmp_path)
    ours, fields = bulk_write._hset_commands(plan, rows, b"proj", _timestamp(DAY))
    assert ours == b"".join(expected[name] for name, _ in recording.calls)
    assert fields == 40 * len(plan.features)


def _apply_resp(store: dict[bytes, dict[bytes, bytes]], commands: bytes) -> int:
    """Apply RESP-encoded HSETs to a dict of hashes, as Redis would; how many were read."""
    at, seen = 0, 0
    while at < len(commands):
        assert commands[at : at + 1] == b"*"
        end = commands.index(b"\r\n", at)
        count, at = int(commands[at + 1 : end]), end + 2
        parts = []
        for _ in range(count):
            end = commands.index(b"\r\n", at)
            size = int(commands[at + 1 : end])
            parts.append(commands[end + 2 : end + 2 + size])
            at = end + 2 + size + 2
        assert parts[0] == b"HSET" and count % 2 == 0
        store.setdefault(parts[1], {}).update(zip(parts[2::2], parts[3::2], strict=True))
        seen += 1
    return seen


def test_a_write_of_changed_fields_leaves_the_hashes_a_full_write_leaves(tmp_path: Path) -> None:
    """Night 2 over night 1: sending only the values that differ from what the store holds
    ends with every hash byte for byte as sending all of them; a new entity gets all."""
    _, view = _objects(tmp_path)
    plan = bulk_write.view_plan(view, tmp_path)
    night1 = _rows(60, DAY, seed=3)
    night2 = _rows(60, DAY + timedelta(days=1), seed=3)  # same entities, same order
    # a third of the counts and amounts change, a few ratios turn NaN, one entity is new
    count = night2.column("count_1d").to_numpy().copy()
    count[::3] += 1
    ratio = night2.column("ratio").to_numpy().copy()
    ratio[1::9] = np.nan
    ids = night2.column("thing_id").to_pylist()
    ids[4] = "t_new"
    night2 = night2.set_column(0, "thing_id", pa.array(ids))
    night2 = night2.set_column(2, "count_1d", pa.array(count))
    night2 = night2.set_column(4, "ratio", pa.array(ratio))

    full: dict[bytes, dict[bytes, bytes]] = {}
    first, _ = bulk_write._hset_commands(plan, night1, b"proj", _timestamp(DAY))
    _apply_resp(full, first)
    changed = {key: dict(fields) for key, fields in full.items()}
    stamp = _timestamp(DAY + timedelta(days=1))
    everything, sent_all = bulk_write._hset_commands(plan, night2, b"proj", stamp)
    _apply_resp(full, everything)

    held = night1.select(["thing_id", *(f for f, _ in plan.features)])
    where = pc.index_in(night2.column("thing_id"), value_set=held.column("thing_id"))
    commands, sent = bulk_write._hset_commands(
        plan, night2, b"proj", stamp, held.take(pc.fill_null(where, 0)), pc.is_null(where)
    )
    assert _apply_resp(changed, commands) == 60  # every entity: its _ts at least
    assert changed == full
    assert sent_all == 60 * len(plan.features) and 0 < sent < sent_all / 2


def _timestamp(moment: datetime) -> bytes:
    from google.protobuf.timestamp_pb2 import Timestamp

    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return bytes(stamp.SerializeToString())


def _join_keys(view: Any) -> dict[str, Any]:
    # as Feast's materialisation builds them
    return {column.name: column.dtype.to_value_type() for column in view.entity_columns}


def test_rows_already_in_key_order_are_not_copied(tmp_path: Path) -> None:
    _, view = _objects(tmp_path)
    plan = bulk_write.view_plan(view, tmp_path)
    shuffled = _rows(30, DAY, seed=8)
    ordered = bulk_write.latest_per_entity(plan, shuffled)
    assert ordered.column("thing_id").to_pylist() == sorted(shuffled.column("thing_id").to_pylist())
    assert bulk_write.latest_per_entity(plan, ordered) is ordered  # already sorted: as is
    # Redis needs no order: the rows stay as read
    assert bulk_write.latest_per_entity(plan, shuffled, ordered=False) is shuffled


class _FakeSocket:
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    def recv(self, size: int) -> bytes:
        return self.chunks.pop(0) if self.chunks else b""


class _FakeConnection:
    """A redis-py connection as the writer uses it: packed commands out, raw replies in."""

    def __init__(self, replies: list[bytes]) -> None:
        self._sock = _FakeSocket(replies)
        self.sent: list[bytes] = []

    def send_packed_command(self, command: list[bytes], check_health: bool = True) -> None:
        self.sent.extend(command)


def test_replies_are_counted_across_reads_and_batches() -> None:
    connection = _FakeConnection([b":3\r\n:3", b"\r\n:0\r\n", b":3\r\n:3\r\n"])
    batches = iter([(b"first", 3), (b"second", 2)])
    bulk_write._pipeline(connection, batches, "thing")
    assert connection.sent == [b"first", b"second"]
    assert connection._sock.chunks == []


def test_an_error_reply_or_a_closed_connection_is_redis_pys_error() -> None:
    # redis-py's own exceptions, as its client raises them: the nightly's wrapper
    # (redis_store.materializing) names the store and its URL around them
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import ResponseError

    refused = _FakeConnection([b":3\r\n-OOM command not allowed\r\n"])
    with pytest.raises(ResponseError, match="HSET of view thing was refused: OOM command"):
        bulk_write._pipeline(refused, iter([(b"x", 2), (b"y", 1)]), "thing")
    closed = _FakeConnection([b":3\r\n"])
    with pytest.raises(RedisConnectionError, match="closed the connection during HSETs of view"):
        bulk_write._pipeline(closed, iter([(b"x", 2)]), "thing")


@pytest.mark.parametrize("kind", ["DOUBLE", "FLOAT", "INT64", "INT32", "BOOL"])
def test_same_encoding_is_equal_encoded_bytes(kind: str) -> None:
    """Deciding on the values says what comparing the encoded bytes would: -0.0 is not 0.0,
    NaN and null are both no value, 1e-40 survives float32 as a denormal."""
    if kind in ("DOUBLE", "FLOAT"):
        pool: list[Any] = [0.0, -0.0, 1.5, float("nan"), None, 1e-40, 3.0]
    elif kind == "BOOL":
        pool = [True, False, None]
    else:
        pool = [0, 1, -1, 2**31 - 1, None, 127, 128]
    pairs = [(a, b) for a in pool for b in pool]
    now = pa.array([a for a, _ in pairs])
    held = pa.array([b for _, b in pairs])
    expected = [
        x == y
        for x, y in zip(
            bulk_write.encode_values(now, kind).to_pylist(),
            bulk_write.encode_values(held, kind).to_pylist(),
            strict=True,
        )
    ]
    assert bulk_write.same_encoding(now, held, kind).tolist() == expected
    assert not all(expected) and any(expected)
