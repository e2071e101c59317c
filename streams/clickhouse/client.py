"""The one way streamscore opens ClickHouse: ``chdb:///path`` (in-process) or ``http(s)://host``.

clickhouse-connect speaks to both through the same ``Client`` API, so every query in
streamscore runs unchanged against chDB on a laptop and a ClickHouse server in production.
Tables are always named with their database (``db.table``), which works the same on both.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from streams.errors import ConfigError, SinkError

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

    from streams.settings import Settings

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def quote_identifier(name: str) -> str:
    """``name`` back-quoted, once checked to be a plain identifier (no injection via config)."""
    if not _IDENTIFIER.match(name):
        raise ConfigError(
            f"ClickHouse identifier {name!r} may only hold letters, digits and '_' "
            "(check STREAMSCORE_CLICKHOUSE_DATABASE)"
        )
    return f"`{name}`"


def connect(settings: Settings, *, create_database: bool = True) -> Client:
    """A client for ``settings.clickhouse_url``; creates ``settings.clickhouse_database`` if asked.

    chDB allows one process per data path: open it in the process that owns it (the worker
    or ``streamscore nightly``), not from two processes at once.
    """
    import clickhouse_connect

    url = settings.clickhouse_url
    database = quote_identifier(settings.clickhouse_database)
    if url.startswith("chdb://"):
        path = url.removeprefix("chdb://")
        if not path:
            raise ConfigError(f"ClickHouse DSN {url!r} names no chDB data path (chdb:///path)")
        Path(path).mkdir(parents=True, exist_ok=True)
    elif not url.startswith(("http://", "https://")):
        raise ConfigError(
            f"ClickHouse DSN {url!r} is neither chdb:///path nor http(s)://host:port "
            "(STREAMSCORE_CLICKHOUSE_DSN)"
        )
    try:
        client = clickhouse_connect.get_client(dsn=url)
        if create_database:
            client.command(f"create database if not exists {database}")
    except Exception as exc:  # clickhouse_connect raises its own tree and OSError
        raise SinkError(f"cannot open ClickHouse at {url}: {exc}") from exc
    return client
