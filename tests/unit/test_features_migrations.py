"""ClickHouse migrations against a fake client: ordered, once, and checked."""

from __future__ import annotations

from typing import Any

import pytest

from streams.clickhouse.migrations import Migration, apply_migrations, load_migrations
from streams.errors import ConfigError


class FakeResult:
    def __init__(self, rows: list[tuple[Any, ...]]) -> None:
        self.result_rows = rows


class FakeClient:
    """Just enough of clickhouse_connect's Client: commands are logged, the ledger is kept."""

    def __init__(self) -> None:
        self.commands: list[str] = []
        self.ledger: list[list[Any]] = []

    def command(self, sql: str) -> None:
        self.commands.append(sql)

    def query(self, sql: str) -> FakeResult:
        return FakeResult([(row[0], row[2]) for row in self.ledger])

    def insert(self, table: str, rows: list[list[Any]], column_names: list[str]) -> None:
        assert table == "`db`.schema_migrations"
        self.ledger.extend(rows)


def test_shipped_migrations_create_feature_runs() -> None:
    migrations = load_migrations()
    assert [m.version for m in migrations] == sorted({m.version for m in migrations})
    assert migrations[0].name == "feature_runs"
    assert "`x`.feature_runs" in migrations[0].statements("`x`")[0]


def test_applies_pending_once_in_order() -> None:
    client = FakeClient()
    migrations = [
        Migration(2, "b", "create table {database}.b (x UInt8);"),
        Migration(1, "a", "-- a\ncreate table {database}.a (x UInt8)"),
    ]
    assert apply_migrations(client, "db", sorted(migrations, key=lambda m: m.version)) == [1, 2]
    assert [c for c in client.commands if "schema_migrations" not in c] == [
        "-- a\ncreate table `db`.a (x UInt8)",
        "create table `db`.b (x UInt8)",
    ]
    assert apply_migrations(client, "db", migrations) == []  # idempotent


def test_a_changed_applied_migration_is_refused() -> None:
    client = FakeClient()
    apply_migrations(client, "db", [Migration(1, "a", "create table {database}.a (x UInt8)")])
    with pytest.raises(ConfigError, match=r"0001_a\.sql changed"):
        apply_migrations(client, "db", [Migration(1, "a", "create table {database}.a (y UInt8)")])


def test_database_names_cannot_inject() -> None:
    with pytest.raises(ConfigError, match="identifier"):
        apply_migrations(FakeClient(), "db; drop table x", [])
