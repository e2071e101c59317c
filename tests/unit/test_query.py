"""Read-only queries and the analysts' views (migration 0003) on an in-process chDB.

chDB hosts one data path per process at a time: the module's clients are closed at the
end so that other tests can open theirs.
"""

from __future__ import annotations

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
from streams.errors import ConfigError, SinkError, StreamscoreError
from streams.settings import Settings
from streams.web.query import (
    check_read_only,
    handle_query_request,
    jsonable,
    open_readonly_gateway,
    read_only_settings,
    register_query_endpoint,
    render,
    run_readonly_query,
)

# ---- the pre-check (no ClickHouse) ---------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "statement"),
    [
        ("select 1", "select 1"),
        ("  SELECT 1;  ", "  SELECT 1"),
        ("select 1; -- done", "select 1"),
        ("with 2 as x select x", "with 2 as x select x"),
        ("(select 1) union all (select 2)", "(select 1) union all (select 2)"),
        ("show tables from streamscore", "show tables from streamscore"),
        ("describe table system.one", "describe table system.one"),
        ("explain select 1", "explain select 1"),
        ("select ';' as semi, 'insert into x' as s", "select ';' as semi, 'insert into x' as s"),
        ("select 'it''s; fine', `a;b` from t", "select 'it''s; fine', `a;b` from t"),
        ("select 'a\\'; b' -- ; drop\n", "select 'a\\'; b' -- ; drop"),
        ("select /* ; drop table t */ 1", "select /* ; drop table t */ 1"),
        ("select format('{}', 1)", "select format('{}', 1)"),
    ],
)
def test_read_statements_pass(sql: str, statement: str) -> None:
    assert check_read_only(sql) == statement


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("insert into t values (1)", "INSERT statements are refused"),
        ("drop table t", "DROP statements"),
        ("alter table t delete where 1", "ALTER statements"),
        ("system stop merges", "SYSTEM statements"),
        ("kill query where 1", "KILL statements"),
        ("select 1; drop table t", "one statement at a time"),
        ("select 1; drop table t;", "one statement at a time"),
        ("select ';'; drop table t", "one statement at a time"),
        ("select 1 # ; drop table t", "one statement at a time"),  # '#' is checked as code
        ("select $$ ; $$", "one statement at a time"),  # heredocs too
        ("with 1 as x insert into t select x", "INSERT INTO is refused"),
        ("select 1 into outfile '/tmp/x'", "INTO OUTFILE"),
        ("select 1 format JSON", "FORMAT clause"),
        ("select 'unterminated", "unterminated ' quote"),
        ("select /* open", "unterminated /\\* comment"),
        ("  -- nothing\n", "empty"),
        (";", "empty"),
    ],
)
def test_other_statements_are_refused(sql: str, message: str) -> None:
    with pytest.raises(StreamscoreError, match=message):
        check_read_only(sql)


def test_settings_make_clickhouse_refuse_writes_and_bound_rows() -> None:
    settings = read_only_settings(10, timeout_s=5)
    assert settings["readonly"] == 2  # 1 would forbid the other settings here
    assert settings["max_result_rows"] == 10 and settings["result_overflow_mode"] == "break"


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
def chdb_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    path: Path = tmp_path_factory.getbasetemp() / "chdb"
    database = f"t_{uuid.uuid4().hex[:8]}"
    return Settings(clickhouse_dsn=f"chdb://{path}", clickhouse_database=database)


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
def reader(chdb_settings: Settings, writer: ClickHouseGateway) -> Iterator[ClickHouseGateway]:
    gateway = open_readonly_gateway(chdb_settings)
    yield gateway
    gateway.close()


def _query(reader: ClickHouseGateway, sql: str, **parameters: Any) -> list[dict[str, Any]]:
    output = run_readonly_query(reader, sql, parameters, "json", 100)
    return [dict(zip(output.columns, row, strict=True)) for row in output.rows]


def test_every_migration_applies_once(writer: ClickHouseGateway) -> None:
    from streams.clickhouse.migrations import load_migrations

    versions = writer.query(f"select version from {writer.table('schema_migrations')} final")
    assert sorted(v for (v,) in versions.result_rows) == [m.version for m in load_migrations()]


