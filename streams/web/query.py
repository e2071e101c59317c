"""``POST /sql`` on the worker's web server: analysts' read-only SQL over HTTP.

Everything about what may run is :class:`streams.sql.ReadOnlySQL`'s; this module guards the
door, in this order, before any body byte is parsed:

* the web server binds to a loopback address (ConfigError at start-up otherwise);
* the ``Host`` header names this worker's loopback address (403: a DNS-rebinding page
  cannot reach it through a name of its own);
* ``Authorization: Bearer <token>`` matches the token this worker wrote to
  ``<STREAMSCORE_HOME>/sql.token`` with mode 0600 (401);
* ``Content-Type: application/json`` (415: a browser cannot send that cross-origin without
  a preflight, which this endpoint never answers);
* the body is read in chunks and refused past :data:`MAX_BODY_BYTES` whatever the framing
  (413: a chunked body declares no length).
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
from typing import TYPE_CHECKING, Any

import orjson

from streams.errors import ConfigError, QueryBusy, QueryRefused, SinkError, StreamscoreError
from streams.sql import DEFAULT_MAX_ROWS, ReadOnlySQL

if TYPE_CHECKING:
    import faust

    from streams.settings import Settings

__all__ = [
    "MAX_BODY_BYTES",
    "PATH",
    "allowed_hosts",
    "handle_query_request",
    "register_query_endpoint",
    "serve_readonly_sql",
]

log = logging.getLogger("streams.web.query")

PATH = "/sql"
MAX_BODY_BYTES = 1024 * 1024
_CHUNK = 64 * 1024
_REQUEST_KEYS = frozenset({"sql", "parameters", "format", "max_rows"})

Answer = tuple[int, dict[str, Any]]


def handle_query_request(sql: ReadOnlySQL, body: bytes) -> Answer:
    """``POST /sql``'s body → ``(HTTP status, JSON answer)``, without the web server.

    400 for a malformed request, a refused statement or a query ClickHouse failed; 429
    when every query slot stays taken; 503 when ClickHouse cannot be opened.
    """
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return 400, {"error": f"the body is not JSON: {exc}"}
    if not isinstance(request, dict):
        return 400, {"error": 'the body must be a JSON object: {"sql": "...", ...}'}
    unknown = sorted(set(request) - _REQUEST_KEYS)
    if unknown:
        return 400, {"error": f"unknown fields {unknown}; known: {sorted(_REQUEST_KEYS)}"}
    text = request.get("sql")
    if not isinstance(text, str) or not text.strip():
        return 400, {"error": '"sql" must be a non-empty string'}
    parameters = request.get("parameters") or {}
    if not isinstance(parameters, dict):
        return 400, {"error": '"parameters" must be an object of name → value'}
    fmt = request.get("format", "json")
    max_rows = request.get("max_rows", DEFAULT_MAX_ROWS)
    try:
        output = sql.query(text, parameters, str(fmt), max_rows)
    except QueryBusy as exc:
        return 429, {"error": str(exc)}
    except QueryRefused as exc:
        return 400, {"error": str(exc)}
    except SinkError as exc:  # ClickHouse could not be opened at all
        return 503, {"error": f"ClickHouse is not available: {exc}"}
    except StreamscoreError as exc:  # QueryFailed: ClickHouse's own message
        return 400, {"error": str(exc)}
    return 200, output.to_json()


def allowed_hosts(port: int) -> frozenset[str]:
    """``Host`` header values that name this worker's loopback web server."""
    return frozenset(f"{host}:{port}" for host in ("127.0.0.1", "localhost", "[::1]"))


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def read_capped(content: Any, limit: int) -> bytes | None:
    """The body from an aiohttp ``StreamReader``, or None past ``limit`` bytes (stops reading)."""
    parts: list[bytes] = []
    size = 0
    while True:
        chunk = await content.read(_CHUNK)
        if not chunk:
            return b"".join(parts)
        size += len(chunk)
        if size > limit:
            return None
        parts.append(chunk)


def _refusal(request: Any, token: str, hosts: frozenset[str]) -> Answer | None:
    """Why ``request`` may not reach the query path, or None when it may."""
    if request.headers.get("Host", "") not in hosts:
        return 403, {"error": "the Host header does not name this worker's loopback address"}
    given = request.headers.get("Authorization", "")
    scheme, _, credential = given.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        credential.strip().encode(), token.encode()
    ):
        return 401, {
            "error": "missing or wrong bearer token: send Authorization: Bearer <the token "
            "in STREAMSCORE_HOME/sql.token> (streamscore sql does)"
        }
    if request.content_type != "application/json":
        return 415, {"error": "the body must be sent as Content-Type: application/json"}
    return None


def register_query_endpoint(app: faust.App, sql: ReadOnlySQL, token: str) -> None:
    """Serve ``POST /sql`` on the worker's web server for holders of ``token``.

    Refuses (ConfigError) unless the web server binds to a loopback address.
    """
    from faust.web import View

    bind = str(app.conf.web_bind)
    if not _is_loopback(bind):
        raise ConfigError(
            f"the /sql endpoint needs the worker's web server on 127.0.0.1, but it binds "
            f"to {bind!r}: pass web_bind='127.0.0.1' to faust.App"
        )
    hosts = allowed_hosts(int(app.conf.web_port))

    class QueryView(View):
        """``POST /sql``: read-only SQL against the worker's ClickHouse."""

        async def post(self, request: Any) -> Any:
            answer = _refusal(request, token, hosts)
            if answer is None:
                body = await read_capped(request.content, MAX_BODY_BYTES)
                if body is None:
                    answer = 413, {"error": f"request body over {MAX_BODY_BYTES} bytes"}
            if answer is None:
                try:
                    answer = await asyncio.to_thread(handle_query_request, sql, body or b"")
                except Exception as exc:  # an answer, never a dropped connection
                    log.exception("/sql failed")
                    answer = 500, {"error": f"{type(exc).__name__}: {exc}"}
            status, payload = answer
            headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
            return self.bytes(
                orjson.dumps(payload),
                content_type="application/json",
                status=status,
                headers=headers,
            )

    app.page(PATH, name="sql")(QueryView)


def serve_readonly_sql(app: faust.App, settings: Settings) -> ReadOnlySQL:
    """What the worker serves: ``POST /sql`` on ``settings``' ClickHouse, for holders of a
    new token written to ``<STREAMSCORE_HOME>/sql.token``."""
    from streams.web.token import issue_token

    sql = ReadOnlySQL.for_settings(settings)
    register_query_endpoint(app, sql, issue_token(settings.home))
    return sql
