"""``POST /sql`` served by a faust app's web server in another process that holds chDB, with
the worker's own endpoint code (``serve_readonly_sql``), and ``streamscore sql`` routed to it
because the path is locked. No broker is needed: only the app's web server runs, as the
worker runs it. The hostile-statement suite runs here over HTTP.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from streams.errors import StreamscoreError
from streams.settings import Settings
from streams.sql.route import chdb_lock_holder, endpoint_url, execute, post_query
from streams.web.token import read_token
from tests.sql_cases import ALLOWED, HOSTILE, fill

pytestmark = pytest.mark.integration

SERVE = """
from aiohttp import web
import faust
from streams.clickhouse.gateway import ClickHouseGateway
from streams.settings import Settings
from streams.web.query import serve_readonly_sql

settings = Settings()
writer = ClickHouseGateway.open(settings)  # migrations applied; the process holds the path
app = faust.App(
    "sql-it", broker="kafka://127.0.0.1:1", web_bind="127.0.0.1", web_port=settings.web_port
)
serve_readonly_sql(app, settings)
web.run_app(
    app.web.web_app, host="127.0.0.1", port=settings.web_port,
    print=lambda *_: print("ready", flush=True),
)
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    root = tmp_path_factory.mktemp("sql-endpoint")
    settings = Settings(
        home=root,
        clickhouse_dsn=f"chdb://{root / 'chdb'}",
        clickhouse_database=f"it_{uuid.uuid4().hex[:8]}",
        web_port=_free_port(),
    )
    env = {**os.environ, **settings.to_env()}
    (root / "cwd").mkdir()
    with (root / "server.log").open("wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-c", SERVE],
            env=env,
            stdout=subprocess.PIPE,
            stderr=log,
            cwd=root / "cwd",  # a relative INTO OUTFILE would land here
        )
    assert server.stdout is not None
    line = server.stdout.readline()
    assert line.strip() == b"ready", (root / "server.log").read_text()
    yield settings
    server.terminate()
    server.wait(30)
    server.stdout.close()


def _post(settings: Settings, request: dict[str, Any]) -> Any:
    return post_query(endpoint_url(settings), request, read_token(settings.home), 30)


def test_endpoint_contract(served: Settings) -> None:
    url = endpoint_url(served)
    token = read_token(served.home)
    db = served.clickhouse_database
    payload = post_query(
        url,
        {
            "sql": f"select version, name from {db}.schema_migrations final "
            "where version between {v:UInt32} and 3 order by version",
            "parameters": {"v": 2},
            "format": "csv",
            "max_rows": 10,
        },
        token,
        30,
    )
    assert payload["columns"] == ["version", "name"]
    assert payload["types"] == ["UInt32", "String"]
    assert payload["rows"] == [[2, "predictions"], [3, "analyst_views"]]
    assert payload["truncated"] is False and payload["row_count"] == 2
    assert payload["text"] == "version,name\n2,predictions\n3,analyst_views\n"
    with pytest.raises(StreamscoreError, match="refused the query: read-only: DROP"):
        post_query(url, {"sql": f"drop table {db}.predictions"}, token, 30)
    with pytest.raises(StreamscoreError, match="unknown fields"):
        post_query(url, {"sql": "select 1", "rows": 1}, token, 30)


def test_sql_routes_through_the_worker_when_chdb_is_held(served: Settings) -> None:
    notes: list[str] = []
    db = served.clickhouse_database
    output = execute(
        served,
        f"select * from {db}.decision_trace(event_id = {{id:String}})",
        {"id": "none"},
        "json",
        5,
        note=notes.append,
    )
    assert output.rows == [] and output.text == ""
    [note] = notes
    assert "ran through the worker" in note and str(served.web_port) in note
    with pytest.raises(StreamscoreError, match="--write needs chDB"):
        execute(served, f"drop table {db}.predictions", {}, "table", 5, write=True)


