"""``streamscore sql`` and ``streamscore db``: parameters, direct chDB, and the fallback to the
worker's endpoint when another process holds the chDB path (the HTTP call is faked).

The in-process chDB path is the one tests/unit/test_query.py uses: chDB hosts one path per
process at a time, and each module closes its clients when done.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from streams.cli.db import db
from streams.cli.sql import parse_params, sql
from streams.errors import ConfigError, StreamscoreError
from streams.settings import Settings
from streams.sql.route import chdb_lock_holder, execute
from streams.web.token import issue_token

HOLD = """
import sys, clickhouse_connect
client = clickhouse_connect.get_client(dsn="chdb://" + sys.argv[1])
client.query("select 1")
print("ready", flush=True)
sys.stdin.read()  # hold until the test closes stdin
"""


@pytest.fixture(scope="module")
def held(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, int]]:
    """A chDB path held open by another process, as a running worker holds it."""
    path = tmp_path_factory.mktemp("held") / "chdb"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == b"ready"
    yield path, holder.pid
    assert holder.stdin is not None
    holder.stdin.close()
    holder.stdout.close()
    holder.wait(30)


@pytest.fixture
def held_settings(held: tuple[Path, int], tmp_path: Path) -> Settings:
    """A held path and the home where that worker wrote its /sql token."""
    issue_token(tmp_path)
    return Settings(home=tmp_path, clickhouse_dsn=f"chdb://{held[0]}", web_port=16066)


@pytest.fixture(scope="module")
def own_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """chDB opened by this process, in a database of its own."""
    path = tmp_path_factory.getbasetemp() / "chdb"
    return Settings(
        clickhouse_dsn=f"chdb://{path}", clickhouse_database=f"t_{uuid.uuid4().hex[:8]}"
    )


def _invoke(command: click.Command, settings: Settings, *args: str) -> Any:
    return CliRunner().invoke(command, list(args), obj=settings)


# ---- parameters ----------------------------------------------------------------------


def test_parse_params() -> None:
    assert parse_params(["id=evt-1", "day=2025-01-01", "expr=a=b", "empty="]) == {
        "id": "evt-1",
        "day": "2025-01-01",
        "expr": "a=b",
        "empty": "",
    }
    for bad in (["novalue"], ["1x=2"], ["a b=1"], ["a=1", "a=2"]):
        with pytest.raises(click.BadParameter):
            parse_params(bad)


# ---- the lock ------------------------------------------------------------------------


def test_lock_holder(tmp_path: Path, held: tuple[Path, int]) -> None:
    assert chdb_lock_holder(tmp_path / "never-opened") is None
    path, pid = held
    assert chdb_lock_holder(path) == pid
    assert (path / "status").read_text().startswith(f"PID: {pid}")


# ---- routing through the worker ------------------------------------------------------


class FakeWorker:
    """Stands in for ``POST /sql``: records the request, answers like the endpoint."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, Mapping[str, Any]]] = []
        self.tokens: list[str] = []

    def __call__(
        self, url: str, request: Mapping[str, Any], token: str, timeout: float
    ) -> dict[str, Any]:
        self.requests.append((url, request))
        self.tokens.append(token)
        return {
            "columns": ["event_id", "n"],
            "types": ["String", "UInt64"],
            "rows": [["e1", 3]],
            "row_count": 1,
            "truncated": False,
            "elapsed_ms": 1.5,
            "format": request["format"],
            "text": "event_id | n\n",
        }


def test_locked_chdb_goes_through_the_worker(held_settings: Settings, held: Any) -> None:
    worker, notes = FakeWorker(), []
    output = execute(
        held_settings,
        "select * from t where id = {id:String}",
        {"id": "e1"},
        "csv",
        50,
        post=worker,
        note=notes.append,
    )
    assert worker.requests == [
        (
            "http://127.0.0.1:16066/sql",
            {
                "sql": "select * from t where id = {id:String}",
                "parameters": {"id": "e1"},
                "format": "csv",
                "max_rows": 50,
            },
        )
    ]
    assert output.rows == [["e1", 3]] and output.types == ("String", "UInt64")
    assert worker.tokens == [(held_settings.home / "sql.token").read_text()]
    [note] = notes
    assert f"PID {held[1]}" in note and "through the worker at http://127.0.0.1:16066/sql" in note


