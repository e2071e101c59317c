"""Analysts' read-only SQL (the CLI path) and the views (migration 0003) on an in-process chDB.

chDB hosts one data path per process at a time: the module's clients are closed at the
end so that other tests can open theirs.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest

from streams.clickhouse.client import connect
from streams.clickhouse.gateway import ClickHouseGateway
from streams.clickhouse.migrations import apply_migrations
from streams.errors import (
    ConfigError,
    QueryBusy,
    QueryFailed,
    QueryRefused,
    SinkError,
    StreamscoreError,
)
from streams.settings import Settings
from streams.sql import QueryLimits, ReadOnlySQL, jsonable, render
from streams.sql.route import execute
from streams.web.query import handle_query_request, register_query_endpoint
from tests.sql_cases import ALLOWED, HOSTILE, fill

# ---- values and rendering ------------------------------------------------------------


def test_jsonable_values() -> None:
    row = [
        datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
        date(2025, 1, 2),
        Decimal("1.50"),
        uuid.UUID(int=1),
        2**70,
        {"a": (1, 2)},
        b"\xffx",
        None,
        True,
    ]
    assert jsonable(row) == [
        "2025-01-02 03:04:05+00:00",
        "2025-01-02",
        "1.50",
        "00000000-0000-0000-0000-000000000001",
        str(2**70),
        {"a": [1, 2]},
        "\ufffdx",
        None,
        True,
    ]


def test_render_table_csv_json() -> None:
    columns = ("name", "n", "tags")
    rows = [["a", 1, ["x"]], ["bb, c", None, []]]
    assert render(columns, rows, "table") == (
        "name  |    n | tags\n"
        "------+------+------\n"
        'a     |    1 | ["x"]\n'
        "bb, c | NULL | []\n"
        "(2 rows)\n"
    )
    assert render(columns, rows, "csv") == 'name,n,tags\na,1,"[""x""]"\n"bb, c",,[]\n'
    lines = render(columns, rows, "json").splitlines()
    assert [orjson.loads(line) for line in lines] == [
        {"name": "a", "n": 1, "tags": ["x"]},
        {"name": "bb, c", "n": None, "tags": []},
    ]
    with pytest.raises(StreamscoreError, match="format 'xml'"):
        render(columns, rows, "xml")


# ---- chDB: views and ClickHouse's own refusal ----------------------------------------

T0 = datetime(2025, 3, 1, 10, 15, tzinfo=UTC)
COLUMNS = [
    "event_id", "event_time", "merchant_id", "merchant_country", "model_name",
    "model_version", "model_role", "decided", "score", "decision", "human_review",
    "features", "topic", "partition", "offset", "amount",
]  # fmt: skip


def _row(
    event: int, version: str, role: str, score: float, decision: str, features: list[float]
) -> list[Any]:
    merchant, country = ("m1", "NL") if event <= 2 else ("m2", "DE")
    return [
        f"e{event}", T0, merchant, country, version.rsplit("-", 1)[0], version, role,
        role == "champion", score, decision, decision == "review", features,
        "streamscore.raw", 0, event, 10.0 * event,
    ]  # fmt: skip


# Events 1-3, each scored by the champion (a-1, acted on) and a shadow (b-1).
PREDICTIONS = [
    _row(1, "a-1", "champion", 0.9, "decline", [1.0, 2.0]),
    _row(1, "b-1", "shadow", 0.7, "decline", [1.0, 2.0, 3.0]),
    _row(2, "a-1", "champion", 0.1, "approve", [3.0, 4.0]),
    _row(2, "b-1", "shadow", 0.5, "review", [3.0, 4.0, 5.0]),
    _row(3, "a-1", "champion", 0.5, "review", [5.0, 6.0]),
    _row(3, "b-1", "shadow", 0.4, "review", [5.0, 6.0, 7.0]),
]


@pytest.fixture(scope="module")
def writer(chdb_settings: Settings) -> Iterator[ClickHouseGateway]:
    """The sinks' gateway: migrated twice (the second time is a no-op), a few rows in."""
    gateway = ClickHouseGateway.open(chdb_settings)
    again = connect(chdb_settings)
    try:
        assert apply_migrations(again, chdb_settings.clickhouse_database) == []
    finally:
        again.close()
    gateway.insert_columns("predictions", list(zip(*PREDICTIONS, strict=True)), COLUMNS)
    # A re-delivered batch that is not merged away yet: FINAL must count it once.
    gateway.insert_columns("predictions", list(zip(*PREDICTIONS[:2], strict=True)), COLUMNS)
    gateway.insert_columns(
        "models",
        [["a-1"], ["a"], [["amount_z", "merchant_rate"]], ["models/cards/a-1.md"]],
        ["model_version", "model_name", "feature_names", "card_path"],
    )
    yield gateway
    gateway.close()


