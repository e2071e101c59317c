"""The lake agent on BatchAgent, without a broker: messages → HandoffRecords, recovery before
the first write, exactly once through the stage, and the agent's wiring."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faust
import pyarrow.parquet as pq
import pytest

from streams.agents.batching import BatchAgent
from streams.agents.lake import (
    EXIT_LAKE_FAILED,
    MAX_BATCH_BYTES,
    HandoffRecord,
    LakeSink,
    LakeStage,
    register_lake_agent,
    to_handoff_record,
)
from streams.errors import StreamscoreError
from streams.lake import LakeError, LakeWriter
from streams.schemas import SchemaRegistry
from streams.settings import Settings
from streams.simulate.records import SimulationConfig, simulate_records
from streams.topics import valid_topic

VALID = "p.events.valid.transaction"
RAW = "p.events.raw"
TYPES = {VALID: "transaction"}
SCHEMAS_DIR = Path(__file__).resolve().parents[2] / "schemas"


@pytest.fixture(autouse=True)
def _no_developer_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings here come from arguments only, never from the developer's STREAMSCORE_*."""
    for name in list(os.environ):
        if name.startswith("STREAMSCORE_"):
            monkeypatch.delenv(name)


class FakeMessage:
    """What the lake reads of a confluent_kafka Message."""

    def __init__(
        self,
        topic: str,
        partition: int,
        offset: int,
        value: bytes | None,
        headers: list[tuple[str, Any]] | None = None,
    ) -> None:
        self._topic, self._partition, self._offset = topic, partition, offset
        self._value, self._headers = value, headers

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def value(self) -> bytes | None:
        return self._value

    def headers(self) -> list[tuple[str, Any]] | None:
        return self._headers


def source_headers(topic: str, partition: Any, offset: Any) -> list[tuple[str, Any]]:
    return [
        ("event-type", b"transaction"),
        ("source-topic", topic),
        ("source-partition", partition),
        ("source-offset", offset),
    ]


def test_message_becomes_a_handoff_record_with_its_source() -> None:
    message = FakeMessage(VALID, 3, 41, b"{}", source_headers(RAW.encode(), b"2", b"17"))
    assert to_handoff_record(message) == HandoffRecord(VALID, 3, 41, b"{}", (RAW, 2, 17))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "headers",
    [
        source_headers(RAW.encode(), b"2", b"seventeen"),  # not a number
        source_headers(RAW.encode(), b"two", b"17"),
        source_headers(RAW.encode(), b"2", None),  # a null header value
        source_headers(b"", b"2", b"17"),  # no topic
        source_headers(RAW.encode(), b"2", b"-1"),  # no Kafka offset is negative
        source_headers(RAW.encode(), b"2", b"\xff\xfe"),  # not UTF-8
        source_headers(RAW.encode(), b"2", b"17")[:3],  # no source-offset at all
        [],
        None,
    ],
    ids=["offset", "partition", "null", "topic", "negative", "bytes", "missing", "empty", "none"],
)
def test_malformed_source_header_keeps_the_message_coordinates(
    headers: list[tuple[str, Any]] | None,
) -> None:
    record = to_handoff_record(FakeMessage(VALID, 1, 9, b'{"a": 1}', headers))  # type: ignore[arg-type]
    assert (record.topic, record.partition, record.offset) == (VALID, 1, 9)
    assert record.value == b'{"a": 1}'
    assert record.source is None


def test_a_message_without_value_is_empty_bytes() -> None:
    record = to_handoff_record(FakeMessage(VALID, 0, 0, None))  # type: ignore[arg-type]
    assert record.value == b"" and record.source is None


@pytest.fixture(scope="module")
def values() -> list[bytes]:
    config = SimulationConfig(
        start=datetime(2026, 11, 1, tzinfo=UTC), accounts=20, seed=11,
        invalid_fraction=0.0, labels=False,
    )  # fmt: skip
    out = [item.value for _, item in zip(range(20), simulate_records(config), strict=False)]
    assert len(out) == 20
    return out


def messages(values: list[bytes], offsets: range, raw: int = 0) -> list[FakeMessage]:
    """Hand-off messages on partition 0; offset ``o`` carries raw offset ``raw + o``."""
    return [
        FakeMessage(
            VALID,
            0,
            o,
            values[o % len(values)],
            source_headers(RAW.encode(), b"0", str(raw + o).encode()),
        )
        for o in offsets
    ]