def test_a_worker_without_a_token_file_is_not_asked(held: tuple[Path, int], tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, clickhouse_dsn=f"chdb://{held[0]}", web_port=16066)
    worker = FakeWorker()
    with pytest.raises(ConfigError, match=r"no /sql token at .*sql\.token"):
        execute(settings, "select 1", {}, "table", 10, post=worker)
    assert worker.requests == []


def test_token_file_is_private(tmp_path: Path) -> None:
    from streams.web.token import read_token

    first = issue_token(tmp_path)
    assert (tmp_path / "sql.token").stat().st_mode & 0o777 == 0o600
    assert read_token(tmp_path) == first
    assert issue_token(tmp_path) != first  # a new worker start, a new token


def test_no_worker_either_says_what_to_do(held_settings: Settings, held: Any) -> None:
    def refused(url: str, request: Mapping[str, Any], token: str, timeout: float) -> dict[str, Any]:
        raise ConnectionRefusedError(111, "Connection refused")

    with pytest.raises(StreamscoreError) as caught:
        execute(held_settings, "select 1", {}, "table", 10, post=refused)
    message = str(caught.value)
    assert f"chDB at {held[0]} is held by PID {held[1]}" in message
    assert "no streamscore worker answers at http://127.0.0.1:16066/sql" in message
    assert "Start the worker" in message and "STREAMSCORE_CLICKHOUSE_DSN" in message


def test_write_never_goes_through_the_worker(held_settings: Settings) -> None:
    worker = FakeWorker()
    with pytest.raises(StreamscoreError, match="--write needs chDB"):
        execute(held_settings, "drop table t", {}, "table", 10, write=True, post=worker)
    assert worker.requests == []


def test_sql_command_falls_back_to_the_endpoint(
    held_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = FakeWorker()
    monkeypatch.setattr("streams.sql.route.post_query", worker)
    result = _invoke(sql, held_settings, "select 1", "--param", "id=e1", "--format", "json")
    assert result.exit_code == 0, result.output
    assert result.stdout == "event_id | n\n"
    assert "ran through the worker" in result.stderr
    assert worker.requests[0][1]["parameters"] == {"id": "e1"}


def test_db_migrate_on_a_held_path_explains(held_settings: Settings, held: Any) -> None:
    result = _invoke(db, held_settings, "migrate")
    assert result.exit_code != 0
    message = str(result.exception)
    assert f"held by PID {held[1]}" in message
    assert "The worker applies pending migrations when it starts" in message


# ---- direct chDB ---------------------------------------------------------------------


def test_db_migrate_tables_and_sql_directly(own_settings: Settings) -> None:
    database = own_settings.clickhouse_database
    first = _invoke(db, own_settings, "migrate")
    assert first.exit_code == 0, first.output
    from streams.clickhouse.migrations import load_migrations

    shipped = [f"{m.version:04d}_{m.name}" for m in load_migrations()]
    assert shipped[:3] == ["0001_feature_runs", "0002_predictions", "0003_analyst_views"]
    assert first.output.splitlines() == [f"{database}: applied {name}" for name in shipped]
    again = _invoke(db, own_settings, "migrate")
    assert again.output == f"{database}: up to date (latest {shipped[-1]})\n"

    tables = _invoke(db, own_settings, "tables")
    assert tables.exit_code == 0, tables.output
    lines = {line.split("|")[0].strip(): line for line in tables.output.splitlines()}
    assert "view" in lines["decision_trace"] and "table" in lines["predictions"]

    query = f"select name from {database}.schema_migrations final where version = {{v:UInt32}}"
    result = _invoke(sql, own_settings, query, "--param", "v=3", "--format", "csv")
    assert result.exit_code == 0, result.output
    assert result.stdout == "name\nanalyst_views\n"

    refused = _invoke(sql, own_settings, f"drop table {database}.predictions")
    assert refused.exit_code != 0 and "DROP statements are refused" in str(refused.exception)
    created = _invoke(
        sql, own_settings, "--write", f"create table {database}.scratch (x UInt8) engine = Memory"
    )
    assert created.exit_code == 0, created.output
    listed = _invoke(db, own_settings, "tables")
    assert "scratch" in listed.output


def test_own_engine_is_not_a_lock(own_settings: Settings) -> None:
    from streams.clickhouse.client import connect

    path = Path(own_settings.clickhouse_url.removeprefix("chdb://"))
    client = connect(own_settings)
    try:
        assert (path / "status").exists()
        assert chdb_lock_holder(path) is None  # held, but by this process: open it directly
    finally:
        client.close()
