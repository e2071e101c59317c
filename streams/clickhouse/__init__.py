"""ClickHouse access: one connection factory (chDB in-process or a server by URL) and migrations."""

from __future__ import annotations

from streams.clickhouse.client import connect, quote_identifier
from streams.clickhouse.migrations import Migration, apply_migrations, load_migrations

__all__ = ["Migration", "apply_migrations", "connect", "load_migrations", "quote_identifier"]
