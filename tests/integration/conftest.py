"""Integration fixtures: one real Kafka broker per test session, started by the project's code.

The broker runs from a temporary STREAMSCORE_HOME on free ports, so it never touches a
developer's own broker. Each test gets its own topic prefix and consumer group.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from streams.infra.kafka import LocalKafka
from streams.kafka import make_admin, make_consumer
from streams.settings import Settings

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def kafka_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("streamscore-home")


@pytest.fixture(scope="session")
def broker_settings(kafka_home: Path) -> Iterator[Settings]:
    """A real local broker for the whole session; stopped at the end."""
    if os.environ.get("STREAMSCORE_KAFKA_BOOTSTRAP"):
        # An external cluster was given (e.g. docker compose): use it, start nothing.
        yield Settings(home=kafka_home)
        return
    settings = Settings(
        home=kafka_home,
        kafka_port=free_port(),
        kafka_controller_port=free_port(),
        kafka_heap="512m",
    )
    kafka = LocalKafka(settings)
    kafka.up(timeout=120)
    try:
        yield settings
    finally:
        kafka.down()


@pytest.fixture
def settings(broker_settings: Settings) -> Settings:
    """Per-test topics and consumer group on the session broker."""
    tag = uuid.uuid4().hex[:8]
    return broker_settings.model_copy(
        update={"topic_prefix": f"it-{tag}.", "app_id": f"it-{tag}", "web_enabled": False}
    )


def worker_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of a worker process holding exactly these settings.

    Workers run ingestion and the lake unless a test asks for more (scoring needs a
    nightly run and a champion model first).
    """
    env = {
        **os.environ,
        **settings.to_env(
            STREAMSCORE_LOG_LEVEL="info", PYTHONUNBUFFERED="1", STREAMSCORE_AGENTS="ingest,lake"
        ),
    }
    env.update(extra)
    return env


@pytest.fixture
def start_worker(
    settings: Settings, tmp_path: Path
) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start ``streamscore worker`` processes; every one still running is stopped at the end."""
    started: list[subprocess.Popen[bytes]] = []

    def start(**extra: str) -> subprocess.Popen[bytes]:
        with (tmp_path / f"worker-{len(started)}.log").open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "streams.cli.main", "worker"],
                env=worker_env(settings, **extra),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()


def read_topic(
    settings: Settings,
    topic: str,
    expected: int,
    timeout: float = 120.0,
    settle: float | None = 3.0,
) -> list[Any]:
    """Read a topic from the start until ``expected`` records came and ``settle`` s passed
    without more (so that extra, unexpected records are seen too), or until ``timeout``.
    With ``settle=None`` it returns as soon as ``expected`` records came."""
    consumer = make_consumer(settings, f"reader-{uuid.uuid4().hex[:8]}")
    consumer.subscribe([topic])
    records: list[Any] = []
    deadline = time.monotonic() + timeout
    quiet_since = time.monotonic()
    try:
        while time.monotonic() < deadline:
            batch = consumer.consume(num_messages=5000, timeout=0.5)
            got = [m for m in batch if m.error() is None]
            if got:
                records.extend(got)
                quiet_since = time.monotonic()
                if settle is None and len(records) >= expected:
                    break
            elif (
                settle is not None
                and len(records) >= expected
                and time.monotonic() - quiet_since >= settle
            ):
                break
    finally:
        consumer.close()
    return records


def delete_topics(settings: Settings) -> None:
    admin = make_admin(settings)
    names = [t for t in admin.list_topics(timeout=10).topics if t.startswith(settings.topic_prefix)]
    if names:
        for future in admin.delete_topics(names, operation_timeout=30).values():
            future.result()
