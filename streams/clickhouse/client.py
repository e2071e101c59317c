"""The one way streamscore opens ClickHouse: ``chdb:///path`` (in-process) or ``http(s)://host``.

clickhouse-connect speaks to both through the same ``Client`` API, so every query in
streamscore runs unchanged against chDB on a laptop and a ClickHouse server in production.
Tables are always named with their database (``db.table``), which works the same on both.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from streams.errors import ConfigError, SinkError
from streams.redact import redact

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

    A server's user and password come from ``STREAMSCORE_CLICKHOUSE_USER`` and
    ``STREAMSCORE_CLICKHOUSE_PASSWORD`` (or the DSN itself); no error quotes the password.
    chDB allows one process per data path: open it in the process that owns it (the worker
    or ``streamscore nightly``), not from two processes at once.
    """
    import clickhouse_connect

    url = settings.clickhouse_url
    shown = redact(url)
    database = quote_identifier(settings.clickhouse_database)
    username: str | None = None
    password = ""  # clickhouse-connect's "not given": the DSN's own, if any, is used
    interface: str | None = None
    if url.startswith("chdb://"):
        path = url.removeprefix("chdb://")
        if not path:
            raise ConfigError(f"ClickHouse DSN {shown!r} names no chDB data path (chdb:///path)")
        try:
            Path(path).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SinkError(f"cannot create the chDB data path {path}: {exc}") from exc
    elif url.startswith(("http://", "https://")):
        # clickhouse-connect reads host, port, user, password and database from the DSN but
        # not its scheme (TLS by port alone: https://host/ would be plain HTTP on 8123).
        interface = urlsplit(url).scheme
        username = settings.clickhouse_user
        if settings.clickhouse_password is not None:
            password = settings.clickhouse_password.get_secret_value()
    else:
        raise ConfigError(
            f"ClickHouse DSN {shown!r} is neither chdb:///path nor http(s)://host:port "
            "(STREAMSCORE_CLICKHOUSE_DSN)"
        )
    try:
        client = clickhouse_connect.get_client(
            dsn=url, interface=interface, username=username, password=password
        )
        if create_database:
            client.command(f"create database if not exists {database}")
    except Exception as exc:  # clickhouse_connect raises its own tree and OSError
        reason = scrub(str(exc), settings)
        # The cause is kept unless its text quotes a secret: a traceback prints it as is.
        cause = exc if reason == str(exc) else None
        raise SinkError(f"cannot open ClickHouse at {shown}: {reason}") from cause
    return client


def scrub(text: str, settings: Settings) -> str:
    """``text`` redacted, and with the ClickHouse password masked wherever it appears
    (a server error may quote it outside any URL)."""
    masked = redact(text)
    password = settings.clickhouse_password
    secrets = [password.get_secret_value()] if password is not None else []
    embedded = urlsplit(settings.clickhouse_url).password
    if embedded:
        secrets += [embedded, unquote(embedded)]
    for secret in secrets:
        if secret:
            masked = masked.replace(secret, "***")
    return masked