@pytest.fixture(scope="module")
def reader(chdb_settings: Settings, writer: ClickHouseGateway) -> ReadOnlySQL:
    return ReadOnlySQL(chdb_settings)


def _query(reader: ReadOnlySQL, sql: str, **parameters: Any) -> list[dict[str, Any]]:
    output = reader.query(sql, parameters, "json", 100)
    return [dict(zip(output.columns, row, strict=True)) for row in output.rows]


def test_every_migration_applies_once(writer: ClickHouseGateway) -> None:
    from streams.clickhouse.migrations import load_migrations

    versions = writer.query(f"select version from {writer.table('schema_migrations')} final")
    assert sorted(v for (v,) in versions.result_rows) == [m.version for m in load_migrations()]


def test_decisions_per_hour_counts_acted_on_decisions_once(
    reader: ReadOnlySQL, chdb_settings: Settings
) -> None:
    db = chdb_settings.clickhouse_database
    rows = _query(reader, f"select * from {db}.decisions_per_hour order by decision")
    assert [(r["model_version"], r["decision"], r["events"]) for r in rows] == [
        ("a-1", "approve", 1),
        ("a-1", "review", 1),
        ("a-1", "decline", 1),  # e1 twice in the table, once here
    ]
    assert rows[0]["hour"] == "2025-03-01 10:00:00"
    assert [r["human_reviews"] for r in rows] == [0, 1, 0]
    every = _query(
        reader, f"select * from {db}.model_decisions_per_hour where model_role = 'shadow'"
    )
    assert sum(r["events"] for r in every) == 3 and sum(r["decided_events"] for r in every) == 0


def test_merchant_and_country_risk(reader: ReadOnlySQL, chdb_settings: Settings) -> None:
    db = chdb_settings.clickhouse_database
    merchants = _query(reader, f"select * from {db}.merchant_risk order by merchant_id")
    assert [(m["merchant_id"], m["merchant_country"], m["events"]) for m in merchants] == [
        ("m1", "NL", 2),
        ("m2", "DE", 1),
    ]
    assert merchants[0]["decline_rate"] == 0.5 and merchants[0]["review_rate"] == 0.0
    assert merchants[0]["avg_score"] == pytest.approx(0.5)
    countries = _query(reader, f"select * from {db}.country_risk order by merchant_country")
    assert [(c["merchant_country"], c["merchants"], c["review_rate"]) for c in countries] == [
        ("DE", 1, 1.0),
        ("NL", 1, 0.0),
    ]


def test_champion_vs_challenger(reader: ReadOnlySQL, chdb_settings: Settings) -> None:
    db = chdb_settings.clickhouse_database
    [row] = _query(reader, f"select * from {db}.champion_vs_challenger")
    assert (row["challenger_version"], row["challenger_role"], row["champion_version"]) == (
        "b-1",
        "shadow",
        "a-1",
    )
    assert row["events"] == 3
    assert row["decision_agreement_rate"] == pytest.approx(2 / 3)  # e1 and e3 agree
    assert row["mean_champion_score"] == pytest.approx(0.5)
    assert row["mean_challenger_score"] == pytest.approx(1.6 / 3)
    assert row["mean_abs_score_diff"] == pytest.approx((0.2 + 0.4 + 0.1) / 3)


def test_decision_trace_names_features(reader: ReadOnlySQL, chdb_settings: Settings) -> None:
    db = chdb_settings.clickhouse_database
    rows = _query(reader, f"select * from {db}.decision_trace(event_id = {{id:String}})", id="e1")
    assert [(r["model_version"], r["decided"]) for r in rows] == [("a-1", True), ("b-1", False)]
    assert rows[0]["features"] == {"amount_z": 1.0, "merchant_rate": 2.0}
    assert rows[0]["card_path"] == "models/cards/a-1.md"
    # b-1 has no models row: its vector keeps positional names rather than failing.
    assert rows[1]["features"] == {"#1": 1.0, "#2": 2.0, "#3": 3.0}
    with pytest.raises(QueryRefused, match="substitution is refused"):
        _query(reader, f"select model_version from {db}.decision_trace(event_id = %(id)s)", id="e2")


