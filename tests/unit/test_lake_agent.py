"""The lake agent's pure steps and its sink on a temporary lake, without Kafka."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from streams.agents.lake import (
    HandoffRecord,
    LakeSink,
    PartitionState,
    decode_marks,
    encode_marks,
    group_records,
    lake_events,
    resume_points,
    select_new,
)
from streams.errors import FeatureError
from streams.features.runs import NightlyRun
from streams.lake import BatchReport, LakeError, LakeInputError, LakeWriter
from streams.settings import Settings
from streams.simulate.records import SimulationConfig, simulate_records
from streams.worker import nightly_job

VALID = "p.events.valid.transaction"
RAW = "p.events.raw"
TYPES = {VALID: "transaction", "p.events.valid.label": "label"}


def rec(
    offset: int, raw_offset: int | None, partition: int = 0, raw_partition: int = 0
) -> HandoffRecord:
    source = None if raw_offset is None else (RAW, raw_partition, raw_offset)
    return HandoffRecord(VALID, partition, offset, b"{}", source)


@pytest.fixture(scope="module")
def values() -> list[bytes]:
    config = SimulationConfig(
        start=datetime(2026, 11, 1, tzinfo=UTC), accounts=50, seed=5,
        invalid_fraction=0.0, labels=False,
    )  # fmt: skip
    out: list[bytes] = []
    for item in simulate_records(config):
        out.append(item.value)
        if len(out) == 40:
            return out
    raise AssertionError("the simulator ran dry")


def test_group_records_by_type_and_partition_in_offset_order() -> None:
    label = HandoffRecord("p.events.valid.label", 1, 3, b"{}")
    grouped = group_records([rec(5, 1), rec(2, 0), rec(9, 2, partition=1), label], TYPES)
    assert [r.offset for r in grouped["transaction"][(VALID, 0)]] == [2, 5]
    assert [r.offset for r in grouped["transaction"][(VALID, 1)]] == [9]
    assert grouped["label"] == {("p.events.valid.label", 1): [label]}
    with pytest.raises(LakeInputError, match="not from a hand-off topic"):
        group_records([HandoffRecord("other", 0, 0, b"{}")], TYPES)


def test_select_new_drops_committed_offsets_and_commits_the_rest() -> None:
    records = [rec(o, o + 100) for o in range(10, 16)]
    selection = select_new(records, PartitionState(committed=12))
    assert [r.offset for r in selection.records] == [13, 14, 15]
    assert selection.source == (VALID, 0, 13, 15)
    assert selection.marks == {(RAW, 0): 115}
    nothing = select_new(records, PartitionState(committed=15))
    assert nothing.records == [] and nothing.source is None


def test_select_new_drops_an_ingestion_redelivery_but_commits_its_offsets() -> None:
    # Raw 100..103 handed off at 0..3, then re-sent after a crash at 4..7, then 104 at 8.
    records = [rec(o, 100 + o) for o in range(4)] + [rec(4 + i, 100 + i) for i in range(4)]
    records.append(rec(8, 104))
    selection = select_new(records, PartitionState())
    assert [r.source[2] for r in selection.records if r.source] == [100, 101, 102, 103, 104]
    assert selection.source == (VALID, 0, 0, 8)
    # The same across batches: the mark survives in the state.
    later = select_new([rec(9, 102), rec(10, 105)], PartitionState(8, selection.marks))
    assert [r.offset for r in later.records] == [10]
    assert later.source == (VALID, 0, 9, 10)


def test_select_new_keeps_raw_partitions_apart_and_records_without_source() -> None:
    records = [rec(0, 50, raw_partition=0), rec(1, 7, raw_partition=1), rec(2, None), rec(2, None)]
    selection = select_new(records, PartitionState(marks={(RAW, 0): 49}))
    assert [r.offset for r in selection.records] == [0, 1, 2]  # a repeated offset counts once
    assert selection.marks == {(RAW, 0): 50, (RAW, 1): 7}


def test_lake_events_add_provenance_and_reject_non_objects(values: list[bytes]) -> None:
    events = lake_events([HandoffRecord(VALID, 0, 1, values[0], (RAW, 3, 9))])
    assert events[0]["source_topic"] == RAW and events[0]["source_offset"] == 9
    assert events[0]["source_partition"] == 3 and events[0]["event_id"]
    assert lake_events([HandoffRecord(VALID, 0, 1, b'{"a": 1}')])[0]["source_offset"] is None
    with pytest.raises(LakeInputError, match=r"@4 is not JSON"):
        lake_events([HandoffRecord(VALID, 0, 4, b"{")])
    with pytest.raises(LakeInputError, match="not a JSON object"):
        lake_events([HandoffRecord(VALID, 0, 4, b"[1]")])


def test_marks_round_trip() -> None:
    marks = {(VALID, 0): {(RAW, 0): 5, (RAW, 2): 9}, (VALID, 3): {}}
    assert decode_marks(encode_marks("b1", marks)) == marks


def records_for(values: list[bytes], offsets: range, raw: int = 0) -> list[HandoffRecord]:
    return [HandoffRecord(VALID, o % 2, o, values[o], (RAW, 0, raw + o)) for o in offsets]


def lake_rows(root: Path) -> list[tuple[int, str]]:
    """(source offset, event id) of every row in the lake, by source offset."""
    table = pq.read_table(root / "transaction", columns=["source_offset", "event_id"])
    return sorted(zip(*(table.column(c).to_pylist() for c in table.column_names), strict=True))


def test_sink_writes_once_across_restarts_and_redeliveries(
    tmp_path: Path, values: list[bytes]
) -> None:
    writer = LakeWriter(str(tmp_path))
    sink = LakeSink(writer, TYPES)
    sink.start()
    reports = sink.write(records_for(values, range(10)))
    assert [r.rows for r in reports] == [10]
    assert set(reports[0].source) == {(VALID, 0, 0, 8), (VALID, 1, 1, 9)}

    # A restart re-reads offsets 6..13, and ingestion re-sent raw 8..9 at offsets 14..15.
    restarted = LakeSink(LakeWriter(str(tmp_path)), TYPES)
    restarted.start()
    assert {k: s.committed for k, s in restarted.state.items()} == {(VALID, 0): 8, (VALID, 1): 9}
    assert (
        resume_points(writer.manifests("transaction")).keys()
        == writer.committed_offsets("transaction").keys()
    )
    again = records_for(values, range(6, 14))
    again += [HandoffRecord(VALID, o % 2, o, values[o - 6], (RAW, 0, o - 6)) for o in (14, 15)]
    (report,) = restarted.write(again)
    assert report.rows == 4  # 10..13 only
    rows = lake_rows(tmp_path)
    assert len(rows) == 14 == len({e for _, e in rows})
    assert [o for o, _ in rows] == list(range(14))


class CrashingWriter(LakeWriter):
    crash = False

    def write_batch(self, *args: Any, **kwargs: Any) -> BatchReport:
        if self.crash:
            raise LakeError("crashed before the manifest")
        return super().write_batch(*args, **kwargs)


def test_sink_resumes_marks_from_the_committed_batch_only(
    tmp_path: Path, values: list[bytes]
) -> None:
    writer = CrashingWriter(str(tmp_path))
    sink = LakeSink(writer, TYPES)
    sink.start()
    sink.write(records_for(values, range(4)))
    writer.crash = True  # the marks get written, the manifest does not
    with pytest.raises(LakeError, match="crashed"):
        sink.write(records_for(values, range(4, 8)))

    restarted = LakeSink(LakeWriter(str(tmp_path)), TYPES)
    restarted.start()
    assert restarted.state[(VALID, 0)].marks == {(RAW, 0): 2}
    assert len(list((tmp_path / "_lake_sink" / "transaction").iterdir())) == 1  # stale one pruned
    restarted.write(records_for(values, range(4, 8)))
    assert [o for o, _ in lake_rows(tmp_path)] == list(range(8))


def run(settings: Settings, fails: bool) -> NightlyRun:
    if fails:
        raise FeatureError("dbt test failed")
    now = datetime.now(UTC)
    return NightlyRun("r1", date(2026, 11, 2), "fraud_v1", "success", now, now)


def test_nightly_job_logs_success_and_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(nightly_cron="0 2 * * *")
    caplog.set_level(logging.INFO, "streams.worker")
    asyncio.run(nightly_job(settings, lambda s: run(s, fails=False))())
    asyncio.run(nightly_job(settings, lambda s: run(s, fails=True))())
    messages = [r.getMessage() for r in caplog.records]
    assert any("nightly run r1 for 2026-11-02: success" in m for m in messages)
    assert any("nightly run failed: FeatureError: dbt test failed" in m for m in messages)
