"""Worker metrics (exposition after the agents' calls, lag from a fake consumer) and JSON logs."""

from __future__ import annotations

import io
import logging

import numpy as np
import orjson
import pytest
from confluent_kafka import TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from streams.monitoring.logs import JsonFormatter, batch_scope, configure_json_logging
from streams.monitoring.metrics import BulkHistogram, WorkerMetrics, consumer_lag


def samples(metrics: WorkerMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.exposition().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_counts_batches_and_stage_latency_are_exposed() -> None:
    metrics = WorkerMetrics(worker_id="w-1")
    metrics.count("score", "scored", 120)
    metrics.count("score", "review", 0)  # nothing: no series
    metrics.count_dlq("ingest", ["schema", "schema", "payload_too_large"])
    metrics.observe_batch("score", 120, 0.004)
    metrics.observe_stage("model", 0.0007)
    found = samples(metrics)
    assert (
        found[
            (
                "streamscore_events_total",
                (("outcome", "scored"), ("reason", ""), ("stage", "score")),
            )
        ]
        == 120
    )
    assert (
        found[
            (
                "streamscore_events_total",
                (("outcome", "dlq"), ("reason", "schema"), ("stage", "ingest")),
            )
        ]
        == 2
    )
    assert not any(
        k[0] == "streamscore_events_total" and ("outcome", "review") in k[1] for k in found
    )
    assert found[("streamscore_batch_size_count", (("stage", "score"),))] == 1
    assert found[("streamscore_batch_size_sum", (("stage", "score"),))] == 120
    assert found[("streamscore_stage_seconds_bucket", (("le", "0.001"), ("stage", "model")))] == 1
    assert found[("streamscore_stage_seconds_bucket", (("le", "0.0005"), ("stage", "model")))] == 0
    assert (
        found[("streamscore_worker_info", (("app_id", "streamscore"), ("worker_id", "w-1")))] == 1
    )


def test_latency_arrays_fill_cumulative_le_buckets() -> None:
    metrics = WorkerMetrics()
    metrics.observe_latency("end_to_end", np.array([0.001, 0.002, 0.2, np.nan, 100.0]))
    metrics.observe_latency("end_to_end", [0.001])
    found = samples(metrics)
    key = "streamscore_event_latency_seconds"
    assert (
        found[(f"{key}_bucket", (("le", "0.001"), ("stage", "end_to_end")))] == 2
    )  # le: inclusive
    assert found[(f"{key}_bucket", (("le", "0.0025"), ("stage", "end_to_end")))] == 3
    assert found[(f"{key}_bucket", (("le", "0.25"), ("stage", "end_to_end")))] == 4
    assert found[(f"{key}_bucket", (("le", "60.0"), ("stage", "end_to_end")))] == 4
    assert found[(f"{key}_bucket", (("le", "+Inf"), ("stage", "end_to_end")))] == 5
    assert found[(f"{key}_count", (("stage", "end_to_end"),))] == 5
    assert found[(f"{key}_sum", (("stage", "end_to_end"),))] == pytest.approx(100.204)


def test_bulk_histogram_matches_prometheus_histogram() -> None:
    from prometheus_client import CollectorRegistry, Histogram

    bounds = (0.1, 0.5, 1.0)
    values = np.random.default_rng(1).uniform(0, 1.5, 500)
    values[:5] = [0.1, 0.5, 1.0, 0.0, 1.5]  # on the bounds
    registry = CollectorRegistry()
    reference = Histogram("h", "h", buckets=bounds, registry=registry)
    for v in values:
        reference.observe(v)
    bulk = BulkHistogram("h", "h", (), bounds)
    bulk.observe((), values)
    want = {
        s.labels["le"]: s.value
        for s in next(iter(registry.collect())).samples
        if s.name == "h_bucket"
    }
    got = {
        s.labels["le"]: s.value for s in next(iter(bulk.collect())).samples if s.name == "h_bucket"
    }
    assert got == want


def test_models_and_drift_gauges() -> None:
    metrics = WorkerMetrics()
    metrics.set_models([("m-1", "champion", "CUDAExecutionProvider"), ("m-2", "shadow", "CPU")])
    metrics.set_models([("m-3", "champion", "CPUExecutionProvider")])  # a swap replaces the set
    metrics.set_drift("m-3", "amount", 0.31, True)
    found = samples(metrics)
    info = {k[1] for k, v in found.items() if k[0] == "streamscore_model_info" and v == 1}
    assert info == {
        (("model_version", "m-3"), ("provider", "CPUExecutionProvider"), ("role", "champion"))
    }
    assert (
        found[("streamscore_drift_psi", (("feature", "amount"), ("model_version", "m-3")))] == 0.31
    )
    assert (
        found[("streamscore_drift_alert", (("feature", "amount"), ("model_version", "m-3")))] == 1
    )


class FakeConsumer:
    def __init__(self, positions: dict[tuple[str, int], int], highs: dict[tuple[str, int], int]):
        self.positions = positions
        self.highs = highs

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition(t, p) for t, p in self.positions]

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        return [
            TopicPartition(tp.topic, tp.partition, self.positions[(tp.topic, tp.partition)])
            for tp in partitions
        ]

    def get_watermark_offsets(self, tp: TopicPartition, cached: bool = False) -> tuple[int, int]:
        assert cached, "lag must not cost a broker round trip per batch"
        return 0, self.highs[(tp.topic, tp.partition)]