def test_clickhouse_refuses_writes_past_the_check(
    reader: ReadOnlySQL, writer: ClickHouseGateway, chdb_settings: Settings
) -> None:
    """What the statement check stops, sent straight to a query's session: ClickHouse itself
    refuses every write and every setting change, and the sinks' session stays writable."""
    from streams.sql import run_unchecked

    db = chdb_settings.clickhouse_database
    with reader.session(10, readonly=1) as session:
        for sql in (
            f"insert into {db}.models (model_version) values ('evil')",
            f"alter table {db}.models delete where 1",
            f"drop table {db}.models",
            "set max_execution_time = 0",
            "select 1 settings max_result_rows = 0",
        ):
            with pytest.raises(QueryFailed, match="READONLY"):
                run_unchecked(session, sql, {}, "json", 10)
        [[limit]] = run_unchecked(
            session, "select getSetting('max_result_rows')", {}, "json", 1
        ).rows
        assert int(limit) == 11
    tables = writer.query("select name from system.tables where database = {d:String}", {"d": db})
    assert "models" in {name for (name,) in tables.result_rows}
    writer.insert_columns("feature_runs", [["r1"]], ["run_id"])  # still writable
    assert writer.query(f"select count() from {db}.feature_runs").result_rows == [(1,)]


def test_rows_are_bounded(reader: ReadOnlySQL) -> None:
    output = reader.query("select number from system.numbers", {}, "csv", 5)
    assert output.truncated and len(output.rows) == 5
    assert output.text == "number\n0\n1\n2\n3\n4\n"
    assert output.types == ("UInt64",)


def test_handle_query_request(reader: ReadOnlySQL, chdb_settings: Settings) -> None:
    db = chdb_settings.clickhouse_database
    body = {
        "sql": f"select event_id, score from {db}.predictions final "
        "where model_version = {v:String} order by event_id",
        "parameters": {"v": "a-1"},
        "format": "table",
        "max_rows": 2,
    }
    status, payload = handle_query_request(reader, orjson.dumps(body))
    assert status == 200
    assert payload["columns"] == ["event_id", "score"]
    assert payload["types"] == ["String", "Float32"]
    assert [row[0] for row in payload["rows"]] == ["e1", "e2"]
    assert payload["truncated"] is True and payload["row_count"] == 2
    assert payload["text"].startswith("event_id |")
    for bad, message in [
        (b"not json", "not JSON"),
        (b"[]", "JSON object"),
        (orjson.dumps({"sql": "select 1", "fmt": "csv"}), "unknown fields"),
        (orjson.dumps({"sql": ""}), "non-empty"),
        (orjson.dumps({"sql": "select 1", "parameters": [1]}), "parameters"),
        (orjson.dumps({"sql": "select 1", "format": "xml"}), "format 'xml'"),
        (orjson.dumps({"sql": "select 1", "max_rows": "5"}), "max_rows must be an integer"),
        (orjson.dumps({"sql": "drop table x"}), "DROP statements"),
        (orjson.dumps({"sql": "select * from nope_nope"}), "UNKNOWN_TABLE"),
    ]:
        status, payload = handle_query_request(reader, bad)
        assert status == 400 and message in payload["error"], (bad, payload)


def test_handle_query_request_without_clickhouse() -> None:
    def locked() -> Any:
        raise SinkError("cannot open ClickHouse at chdb:///x: locked")

    unavailable = ReadOnlySQL(Settings(), connect=locked)
    status, payload = handle_query_request(unavailable, b'{"sql": "select 1"}')
    assert status == 503 and "locked" in payload["error"]


def test_endpoint_refuses_a_public_bind() -> None:
    import faust

    app = faust.App("sql-test", broker="kafka://127.0.0.1:1", web_bind="0.0.0.0")
    with pytest.raises(ConfigError, match=r"127\.0\.0\.1"):
        register_query_endpoint(app, ReadOnlySQL(Settings()), "token")


# ---- hostile statements through the CLI path (streams.sql.route.execute) -------------


@pytest.mark.parametrize(("sql", "parameters", "message"), HOSTILE)
def test_hostile_statements_are_refused_and_write_nothing(
    sql: str,
    parameters: dict[str, Any],
    message: str,
    reader: ReadOnlySQL,
    chdb_settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)  # INTO OUTFILE with a relative name would land here
    victim = tmp_path / "victim.sh"
    db = chdb_settings.clickhouse_database
    text = fill(sql, db, str(victim))
    with pytest.raises(StreamscoreError) as refused:
        execute(chdb_settings, text, parameters, "json", 10)
    assert message in str(refused.value), (text, str(refused.value))
    assert list(tmp_path.iterdir()) == []
    # The next query on the same path is unaffected (no shared session to poison).
    assert reader.query("select 1 as one").rows == [[1]]


@pytest.mark.parametrize(("sql", "parameters"), ALLOWED)
def test_analyst_statements_keep_working(
    sql: str, parameters: dict[str, Any], reader: ReadOnlySQL, chdb_settings: Settings
) -> None:
    db = chdb_settings.clickhouse_database
    bound = {name: fill(str(value), db, "") for name, value in parameters.items()}
    output = execute(chdb_settings, fill(sql, db, ""), bound, "json", 10)
    assert output.columns and output.types