def test_decisions_per_hour_counts_acted_on_decisions_once(
    reader: ClickHouseGateway, chdb_settings: Settings
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


def test_merchant_and_country_risk(reader: ClickHouseGateway, chdb_settings: Settings) -> None:
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


def test_champion_vs_challenger(reader: ClickHouseGateway, chdb_settings: Settings) -> None:
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


def test_decision_trace_names_features(reader: ClickHouseGateway, chdb_settings: Settings) -> None:
    db = chdb_settings.clickhouse_database
    rows = _query(reader, f"select * from {db}.decision_trace(event_id = {{id:String}})", id="e1")
    assert [(r["model_version"], r["decided"]) for r in rows] == [("a-1", True), ("b-1", False)]
    assert rows[0]["features"] == {"amount_z": 1.0, "merchant_rate": 2.0}
    assert rows[0]["card_path"] == "models/cards/a-1.md"
    # b-1 has no models row: its vector keeps positional names rather than failing.
    assert rows[1]["features"] == {"#1": 1.0, "#2": 2.0, "#3": 3.0}
    client_bound = _query(
        reader, f"select model_version from {db}.decision_trace(event_id = %(id)s)", id="e2"
    )
    assert [r["model_version"] for r in client_bound] == ["a-1", "b-1"]


def test_clickhouse_refuses_writes_past_the_precheck(
    reader: ClickHouseGateway, writer: ClickHouseGateway, chdb_settings: Settings
) -> None:
    """What the pre-check would stop, sent straight to the read-only session: ClickHouse
    itself refuses every statement, and the sinks' session stays writable."""
    db = chdb_settings.clickhouse_database
    for sql in (
        f"insert into {db}.models (model_version) values ('evil')",
        f"alter table {db}.models delete where 1",
        f"drop table {db}.models",
    ):
        with pytest.raises(SinkError, match="READONLY"):
            reader.query(sql, settings=read_only_settings(10))
    # chDB runs every statement of a multi-statement query, and a per-query SETTINGS
    # clause covers only the last one: the session-wide readonly refuses the drop. (A
    # session that saw this may answer its next query with stale rows, one more reason
    # the pre-check refuses it: probe on a session of its own.)
    probe = open_readonly_gateway(chdb_settings)
    try:
        with pytest.raises(SinkError):
            probe.query(f"select 1; drop table {db}.models; select 2", settings={"readonly": 2})
    finally:
        probe.close()
    tables = writer.query("select name from system.tables where database = {d:String}", {"d": db})
    assert "models" in {name for (name,) in tables.result_rows}
    writer.insert_columns("feature_runs", [["r1"]], ["run_id"])  # still writable
    assert writer.query(f"select count() from {db}.feature_runs").result_rows == [(1,)]


def test_rows_are_bounded(reader: ClickHouseGateway) -> None:
    output = run_readonly_query(reader, "select number from system.numbers", {}, "csv", 5)
    assert output.truncated and len(output.rows) == 5
    assert output.text == "number\n0\n1\n2\n3\n4\n"
    assert output.types == ("UInt64",)


def test_handle_query_request(reader: ClickHouseGateway, chdb_settings: Settings) -> None:
    db = chdb_settings.clickhouse_database
    body = {
        "sql": f"select event_id, score from {db}.predictions final "
        "where model_version = {v:String} order by event_id",
        "parameters": {"v": "a-1"},
        "format": "table",
        "max_rows": 2,
    }
    status, payload = handle_query_request(lambda: reader, orjson.dumps(body))
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
        status, payload = handle_query_request(lambda: reader, bad)
        assert status == 400 and message in payload["error"], (bad, payload)


def test_handle_query_request_without_clickhouse() -> None:
    def unavailable() -> ClickHouseGateway:
        raise SinkError("cannot open ClickHouse at chdb:///x: locked")

    status, payload = handle_query_request(unavailable, b'{"sql": "select 1"}')
    assert status == 503 and "locked" in payload["error"]


def test_endpoint_refuses_a_public_bind() -> None:
    import faust

    app = faust.App("sql-test", broker="kafka://127.0.0.1:1", web_bind="0.0.0.0")
    with pytest.raises(ConfigError, match=r"127\.0\.0\.1"):
        register_query_endpoint(app, lambda: None)  # type: ignore[arg-type, return-value]
