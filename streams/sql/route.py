"""Where an analyst's query runs: directly, or through the worker that holds chDB.

Routing: an http(s) DSN is queried directly. A ``chdb://`` path is opened directly when
no other process holds it; when one does (the worker), the query goes to the worker's
``POST /sql`` on 127.0.0.1:STREAMSCORE_WEB_PORT with the worker's bearer token
(``<STREAMSCORE_HOME>/sql.token``), with a note on stderr. Either way the statement is
checked and run by :class:`streams.sql.ReadOnlySQL`; ``write=True`` (``streamscore sql
--write``) skips the check on a direct connection only.
"""

from __future__ import annotations

import fcntl
import os
import re
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from streams.errors import SinkError, StreamscoreError
from streams.sql.output import QueryOutput
from streams.web.token import read_token

if TYPE_CHECKING:
    from streams.settings import Settings

__all__ = ["HTTP_TIMEOUT_S", "chdb_lock_holder", "endpoint_url", "execute", "post_query"]

HTTP_TIMEOUT_S = 120.0  # above the query's own max_execution_time

Post = Callable[[str, Mapping[str, Any], str, float], Mapping[str, Any]]
Note = Callable[[str], None]


def chdb_lock_holder(path: Path) -> int | None:
    """The PID of another process holding the chDB data at ``path`` (0 if it is unknown),
    or None when no other process does.

    chDB, like clickhouse-server, holds an exclusive ``flock`` on ``<path>/status``
    (which names the PID) while it runs and removes the file when it stops. Probing
    the lock first keeps a second engine from starting just to fail.
    """
    status = path / "status"
    try:
        fd = os.open(status, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _status_pid(status)
            return None if pid == os.getpid() else pid  # our own engine is no obstacle
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _status_pid(status: Path) -> int:
    try:
        text = status.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return 0
    match = re.search(r"^PID:\s*(\d+)", text, re.MULTILINE)
    return int(match.group(1)) if match else 0


def _is_lock_error(exc: BaseException) -> bool:
    text = f"{exc} {exc.__cause__ or ''}"
    return "Cannot lock file" in text or "Another server instance" in text


def endpoint_url(settings: Settings) -> str:
    """Where the worker serves ``POST /sql``."""
    return f"http://127.0.0.1:{settings.web_port}/sql"


def post_query(
    url: str, request: Mapping[str, Any], token: str, timeout: float
) -> Mapping[str, Any]:
    """POST ``request`` to the worker with its bearer ``token``. OSError when nothing
    answers; StreamscoreError with the worker's message when it refuses the query."""
    http_request = urllib.request.Request(  # noqa: S310 - always http://127.0.0.1, built here
        url,
        data=orjson.dumps(request),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(http_request, timeout=timeout) as response:  # noqa: S310
            payload = orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            message = orjson.loads(body)["error"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            message = f"HTTP {exc.code}: {body[:300]!r}"
        raise StreamscoreError(f"the worker at {url} refused the query: {message}") from exc
    if not isinstance(payload, dict):
        raise StreamscoreError(f"the worker at {url} answered {payload!r:.200}, not an object")
    return payload


def execute(
    settings: Settings,
    sql: str,
    parameters: Mapping[str, Any],
    fmt: str,
    max_rows: int,
    *,
    write: bool = False,
    post: Post | None = None,
    note: Note | None = None,
) -> QueryOutput:
    """Run ``sql`` where it can run: directly, or through the worker's endpoint on chDB.

    ``post`` (default :func:`post_query`) sends the request to the worker; ``note`` (default:
    stderr) is told when the query went through the worker.
    """
    url = settings.clickhouse_url
    if not url.startswith("chdb://"):
        return _direct(settings, sql, parameters, fmt, max_rows, write=write)
    path = Path(url.removeprefix("chdb://"))
    holder = chdb_lock_holder(path)
    if holder is None:
        try:
            return _direct(settings, sql, parameters, fmt, max_rows, write=write)
        except SinkError as exc:
            holder = chdb_lock_holder(path)
            if holder is None and not _is_lock_error(exc):
                raise
            holder = holder or 0
    who = f"PID {holder}" if holder else "another process"
    if write:
        raise StreamscoreError(
            f"--write needs chDB at {path} itself, but {who} holds it (a running worker?); "
            "the worker's /sql endpoint is read-only. Stop that process and run again, or "
            "use a ClickHouse server DSN (STREAMSCORE_CLICKHOUSE_DSN=http://host:8123)"
        )
    endpoint = endpoint_url(settings)
    request = {"sql": sql, "parameters": dict(parameters), "format": fmt, "max_rows": max_rows}
    token = read_token(settings.home)
    try:
        payload = (post or post_query)(endpoint, request, token, HTTP_TIMEOUT_S)
    except OSError as exc:
        raise StreamscoreError(
            f"chDB at {path} is held by {who}, and no streamscore worker answers at "
            f"{endpoint} ({exc}). Start the worker (`streamscore worker`, which serves "
            f"/sql on STREAMSCORE_WEB_PORT={settings.web_port}), stop the process holding "
            "the path, or use a ClickHouse server DSN (STREAMSCORE_CLICKHOUSE_DSN=http://...)"
        ) from exc
    message = f"note: chDB at {path} is held by {who}: ran through the worker at {endpoint}"
    (note or _stderr)(message)
    return QueryOutput.from_json(payload)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def _direct(
    settings: Settings,
    sql: str,
    parameters: Mapping[str, Any],
    fmt: str,
    max_rows: int,
    *,
    write: bool,
) -> QueryOutput:
    from streams.clickhouse.client import connect
    from streams.sql.session import ReadOnlySQL, run_unchecked

    if not write:
        return ReadOnlySQL.for_settings(settings).query(sql, parameters, fmt, max_rows)
    client = connect(settings, create_database=False)
    try:
        return run_unchecked(client, sql, parameters, fmt, max_rows)
    finally:
        client.close()