@pytest.mark.parametrize(("sql", "parameters", "message"), HOSTILE)
def test_hostile_statements_are_refused_over_http(
    served: Settings, sql: str, parameters: dict[str, Any], message: str
) -> None:
    victim = served.home / "victim.sh"
    text = fill(sql, served.clickhouse_database, str(victim))
    with pytest.raises(StreamscoreError) as refused:
        _post(served, {"sql": text, "parameters": parameters})
    assert message in str(refused.value), (text, str(refused.value))
    assert not victim.exists()
    assert list((served.home / "cwd").iterdir()) == []
    assert _post(served, {"sql": "select 1 as one"})["rows"] == [[1]]  # nothing poisoned


@pytest.mark.parametrize(("sql", "parameters"), ALLOWED)
def test_analyst_statements_work_over_http(
    served: Settings, sql: str, parameters: dict[str, Any]
) -> None:
    db = served.clickhouse_database
    bound = {name: fill(str(value), db, "") for name, value in parameters.items()}
    payload = _post(served, {"sql": fill(sql, db, ""), "parameters": bound, "max_rows": 5})
    assert payload["columns"] and payload["types"]


def _raw(
    settings: Settings, body: bytes, headers: dict[str, str], *, chunked: bool = False
) -> tuple[int, dict[str, Any]]:
    """A hand-made POST (raw socket: a chunked body, any Host header)."""
    lines = ["POST /sql HTTP/1.1", *(f"{name}: {value}" for name, value in headers.items())]
    if chunked:
        lines.append("Transfer-Encoding: chunked")
        step = 64 * 1024
        payload = (
            b"".join(
                b"%x\r\n" % len(body[i : i + step]) + body[i : i + step] + b"\r\n"
                for i in range(0, len(body), step)
            )
            + b"0\r\n\r\n"
        )
    else:
        lines.append(f"Content-Length: {len(body)}")
        payload = body
    lines.append("Connection: close")
    request = ("\r\n".join(lines) + "\r\n\r\n").encode() + payload
    with socket.create_connection(("127.0.0.1", settings.web_port), timeout=30) as conn:
        # Refused before the whole body was read: the answer is still there.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            conn.sendall(request)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    head, _, rest = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    start = rest.find(b"{")
    return status, orjson.loads(rest[start : rest.rfind(b"}") + 1])


def test_the_door_checks_host_token_type_and_size(served: Settings) -> None:
    host = f"127.0.0.1:{served.web_port}"
    good = {"Host": host, "Content-Type": "application/json"}
    auth = {"Authorization": f"Bearer {read_token(served.home)}"}
    body = orjson.dumps({"sql": "select 1"})
    assert _raw(served, body, {**good, **auth})[0] == 200
    status, payload = _raw(served, body, good)
    assert status == 401 and "bearer token" in payload["error"]
    assert _raw(served, body, {**good, "Authorization": "Bearer wrong"})[0] == 401
    status, payload = _raw(served, body, {**good, **auth, "Host": "evil.example:80"})
    assert status == 403 and "Host header" in payload["error"]
    status, payload = _raw(served, body, {**auth, "Host": host, "Content-Type": "text/plain"})
    assert status == 415 and "application/json" in payload["error"]
    # A chunked 20 MB body declares no length: it is cut at the cap, not read whole.
    huge = b'{"sql": "select 1", "x": "' + b"a" * (20 * 1024 * 1024) + b'"}'
    status, payload = _raw(served, huge, {**good, **auth}, chunked=True)
    assert status == 413 and "over" in payload["error"]
    assert _post(served, {"sql": "select 1 as one"})["rows"] == [[1]]


def test_a_non_json_body_is_a_400(served: Settings) -> None:
    headers = {
        "Host": f"127.0.0.1:{served.web_port}",
        "Content-Type": "application/json",
        "Authorization": f"Bearer {read_token(served.home)}",
    }
    status, payload = _raw(served, b"select 1", headers)
    assert status == 400 and "not JSON" in payload["error"]


def test_the_path_is_really_held(served: Settings) -> None:
    assert chdb_lock_holder(Path(served.clickhouse_url.removeprefix("chdb://")))
