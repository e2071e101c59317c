"""The Redis online store's reader on rows Feast's own writer put in an in-memory Redis:
Feast's key and field layout, numpy decoding of ValueProto bytes, the materialisation
marks, Redis being down, and the metrics saying so. No network (the real redis-server is
in tests/integration/test_redis_store.py)."""

from __future__ import annotations

import logging
import re
import struct
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from streams.errors import FeatureError, FeatureStoreDown
from streams.features.redis_store import (
    MARK_PREFIX,
    RedisFeatures,
    _entity_id,
    _glob_escape,
    decode_values,
    entity_key_head,
    feature_fields,
    materializing,
    read_mark,
    read_run_views,
    read_view,
)
from streams.features.runs import NightlyRun
from streams.settings import Settings
from tests.planted import PLANTED

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

DAY = date(2024, 3, 1)


def _bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value


def _glob(pattern: bytes) -> re.Pattern[bytes]:
    """Redis's MATCH glob (``*``, ``?``, backslash escapes) as a regex over bytes."""
    out, i = b"", 0
    while i < len(pattern):
        c = pattern[i : i + 1]
        if c == b"\\":
            out += re.escape(pattern[i + 1 : i + 2])
            i += 2
            continue
        out += b".*" if c == b"*" else b"." if c == b"?" else re.escape(c)
        i += 1
    return re.compile(out, re.DOTALL)


class FakeRedis:
    """The commands Feast's writer and our reader send, on dicts; ``down`` refuses all."""

    def __init__(self, auto_rewrite: str = "0") -> None:
        self.data: dict[bytes, dict[bytes, bytes]] = {}
        self.down = False
        self.auto_rewrite = auto_rewrite  # auto-aof-rewrite-percentage
        self.rewrites = 0

    def info(self, section: str) -> dict[str, Any]:
        self._check()
        assert section == "persistence"
        return {"aof_enabled": 1}

    def config_get(self, name: str) -> dict[str, str]:
        self._check()
        assert name == "auto-aof-rewrite-percentage"
        return {name: self.auto_rewrite}

    def bgrewriteaof(self) -> bool:
        self._check()
        self.rewrites += 1
        return True

    def _check(self) -> None:
        if self.down:
            raise redis.exceptions.ConnectionError(
                "Error 111 connecting to 127.0.0.1:1. Connection refused."
            )

    def pipeline(self, transaction: bool = True) -> FakePipeline:
        return FakePipeline(self)

    def scan_iter(self, match: bytes, count: int | None = None) -> Iterator[bytes]:
        self._check()
        rx = _glob(match)
        yield from (k for k in list(self.data) if rx.fullmatch(k))

    def hmget(self, key: bytes, fields: list[bytes | str]) -> list[bytes | None]:
        self._check()
        held = self.data.get(_bytes(key), {})
        return [held.get(_bytes(f)) for f in fields]

    def hset(self, key: bytes | str, mapping: dict[Any, Any]) -> int:
        self._check()
        self.data.setdefault(_bytes(key), {}).update(
            {_bytes(k): _bytes(str(v) if isinstance(v, int) else v) for k, v in mapping.items()}
        )
        return len(mapping)

    def hgetall(self, key: str) -> dict[bytes, bytes]:
        self._check()
        return dict(self.data.get(_bytes(key), {}))

    def delete(self, *keys: bytes | str) -> int:
        self._check()
        return sum(self.data.pop(_bytes(k), None) is not None for k in keys)

    def ping(self) -> bool:
        self._check()
        return True

    def close(self) -> None:
        return None


class FakePipeline:
    def __init__(self, client: FakeRedis) -> None:
        self.client = client
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def __enter__(self) -> FakePipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: self.calls.append((name, args, kwargs))

    def execute(self) -> list[Any]:
        calls, self.calls = self.calls, []
        return [getattr(self.client, name)(*a, **k) for name, a, k in calls]


def _settings(tmp_path: Path, **extra: Any) -> Settings:
    return Settings(home=tmp_path, online_store="redis", **extra)


