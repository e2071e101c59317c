"""``POST /sql`` served by a faust app's web server in another process that holds chDB, and
``streamscore sql`` routed to it because the path is locked. No broker is needed: only the
app's web server runs, as the worker runs it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from streams.cli.sql import endpoint_url, execute, post_query
from streams.errors import StreamscoreError
from streams.settings import Settings

pytestmark = pytest.mark.integration

SERVE = """
from aiohttp import web
import faust
from streams.clickhouse.gateway import ClickHouseGateway
from streams.settings import Settings
from streams.web.query import open_readonly_gateway, register_query_endpoint

settings = Settings()
writer = ClickHouseGateway.open(settings)  # migrations applied; the process holds the path
reader = open_readonly_gateway(settings)
app = faust.App(
    "sql-it", broker="kafka://127.0.0.1:1", web_bind="127.0.0.1", web_port=settings.web_port
)
register_query_endpoint(app, lambda: reader)
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
    with (root / "server.log").open("wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-c", SERVE], env=env, stdout=subprocess.PIPE, stderr=log
        )
    assert server.stdout is not None
    line = server.stdout.readline()
    assert line.strip() == b"ready", (root / "server.log").read_text()
    yield settings
    server.terminate()
    server.wait(30)
    server.stdout.close()


def test_endpoint_contract(served: Settings) -> None:
    url = endpoint_url(served)
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
        30,
    )
    assert payload["columns"] == ["version", "name"]
    assert payload["types"] == ["UInt32", "String"]
    assert payload["rows"] == [[2, "predictions"], [3, "analyst_views"]]
    assert payload["truncated"] is False and payload["row_count"] == 2
    assert payload["text"] == "version,name\n2,predictions\n3,analyst_views\n"
    with pytest.raises(StreamscoreError, match="refused the query: read-only: DROP"):
        post_query(url, {"sql": f"drop table {db}.predictions"}, 30)
    with pytest.raises(StreamscoreError, match="unknown fields"):
        post_query(url, {"sql": "select 1", "rows": 1}, 30)


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


def test_a_non_json_body_is_a_400(served: Settings) -> None:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(endpoint_url(served), data=b"select 1", method="POST")
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=30)
    assert caught.value.code == 400
    assert "not JSON" in orjson.loads(caught.value.read())["error"]
    caught.value.close()


def test_the_path_is_really_held(served: Settings) -> None:
    from streams.cli.sql import chdb_lock_holder

    assert chdb_lock_holder(Path(served.clickhouse_url.removeprefix("chdb://")))