def test_consumer_lag_from_positions_and_cached_watermarks() -> None:
    consumer = FakeConsumer(
        {("t", 0): 90, ("t", 1): -1001, ("t", 2): 5}, {("t", 0): 100, ("t", 1): 7, ("t", 2): 5}
    )
    assert consumer_lag(consumer) == {("t", 0): 10, ("t", 2): 0}
    metrics = WorkerMetrics()
    metrics.record_consumer_lag("app-score", consumer)
    consumer.positions[("t", 0)] = 100
    metrics.record_consumer_lag("app-score", consumer)  # within a second: skipped
    assert metrics.lag("app-score")[("t", 0)] == 10
    del consumer.positions[("t", 2)]  # revoked: its series goes away
    metrics.record_consumer_lag("app-score", consumer, force=True)
    found = samples(metrics)
    lag = {k[1]: v for k, v in found.items() if k[0] == "streamscore_consumer_lag"}
    assert lag == {(("group", "app-score"), ("partition", "0"), ("topic", "t")): 0}


def test_registries_are_independent() -> None:
    a, b = WorkerMetrics(), WorkerMetrics()
    a.count("score", "scored", 3)
    assert not any(k[0] == "streamscore_events_total" for k in samples(b))


def test_json_formatter_writes_one_object_per_line_with_extras() -> None:
    formatter = JsonFormatter(worker_id="w-7")
    record = logging.LogRecord(
        "streams.agents.score", logging.WARNING, __file__, 1, "batch %d failed", (3,), None
    )
    record.event_id = "evt-1"
    record.batch_id = 42
    line = formatter.format(record)
    assert "\n" not in line
    entry = orjson.loads(line)
    assert entry["level"] == "warning"
    assert entry["logger"] == "streams.agents.score"
    assert entry["message"] == "batch 3 failed"
    assert entry["worker_id"] == "w-7"
    assert entry["event_id"] == "evt-1" and entry["batch_id"] == 42
    assert entry["time"].endswith("Z") and "T" in entry["time"]
    assert "args" not in entry and "msg" not in entry


def test_json_formatter_keeps_exceptions_and_unserialisable_extras() -> None:
    formatter = JsonFormatter()
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        import sys

        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "boom", (), sys.exc_info())
    record.path = object()
    entry = orjson.loads(formatter.format(record))
    assert "ValueError: bad" in entry["exception"]
    assert entry["path"].startswith("<object object")


def test_lines_logged_in_a_batch_scope_carry_its_id_threads_included() -> None:
    import asyncio

    formatter = JsonFormatter()

    def line(**extra: object) -> dict[str, object]:
        record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", (), None)
        record.__dict__.update(extra)
        return dict(orjson.loads(formatter.format(record)))

    async def handler() -> list[dict[str, object]]:
        # to_thread copies the context: the scoring thread's lines carry the id too
        return [await asyncio.to_thread(line), line(batch_id="own")]

    assert "batch_id" not in line()
    with batch_scope("score:events.valid/1@7+3"):
        in_thread, explicit = asyncio.run(handler())
    assert in_thread["batch_id"] == "score:events.valid/1@7+3"
    assert explicit["batch_id"] == "own"  # an explicit extra wins
    assert "batch_id" not in line()  # the scope ended


def test_configure_json_logging_routes_the_root_logger() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        configure_json_logging("info", "w-9", stream)
        logging.getLogger("streams.test").info("hello", extra={"batch_id": "b-1"})
        logging.getLogger("streams.test").debug("hidden")
    finally:
        root.handlers[:], _ = saved[0], root.setLevel(saved[1])
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert orjson.loads(lines[0])["batch_id"] == "b-1"


def test_metrics_endpoint_serves_the_text_format() -> None:
    import asyncio

    import faust
    from aiohttp.test_utils import TestClient, TestServer

    from streams.monitoring.metrics import register_metrics_endpoint

    metrics = WorkerMetrics()
    metrics.count("ingest", "valid", 5)
    app = faust.App("metrics-unit", broker="kafka://127.0.0.1:1", web_bind="127.0.0.1")
    register_metrics_endpoint(app, metrics)

    async def scrape() -> tuple[int, str, str]:
        async with TestClient(TestServer(app.web.web_app)) as client:
            response = await client.get("/metrics")
            return response.status, response.headers["Content-Type"], await response.text()

    status, content_type, body = asyncio.run(scrape())
    assert status == 200
    assert content_type.startswith("text/plain; version=0.0.4")
    assert 'streamscore_events_total{outcome="valid",reason="",stage="ingest"} 5.0' in body
