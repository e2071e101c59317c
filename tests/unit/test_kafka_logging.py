"""librdkafka's log lines reach Python logging through the ``logger`` config key.

No broker: the producer points at 127.0.0.1:9 (the discard port, closed here), so
librdkafka logs its failed connection, which must arrive as a record on our logger.
"""

from __future__ import annotations

import logging
import time

import pytest
from confluent_kafka import Producer

from streams.kafka_logging import LIBRDKAFKA_LOGGER, librdkafka_logger


def test_the_logger_is_the_named_one_under_streams() -> None:
    logger = librdkafka_logger()
    assert logger is logging.getLogger("streams.librdkafka")
    assert logger.name == LIBRDKAFKA_LOGGER
    # Under "streams", so the worker's and the CLI's logging setup covers it.
    assert logger.parent is not None and logger.name.startswith("streams.")


def test_a_producer_given_the_logger_logs_through_python_logging(
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG, logger=LIBRDKAFKA_LOGGER)
    config: dict[str, object] = {
        "bootstrap.servers": "127.0.0.1:9",
        "reconnect.backoff.ms": 50,
        "reconnect.backoff.max.ms": 100,
    }
    config.setdefault("logger", librdkafka_logger())  # the line streams.kafka applies
    producer = Producer(config)
    try:
        producer.produce("any-topic", b"x")  # makes librdkafka connect
        deadline = time.monotonic() + 15.0
        while time.monotonic() < deadline and not _ours(caplog):
            producer.poll(0.2)  # log callbacks are served here, on the caller's thread
    finally:
        producer.purge()
        producer.flush(0)
    records = _ours(caplog)
    assert records, "no librdkafka log record arrived on streams.librdkafka within 15 s"
    text = " ".join(r.getMessage() for r in records)
    assert "127.0.0.1:9" in text, text
    assert any(r.levelno >= logging.WARNING for r in records), [r.levelname for r in records]
    # Nothing went past logging to the process's stderr (librdkafka's own "%3|…" lines).
    assert "|rdkafka#producer" not in capfd.readouterr().err


def _ours(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LIBRDKAFKA_LOGGER]
