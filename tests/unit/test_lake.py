"""The event lake: schema contract, dict → Arrow conversion, exactly-once writer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from streams.errors import SinkError
from streams.lake import LakeInputError, LakeWriter, to_table
from streams.lake.schema import LABEL_SCHEMA, TRANSACTION_SCHEMA, parse_times
from streams.lake.writer import MANIFEST_DIR, batch_digest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "schemas" / "examples"


def _examples(event_type: str) -> list[dict[str, Any]]:
    folder = EXAMPLES / event_type / "valid"
    return [orjson.loads(p.read_bytes()) for p in sorted(folder.glob("*.json"))]


def _tx(event_id: str, when: str, amount: float = 10.0) -> dict[str, Any]:
    event = _examples("transaction")[1].copy()  # ecommerce_3ds
    event.update(event_id=event_id, event_time=when, amount=amount)
    return event


def test_schema_columns_are_the_contract() -> None:
    assert TRANSACTION_SCHEMA.names[:6] == [
        "event_id", "event_time", "account_id", "card_id", "merchant_id", "amount",
    ]  # fmt: skip
    assert TRANSACTION_SCHEMA.field("event_time").type == pa.timestamp("us", tz="UTC")
    assert TRANSACTION_SCHEMA.field("schema_version").type == pa.int16()
    for schema in (TRANSACTION_SCHEMA, LABEL_SCHEMA):
        assert schema.names[-3:] == ["source_topic", "source_partition", "source_offset"]
        assert schema.field("source_offset").type == pa.int64()
        assert schema.field("source_partition").type == pa.int32()


def test_to_table_converts_every_valid_example() -> None:
    events = _examples("transaction")
    table = to_table("transaction", events)
    assert table.schema == TRANSACTION_SCHEMA
    assert table.num_rows == len(events)
    rows = {r["event_id"]: r for r in table.to_pylist()}
    foreign = rows["c4d5e6f7-a8b9-4c0d-8e1f-2a3b4c5d6e7f"]  # 23:59:59+03:00
    assert foreign["event_time"].isoformat() == "2026-11-20T20:59:59+00:00"
    assert foreign["geo_lat"] == 52.52 and foreign["device_id"] is None
    v2 = rows["d1e2f3a4-b5c6-4d7e-8f9a-0b1c2d3e4f5a"]
    assert (v2["wallet"], v2["merchant_name"], v2["geo_accuracy_m"]) == (
        "apple_pay",
        "Corner Shop",
        25,
    )
    assert v2["schema_version"] == 2
    assert rows["0b9c8d7e-6f5a-4b3c-9d2e-1f0a9b8c7d6e"]["is_3ds"] is None
    labels = to_table("label", _examples("label"))
    assert labels.schema == LABEL_SCHEMA and labels.column("is_fraud").to_pylist() == [True, False]


def test_parse_times_offsets_and_nanoseconds() -> None:
    times = parse_times(["2026-01-01T00:30:00+01:00", "2026-01-01T00:00:00.123456789Z"])
    assert [t.isoformat() for t in times.to_pylist()] == [
        "2025-12-31T23:30:00+00:00",
        "2026-01-01T00:00:00.123456+00:00",
    ]
    far = parse_times(["2999-01-01T00:00:00.5-02:00"])  # outside the ns range
    assert far.to_pylist()[0].isoformat() == "2999-01-01T02:00:00.500000+00:00"


def test_to_table_refuses_missing_required_field_and_unknown_type() -> None:
    event = _tx("7a0e4a8c-1b2d-4e3f-8a9b-0c1d2e3f4a5b", "2026-11-20T14:03:27Z")
    del event["amount"]
    with pytest.raises(LakeInputError, match="amount"):
        to_table("transaction", [event])
    with pytest.raises(LakeInputError, match="refund"):
        to_table("refund", [])
    assert issubclass(LakeInputError, SinkError)


def _batch() -> pa.Table:
    return to_table(
        "transaction",
        [
            _tx("00000000-0000-4000-8000-000000000001", "2026-11-19T23:59:59+00:00", 1.0),
            _tx(
                "00000000-0000-4000-8000-000000000002", "2026-11-20T00:30:00+01:00", 2.0
            ),  # 19th UTC
            _tx("00000000-0000-4000-8000-000000000003", "2026-11-20T10:00:00Z", 3.0),
        ],
    )


def test_hive_layout_readable_by_duckdb(tmp_path: Path) -> None:
    writer = LakeWriter(str(tmp_path))
    report = writer.write_batch("transaction", _batch(), [("raw", 0, 10, 12)])
    assert report.rows == 3 and len(report.files) == 2
    dirs = sorted(p.name for p in (tmp_path / "transaction").iterdir())
    assert dirs == ["event_date=2026-11-19", "event_date=2026-11-20"]
    rows = duckdb.sql(
        f"select event_date::varchar as d, count(*) as n, sum(amount) as s "
        f"from read_parquet('{tmp_path}/transaction/*/*.parquet', hive_partitioning=true) "
        f"group by 1 order by 1"
    ).fetchall()
    assert rows == [("2026-11-19", 2, 3.0), ("2026-11-20", 1, 3.0)]
    # The partition key lives in the path only.
    file = next((tmp_path / "transaction" / "event_date=2026-11-20").glob("*.parquet"))
    assert "event_date" not in pq.read_schema(file).names


def test_rewriting_the_same_batch_replaces_it(tmp_path: Path) -> None:
    writer = LakeWriter(str(tmp_path))
    source = [("raw", 1, 5, 7), ("raw", 0, 10, 12)]
    first = writer.write_batch("transaction", _batch(), source)
    second = writer.write_batch("transaction", _batch(), list(reversed(source)))
    assert first.files == second.files
    files = sorted((tmp_path / "transaction").rglob("*"))
    assert len([f for f in files if f.is_file()]) == 2  # no temp files, no duplicates
    assert len(list((tmp_path / MANIFEST_DIR / "transaction").iterdir())) == 1
    total = duckdb.sql(
        f"select count(*) from read_parquet('{tmp_path}/transaction/*/*.parquet')"
    ).fetchall()
    assert total == [(3,)]


def test_committed_offsets_resume_after_restart(tmp_path: Path) -> None:
    LakeWriter(str(tmp_path)).write_batch("transaction", _batch(), [("raw", 0, 0, 99)])
    LakeWriter(str(tmp_path)).write_batch(
        "transaction", _batch().slice(0, 0), [("raw", 0, 100, 149), ("raw", 3, 0, 9)]
    )
    restarted = LakeWriter(str(tmp_path))
    assert restarted.committed_offsets("transaction") == {("raw", 0): 149, ("raw", 3): 9}
    assert restarted.committed_offsets("label") == {}


def test_crash_before_manifest_leaves_no_commit_and_recover_cleans(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = LakeWriter(str(tmp_path))
    writer.write_batch("transaction", _batch(), [("raw", 0, 0, 2)])

    def crash(self: LakeWriter, relative: str, payload: bytes) -> None:
        raise RuntimeError("killed between data files and manifest")

    monkeypatch.setattr(LakeWriter, "_write_atomically", crash)
    with pytest.raises(RuntimeError):
        writer.write_batch("transaction", _batch(), [("raw", 0, 3, 5)])
    monkeypatch.undo()
    (tmp_path / "transaction" / "event_date=2026-11-20" / ".tmp-dead-part.parquet").write_bytes(
        b"x"
    )

    restarted = LakeWriter(str(tmp_path))
    assert restarted.committed_offsets("transaction") == {("raw", 0): 2}
    report = restarted.recover()
    orphan = batch_digest([("raw", 0, 3, 5)])
    assert len(report.orphans) == 2 and all(orphan in p for p in report.orphans)
    assert len(report.temps) == 1
    total = duckdb.sql(
        f"select count(*) from read_parquet('{tmp_path}/transaction/*/*.parquet')"
    ).fetchall()
    assert total == [(3,)]  # only the committed batch remains
    assert restarted.recover().orphans == []


def test_fsspec_url_memory_filesystem() -> None:
    writer = LakeWriter("memory://lake-test-unit")
    writer.write_batch("transaction", _batch(), [("raw", 0, 0, 2)])
    assert writer.committed_offsets("transaction") == {("raw", 0): 2}
    import fsspec

    fs = fsspec.filesystem("memory")
    files = fs.glob("/lake-test-unit/transaction/*/*.parquet")
    assert len(files) == 2
    fs.rm("/lake-test-unit", recursive=True)


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    writer = LakeWriter(str(tmp_path))
    with pytest.raises(LakeInputError, match="source offset ranges or a batch_id"):
        writer.write_batch("transaction", _batch())
    with pytest.raises(LakeInputError, match="first <= last"):
        writer.write_batch("transaction", _batch(), [("raw", 0, 9, 3)])
    with pytest.raises(LakeInputError, match="twice"):
        writer.write_batch("transaction", _batch(), [("raw", 0, 0, 3), ("raw", 0, 4, 5)])
    with pytest.raises(LakeInputError, match="label"):
        writer.write_batch("labels", _batch(), [("raw", 0, 0, 3)])
