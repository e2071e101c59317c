"""``streamscore status`` without a broker: lag from a fake admin client and the screen."""

from __future__ import annotations

from concurrent.futures import Future
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition

from streams.cli.status import (
    GroupStatus,
    NightlyStatus,
    PartitionLag,
    StatusReport,
    Throughput,
    format_status,
    gather,
    kafka_status,
    last_nightly,
    throughput,
)
from streams.errors import KafkaError, SinkError
from streams.settings import Settings
from tests.planted import PLANTED

DSN_WITH_PASSWORD = f"http://analyst:{PLANTED}@127.0.0.1:9/"  # a closed local port


def done(value: Any) -> Future[Any]:
    future: Future[Any] = Future()
    future.set_result(value)
    return future


class FakeAdmin:
    def __init__(
        self, committed: dict[str, list[TopicPartition]], ends: dict[tuple[str, int], int]
    ):
        self.committed = committed
        self.ends = ends

    def list_topics(self, timeout: float) -> object:
        return object()

    def describe_consumer_groups(self, groups: list[str], **_: Any) -> dict[str, Future[Any]]:
        return {
            g: done(SimpleNamespace(state="STABLE", members=[1] if g in self.committed else []))
            for g in groups
        }

    def list_consumer_group_offsets(self, requests: list[Any], **_: Any) -> dict[str, Future[Any]]:
        (request,) = requests
        group = request.group_id
        return {group: done(ConsumerGroupTopicPartitions(group, self.committed.get(group, [])))}

    def list_offsets(
        self, wanted: dict[TopicPartition, Any], **_: Any
    ) -> dict[TopicPartition, Future[Any]]:
        return {
            tp: done(SimpleNamespace(offset=self.ends[(tp.topic, tp.partition)])) for tp in wanted
        }


def test_kafka_status_computes_lag_per_partition() -> None:
    admin = FakeAdmin(
        {
            "app-score": [
                TopicPartition("valid", 1, 40),
                TopicPartition("valid", 0, 100),
                TopicPartition("valid", 2, -1001),
            ]
        },
        {("valid", 0): 100, ("valid", 1): 55, ("valid", 2): 9},
    )
    groups = kafka_status(admin, ["app-ingest", "app-score"], "b:9092")
    ingest, score = groups
    assert ingest.partitions == () and ingest.members == 0
    assert [(p.partition, p.lag) for p in score.partitions] == [(0, 0), (1, 15), (2, None)]
    assert score.total_lag == 15 and score.state == "stable" and score.members == 1


def test_unreachable_broker_is_a_clear_error() -> None:
    class Down(FakeAdmin):
        def list_topics(self, timeout: float) -> object:
            raise KafkaException("Failed to get metadata: Local: Broker transport failure")

    with pytest.raises(KafkaError, match=r"cannot reach the Kafka broker at b:9092.*infra up"):
        kafka_status(Down({}, {}), ["g"], "b:9092")


def test_screen_shows_lag_throughput_and_nightly() -> None:
    report = StatusReport(
        "127.0.0.1:19092",
        (
            GroupStatus(
                "streamscore-ingest",
                "stable",
                1,
                (PartitionLag("raw.tx", 0, 10, 12), PartitionLag("raw.tx", 1, None, 3)),
            ),
            GroupStatus("streamscore-lake", "empty", 0),
            GroupStatus("streamscore-dlq", error="timed out"),
        ),
        Throughput(scored_1m=600, scored_5m=3000, dlq_5m=2),
        NightlyStatus(
            "n-1",
            "2026-01-05",
            "success",
            "2026-01-05 02:00:00",
            "2026-01-05 02:03:10",
            {"dbt": 95.0, "materialize": 180.5},
        ),
        taken_at=datetime(2026, 1, 5, 12, 0, tzinfo=UTC),
    )
    screen = format_status(report)
    assert "streamscore-ingest" in screen and "lag          2" in screen
    assert "raw.tx  p0=2 p1=-" in screen
    assert "no committed offsets" in screen and "error: timed out" in screen
    assert "600 last minute" in screen and "(10.0/s)" in screen
    assert "2026-01-05  SUCCESS  run n-1" in screen and "dbt 95.0s  materialize 3.0m" in screen
    assert not report.healthy
    assert len(screen.splitlines()) < 25


def test_screen_says_when_clickhouse_is_unavailable() -> None:
    screen = format_status(StatusReport("b", (), clickhouse_error="chDB is locked"))
    assert screen.count("unavailable: chDB is locked") == 2


def test_clickhouse_queries_shape_rows() -> None:
    def rows(sql: str, parameters: Any) -> list[dict[str, Any]]:
        if "predictions" in sql:
            return [{"m1": 5, "m5": 20}]
        if "dlq_events" in sql:
            return [{"m5": 1}]
        run = {"run_id": "r", "nightly_date": "2026-01-05", "status": "failed", "started_at": "a"}
        return [{**run, "finished_at": "b", "durations_s": {"dbt": 1.5}, "error": "dbt failed"}]

    assert throughput(rows, "streamscore") == Throughput(5, 20, 1)
    nightly = last_nightly(rows, "streamscore")
    assert (
        nightly is not None and nightly.status == "failed" and nightly.durations_s == {"dbt": 1.5}
    )
    assert last_nightly(lambda sql, p: [], "streamscore") is None


def test_status_never_shows_the_clickhouse_password(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.delenv("STREAMSCORE_CLICKHOUSE_USER", raising=False)
    monkeypatch.delenv("STREAMSCORE_CLICKHOUSE_PASSWORD", raising=False)
    settings = Settings(home=tmp_path, clickhouse_dsn=DSN_WITH_PASSWORD)
    # The real query path: the server is down, its error quotes the DSN.
    report = gather(settings, admin=FakeAdmin({}, {}))
    assert "analyst:***@127.0.0.1:9" in report.clickhouse_error
    assert PLANTED not in report.clickhouse_error

    def leaky(sql: str, parameters: Any) -> list[dict[str, Any]]:
        raise SinkError(f"query on {DSN_WITH_PASSWORD} failed, password={PLANTED}")

    leaked = gather(settings, rows=leaky, admin=FakeAdmin({}, {}))
    for screen in (format_status(report), format_status(leaked)):
        assert "unavailable: " in screen and PLANTED not in screen


def test_the_screen_redacts_a_url_in_a_group_error() -> None:
    group = GroupStatus("streamscore-score", error=f"SASL failed for sasl://u:{PLANTED}@b:9093")
    screen = format_status(StatusReport("b:9093", (group,)))
    assert "sasl://u:***@b:9093" in screen and PLANTED not in screen