def test_every_view_of_the_migrations_answers(reader: ReadOnlySQL, chdb_settings: Settings) -> None:
    db = chdb_settings.clickhouse_database
    views = _query(
        reader,
        "select name, engine, create_table_query from system.tables "
        "where database = {db:String} and engine = 'View'",
        db=db,
    )
    assert len(views) >= 5
    for view in views:
        if "{" in view["create_table_query"]:  # parameterised: decision_trace
            continue
        output = reader.query(f"select * from {db}.{view['name']} limit 5", {}, "json", 5)
        assert output.columns, view["name"]


def test_the_statement_that_runs_is_clickhouses_reformatting(reader: ReadOnlySQL) -> None:
    from streams.sql import check_statement

    with reader.session(10, readonly=2) as session:
        statement = check_statement(session, "select /* ' */ $$a$$ as x -- c", {}, "d")
    assert (statement.kind, statement.text) == ("select", "SELECT 'a' AS x")


# Minutes of work for one core: only the time limit stops it.
SLOW = "select sum(cityHash64(number)) from numbers(100000000000)"
UNBOUNDED_READS = 10**13


def test_limits_hold_whatever_the_query(chdb_settings: Settings) -> None:
    rows = ReadOnlySQL(chdb_settings, QueryLimits(max_rows_to_read=10**6))
    with pytest.raises(QueryFailed, match="max_rows_to_read"):
        rows.query("select count() from numbers(100000000)")
    memory = ReadOnlySQL(chdb_settings, QueryLimits(max_memory_bytes=20 * 1024**2))
    with pytest.raises(QueryFailed, match="MEMORY_LIMIT_EXCEEDED"):
        memory.query("select length(groupArray(number)) from numbers(5000000)")
    slow = ReadOnlySQL(
        chdb_settings, QueryLimits(max_execution_s=0.5, max_rows_to_read=UNBOUNDED_READS)
    )
    with pytest.raises(QueryFailed, match="TIMEOUT_EXCEEDED"):
        slow.query(SLOW)
    small = ReadOnlySQL(chdb_settings, QueryLimits(max_result_bytes=1024))
    output = small.query("select number from numbers(10000000)", {}, "json", 100_000)
    assert output.truncated and len(output.rows) < 100_000  # cut by bytes, not read whole


def test_a_slow_query_holds_only_its_own_slot(chdb_settings: Settings) -> None:
    limits = QueryLimits(
        max_execution_s=3, max_rows_to_read=UNBOUNDED_READS, concurrency=2, wait_s=0.2
    )
    sql = ReadOnlySQL(chdb_settings, limits)
    failures: list[BaseException] = []

    def slow() -> None:
        try:
            sql.query(SLOW)
        except QueryFailed as exc:
            failures.append(exc)

    worker = threading.Thread(target=slow)
    worker.start()
    try:
        assert sql.query("select 1 as one").rows == [[1]]
        assert worker.is_alive()  # answered while the slow query still ran
        # With both slots taken, a third query is told to come back, not queued for ever.
        second = threading.Thread(target=slow)
        second.start()
        time.sleep(0.3)  # let it take the second slot
        with pytest.raises(QueryBusy, match="try again"):
            sql.query("select 1")
        second.join()
    finally:
        worker.join()
    assert len(failures) == 2 and all("TIMEOUT_EXCEEDED" in str(f) for f in failures)


def test_clickhouse_messages_are_short_and_keep_the_code() -> None:
    from streams.sql.statement import MESSAGE_CHARS, clickhouse_message

    echoed = "Code: 62. DB::Exception: Syntax error: " + "x" * 2_000_000 + ". (SYNTAX_ERROR)"
    message = clickhouse_message(Exception(echoed))
    assert message.endswith("(SYNTAX_ERROR)") and "truncated, " in message
    assert len(message) < MESSAGE_CHARS + 100
    nested = (
        "Code: 164. DB::Exception: Code: 164. DB::Exception: Cannot modify 'readonly' "
        "setting in readonly mode. (READONLY) (version 26.9.2.1). (READONLY)"
    )
    assert clickhouse_message(Exception(nested)) == (
        "Cannot modify 'readonly' setting in readonly mode (READONLY)"
    )


def test_a_huge_hostile_query_is_refused_quickly_with_a_short_message(reader: ReadOnlySQL) -> None:
    # 900 KB of SQL whose parse error quotes it back: the answer stays short.
    with pytest.raises(QueryRefused) as refused:
        reader.query("select '" + "a" * 900_000 + "' from file('/etc/passwd') where (")
    assert len(str(refused.value)) < 2000