def lake_sources(root: Path) -> list[int]:
    table = pq.read_table(root / "transaction", columns=["source_offset"])
    return sorted(table.column("source_offset").to_pylist())


def handle(stage: LakeStage, batch: Sequence[FakeMessage]) -> None:
    asyncio.run(stage.handle(batch))  # type: ignore[arg-type]


def test_stage_recovers_before_its_first_write(tmp_path: Path, values: list[bytes]) -> None:
    # A crash left a data file no manifest names; it must go before anything is written.
    orphan = tmp_path / "transaction" / "event_date=2026-11-01" / "part-crashed.parquet"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"half a file")
    stage = LakeStage(LakeSink(LakeWriter(str(tmp_path)), TYPES), str(tmp_path))
    handle(stage, messages(values, range(5)))  # no on_assigned first: handle recovers itself
    assert stage.recovered is not None and stage.recovered.orphans == [str(orphan)]
    assert not orphan.exists()
    assert lake_sources(tmp_path) == [0, 1, 2, 3, 4]


def test_stage_writes_each_event_once_across_rebalance_and_restart(
    tmp_path: Path, values: list[bytes]
) -> None:
    stage = LakeStage(LakeSink(LakeWriter(str(tmp_path)), TYPES), str(tmp_path))
    asyncio.run(stage.on_assigned([(VALID, 0)]))
    first = stage.recovered
    handle(stage, messages(values, range(6)))
    # Revoked and assigned again: no second recovery, and the re-read from the last
    # committed Kafka offset (3, say) adds only what is new.
    asyncio.run(stage.on_assigned([(VALID, 0)]))
    assert stage.recovered is first
    handle(stage, messages(values, range(3, 9)))
    assert lake_sources(tmp_path) == list(range(9))

    # A restart (SIGKILL before the commit) re-reads 4..11, and ingestion re-sent raw 7
    # and 8 at offsets 12 and 13: only raw 9..11 are new.
    restarted = LakeStage(LakeSink(LakeWriter(str(tmp_path)), TYPES), str(tmp_path))
    asyncio.run(restarted.on_assigned([(VALID, 0)]))
    redelivered = [
        FakeMessage(
            VALID,
            0,
            o,
            values[o % len(values)],
            source_headers(RAW.encode(), b"0", str(o - 5).encode()),
        )
        for o in (12, 13)
    ]
    handle(restarted, [*messages(values, range(4, 12)), *redelivered])
    assert lake_sources(tmp_path) == list(range(12))
    assert restarted.counts == {"batches": 1, "rows": 3}


def test_recovery_failure_is_a_lake_error(tmp_path: Path, values: list[bytes]) -> None:
    # A manifest without its fields: the stage must refuse to write rather than guess.
    manifest = tmp_path / "_manifests" / "transaction" / "broken.json"
    manifest.parent.mkdir(parents=True)
    manifest.write_bytes(b'{"batch_id": "broken", "source": [{"topic": "x"}]}')
    stage = LakeStage(LakeSink(LakeWriter(str(tmp_path)), TYPES), str(tmp_path))
    with pytest.raises(LakeError, match=r"lake recovery at .* failed: KeyError") as caught:
        asyncio.run(stage.on_assigned([(VALID, 0)]))
    # A StreamscoreError is what makes BatchAgent exit with the agent's code.
    assert isinstance(caught.value, StreamscoreError)
    assert stage.recovered is None
    with pytest.raises(LakeError):
        handle(stage, messages(values, range(2)))
    assert not (tmp_path / "transaction").exists()


def test_register_lake_agent_is_a_batch_agent_of_its_own_group(tmp_path: Path) -> None:
    settings = Settings(app_id="lake-unit", topic_prefix="p", lake_dir=str(tmp_path))
    registry = SchemaRegistry.load(SCHEMAS_DIR)
    app = faust.App("lake-unit", broker="kafka://127.0.0.1:1")
    agent = register_lake_agent(app, settings, registry)
    assert isinstance(agent, BatchAgent)
    assert agent.group == "lake-unit-lake"
    assert agent.topics == sorted(valid_topic(settings, t) for t in ("label", "transaction"))
    assert agent.exit_code == EXIT_LAKE_FAILED
    assert agent.gather_bytes == MAX_BATCH_BYTES
    assert agent.batch_seconds == 1.0  # never less than a second, whatever ingestion uses
    assert agent.on_assigned is not None
    assert agent.lake.sink is not None  # type: ignore[attr-defined]