def _feast_write(
    settings: Settings, client: FakeRedis, view: str, rows: dict[str, list[float]], day: date
) -> None:
    """``rows`` (id → values in the view's Feast feature order) written by Feast itself."""
    from feast.infra.online_stores.redis import RedisOnlineStore
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value
    from feast.types import Int64

    from streams.features.store import load_definitions, repo_config

    fv = load_definitions(settings.feature_repo_dir).feature_view(view)
    join_key = f"{view}_id"  # the entity's join key (set on the view only by feast apply)
    stamp = datetime(day.year, day.month, day.day, tzinfo=UTC)
    data = []
    for entity, values in rows.items():
        protos = {
            f.name: Value(int64_val=int(v)) if f.dtype == Int64 else Value(double_val=v)
            for f, v in zip(fv.features, values, strict=True)
        }
        key = EntityKey(join_keys=[join_key], entity_values=[Value(string_val=entity)])
        data.append((key, protos, stamp, None))
    store = RedisOnlineStore()
    store._client = client
    store.online_write_batch(repo_config(settings), fv, data, None)


def _feast_features(settings: Settings, view: str) -> list[str]:
    from streams.features.store import load_definitions

    return [f.name for f in load_definitions(settings.feature_repo_dir).feature_view(view).features]


def _int_features(settings: Settings, view: str) -> set[str]:
    from feast.types import Int64

    from streams.features.store import load_definitions

    fv = load_definitions(settings.feature_repo_dir).feature_view(view)
    return {f.name for f in fv.features if f.dtype == Int64}


def _layout(settings: Settings) -> Any:
    from streams.features.registry import load_service_layout

    return load_service_layout(settings, "fraud_v1")


def _run(run_id: str = "run-1", day: date = DAY) -> NightlyRun:
    now = datetime.now(UTC)
    return NightlyRun(run_id, day, "fraud_v1", "success", now, now)


# -- decoding ------------------------------------------------------------------------
def test_decode_values_matches_protobuf_for_every_numeric_kind_and_null() -> None:
    from feast.protos.feast.types.Value_pb2 import Value

    values = [
        Value(double_val=1.5), Value(double_val=-0.0), Value(double_val=123456.789),
        Value(float_val=2.25), Value(int64_val=0), Value(int64_val=-1),
        Value(int64_val=2**40 + 3), Value(int64_val=-(2**62)), Value(int32_val=-5),
        Value(int32_val=300), Value(bool_val=True), Value(bool_val=False), Value(),
    ]  # fmt: skip
    raw: list[bytes | None] = [v.SerializeToString() for v in values] + [None]
    expected = [
        np.float32(getattr(v, v.WhichOneof("val"))) if v.WhichOneof("val") else np.nan
        for v in values
    ] + [np.nan]
    got = decode_values(raw)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, np.array(expected, dtype=np.float32))


def test_decode_values_refuses_what_is_not_a_number() -> None:
    from feast.protos.feast.types.Value_pb2 import Value

    raw = [Value(double_val=1.0).SerializeToString(), Value(string_val="x").SerializeToString()]
    with pytest.raises(FeatureError, match=r"account\.amount_sum.*not a number.*0x12"):
        decode_values(raw, "account.amount_sum")


def test_entity_keys_parse_back_as_feast_serialises_them() -> None:
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    def key(join_key: str, entity: str, project: bytes = b"streamscore") -> bytes:
        ek = EntityKey(join_keys=[join_key], entity_values=[Value(string_val=entity)])
        return serialize_entity_key(ek, entity_key_serialization_version=3) + project

    head = entity_key_head("account_id")
    for entity in ("a1", "konto-ü-42", "x" * 300, "*?[]\\"):
        assert _entity_id(key("account_id", entity), head, b"streamscore") == entity
    assert _entity_id(key("account_id", "a1", b"mystreamscore"), head, b"streamscore") is None
    assert _entity_id(key("card_id", "a1"), head, b"streamscore") is None
    assert _glob_escape(b"a*b?[c]\\") == b"a\\*b\\?\\[c\\]\\\\"
    # A 42-byte join key's length is b"*": it must match itself, not every key.
    long_key = "k" * 42
    assert struct.pack("<I", 42)[:1] == b"*"
    pattern = _glob(_glob_escape(entity_key_head(long_key)) + b"*streamscore")
    assert pattern.fullmatch(key(long_key, "a1"))
    assert not pattern.fullmatch(key("account_id", "a1"))


# -- reading what Feast wrote ------------------------------------------------------
def test_read_view_returns_exactly_the_rows_feast_wrote_for_that_date(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    client = FakeRedis()
    names = _feast_features(settings, "account")
    ints = _int_features(settings, "account")
    assert ints and len(ints) < len(names)  # both kinds of value are read back
    today = {
        f"a{i}": [float(i * 10 + j) + (0 if n in ints else 0.25) for j, n in enumerate(names)]
        for i in range(5)
    }
    _feast_write(settings, client, "account", today, DAY)
    _feast_write(settings, client, "account", {"old": [7.0] * len(names)}, DAY - timedelta(1))
    _feast_write(
        settings, client, "card", {"a0": [1.0] * len(_feast_features(settings, "card"))}, DAY
    )
    view = next(v for v in _layout(settings).views if v.name == "account")

    rows = read_view(client, "account", view.join_key, view.columns, DAY, batch=2)  # type: ignore[arg-type]
    assert sorted(rows.ids) == sorted(today) and rows.other_dates == 1
    expected = np.array(
        [[today[i][names.index(c)] for c in view.columns] for i in rows.ids], dtype=np.float32
    )
    assert rows.values.dtype == np.float32 and np.array_equal(rows.values, expected)
    # Feast's own field names: the decoded columns are the ones Feast hashed.
    some = next(
        k for k in client.data if _entity_id(k, entity_key_head("account_id"), b"streamscore")
    )
    assert set(feature_fields("account", names)) <= set(client.data[some])


def _materialise_all(
    settings: Settings, client: FakeRedis, run: NightlyRun, per_view: int = 3
) -> dict[str, int]:
    layout = _layout(settings)
    rows = {view.name: per_view for view in layout.views}
    with materializing(settings, run.run_id, run.nightly_date, rows, client=client):  # type: ignore[arg-type]
        for view in layout.views:
            width = len(_feast_features(settings, view.name))
            ids = {f"{view.name[0]}{i}": [float(i)] * width for i in range(per_view)}
            _feast_write(settings, client, view.name, ids, run.nightly_date)
    return rows


def test_marks_gate_what_a_run_may_read(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    client = FakeRedis()
    layout = _layout(settings)
    run = _run()
    _materialise_all(settings, client, run)
    mark = read_mark(client, "account")  # type: ignore[arg-type]
    assert mark is not None and (mark.run_id, mark.nightly_date, mark.rows) == ("run-1", DAY, 3)
    views = read_run_views(client, layout, run)  # type: ignore[arg-type]
    assert [len(v.ids) for v in views] == [3, 3, 3]

    with pytest.raises(
        FeatureError, match=r"holds view account for 2024-03-01 .*not for 2024-03-02"
    ):
        read_run_views(client, layout, _run("run-2", DAY + timedelta(1)))  # type: ignore[arg-type]
    victim = next(k for k in client.data if k.startswith(entity_key_head("account_id")))
    del client.data[victim]
    with pytest.raises(FeatureError, match=r"holds 2 rows of view account .* materialised 3"):
        read_run_views(client, layout, run)  # type: ignore[arg-type]
    _materialise_all(settings, client, run)  # whole again; then card's mark goes
    assert len(read_run_views(client, layout, run)) == 3  # type: ignore[arg-type]
    client.delete(MARK_PREFIX + "card")
    with pytest.raises(FeatureError, match="no finished materialisation of view card"):
        read_run_views(client, _layout(settings), run)  # type: ignore[arg-type]


def test_a_failed_materialisation_names_redis_and_leaves_no_marks(tmp_path: Path) -> None:
    settings = _settings(tmp_path, redis_url=f"redis://app:{PLANTED}@127.0.0.1:16379/0")
    client = FakeRedis()
    run = _run()
    rows = _materialise_all(settings, client, run)
    with (
        pytest.raises(FeatureError) as caught,
        materializing(settings, "run-2", DAY, rows, client=client),  # type: ignore[arg-type]
    ):
        client.down = True  # Redis goes away while Feast writes
        raise redis.exceptions.ConnectionError("Error 111 connecting to 127.0.0.1:16379.")
    message = str(caught.value)
    assert "materialising 2024-03-01 into the Redis online store at redis://app:***@" in message
    assert "ConnectionError" in message and PLANTED not in message
    client.down = False
    assert read_mark(client, "account") is None  # type: ignore[arg-type]
    with pytest.raises(FeatureError, match="no finished materialisation"):
        read_run_views(client, _layout(settings), run)  # type: ignore[arg-type]


def test_redis_down_is_named_logged_once_and_seen_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = _settings(tmp_path, redis_url=f"redis://:{PLANTED}@127.0.0.1:16379/0")
    client = FakeRedis()
    run = _run()
    _materialise_all(settings, client, run)
    store = RedisFeatures(settings, client=client)  # type: ignore[arg-type]
    assert store.up is None and store.ping() and store.up is True
    client.down = True
    caplog.set_level(logging.INFO, logger="streams.features.redis_store")
    assert not store.ping() and store.up is False
    with pytest.raises(FeatureStoreDown) as caught:
        store.read_run(_layout(settings), run)
    assert "Redis online store at redis://:***@127.0.0.1:16379/0 does not answer" in str(
        caught.value
    )
    assert PLANTED not in str(caught.value) and PLANTED not in caplog.text
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "does not answer: ConnectionError" in warnings[0].getMessage()
    client.down = False
    assert len(store.read_run(_layout(settings), run)) == 3 and store.up is True
    assert "answers again" in caplog.text


# -- metrics -------------------------------------------------------------------------
class _Served:
    def __init__(self, up: bool | None, source: str | None, day: date | None) -> None:
        self.online_store = "redis" if up is not None else "sqlite"
        self.store_up = up
        self.served_source = source
        self.feature_date = day


def _series(text: str, name: str) -> dict[str, float]:
    return {
        m[1]: float(m[2]) for m in re.finditer(rf"^{name}\{{(.*?)\}} (\S+)$", text, re.MULTILINE)
    }


def test_metrics_say_whether_the_store_answers_and_how_old_the_served_run_is() -> None:
    from streams.monitoring.metrics import WorkerMetrics

    metrics = WorkerMetrics()
    text = metrics.exposition().decode()
    assert _series(text, "streamscore_feature_store_up") == {}  # nothing watched yet
    yesterday = datetime.now(UTC).date() - timedelta(days=1)
    metrics.watch_features(_Served(False, "export", yesterday))
    text = metrics.exposition().decode()
    assert _series(text, "streamscore_feature_store_up") == {'store="redis"': 0.0}
    age = _series(text, "streamscore_features_age_seconds")
    assert list(age) == ['source="export"'] and 86_400 <= age['source="export"'] < 2 * 86_400
    metrics.watch_features(_Served(None, "export", yesterday))  # SQLite: no store to check
    assert _series(metrics.exposition().decode(), "streamscore_feature_store_up") == {}


@pytest.mark.parametrize(("auto_rewrite", "rewrites"), [("0", 1), ("100", 0)])
def test_a_load_ends_with_the_append_only_files_rewrite_when_left_to_clients(
    tmp_path: Path, auto_rewrite: str, rewrites: int
) -> None:
    client = FakeRedis(auto_rewrite)
    with materializing(_settings(tmp_path), "run-1", DAY, {"account": 1}, client=client):  # type: ignore[arg-type]
        assert client.rewrites == 0  # after the features and their marks, not before
    assert client.rewrites == rewrites
