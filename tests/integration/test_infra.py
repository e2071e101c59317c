"""The local broker and cluster lifecycle, through the project's own code and CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from streams.infra.kafka import LocalKafka
from streams.infra.process import alive
from streams.kafka import make_admin
from streams.settings import Settings
from streams.topics import apply_topics, declared_topics, topic_name

from .conftest import free_node_ports, free_port

pytestmark = pytest.mark.integration

T = TypeVar("T")


def _cli(
    home: Path, port: int, controller: int, *args: str, **extra: str
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, STREAMSCORE_HOME=str(home), STREAMSCORE_KAFKA_PORT=str(port),
               STREAMSCORE_KAFKA_CONTROLLER_PORT=str(controller), **extra)  # fmt: skip
    env.pop("STREAMSCORE_KAFKA_BOOTSTRAP", None)
    return subprocess.run(
        [sys.executable, "-m", "streams.cli.main", *args],
        env=env, capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip


def test_up_is_idempotent_status_and_down(tmp_path: Path) -> None:
    port, controller = free_port(), free_port()
    first = _cli(tmp_path, port, controller, "infra", "up")
    assert first.returncode == 0, first.stderr
    try:
        assert "started" in first.stdout
        pid = LocalKafka(
            Settings(home=tmp_path, kafka_port=port, kafka_controller_port=controller)
        ).pid()
        assert pid is not None
        second = _cli(tmp_path, port, controller, "infra", "up")
        assert second.returncode == 0 and "already running" in second.stdout
        assert f"pid {pid}" in second.stdout  # the same broker, not a second one
        applied = _cli(tmp_path, port, controller, "topics", "apply")
        assert applied.returncode == 0 and "created   streamscore.events.raw" in applied.stdout
        status = _cli(tmp_path, port, controller, "infra", "status")
        assert status.returncode == 0
        assert "running" in status.stdout and "streamscore.events.dlq" in status.stdout
    finally:
        down = _cli(tmp_path, port, controller, "infra", "down")
    assert down.returncode == 0 and "kafka stopped" in down.stdout
    again = _cli(tmp_path, port, controller, "infra", "down")
    assert again.returncode == 0 and "not running" in again.stdout
    status = _cli(tmp_path, port, controller, "infra", "status")
    assert status.returncode == 1 and "not running" in status.stdout


def test_external_bootstrap_never_starts_a_broker(tmp_path: Path) -> None:
    env = dict(
        os.environ, STREAMSCORE_HOME=str(tmp_path), STREAMSCORE_KAFKA_BOOTSTRAP="127.0.0.1:9"
    )
    result = subprocess.run(
        [sys.executable, "-m", "streams.cli.main", "infra", "up"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0
    assert "external Kafka" in result.stdout
    assert not (tmp_path / "kafka").exists()


def test_topics_apply_creates_then_reports_drift(settings: Settings) -> None:
    specs = declared_topics(["transaction", "label"])
    admin = make_admin(settings)
    first = apply_topics(settings, specs, admin)
    assert len(first.created) == len(specs) and first.ok
    second = apply_topics(settings, specs, admin)
    assert second.created == [] and len(second.unchanged) == len(specs)
    # Someone changes retention by hand: apply reports it and does not silently "fix" it.
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType

    raw = topic_name(settings, specs[0])
    entry = ConfigEntry("retention.ms", "1000", incremental_operation=AlterConfigOpType.SET)
    resource = ConfigResource(ResourceType.TOPIC, raw, incremental_configs=[entry])
    for future in admin.incremental_alter_configs([resource]).values():
        future.result()
    deadline = time.monotonic() + 15  # config changes propagate through KRaft metadata
    third = apply_topics(settings, specs, admin)
    while third.ok and time.monotonic() < deadline:
        time.sleep(0.5)
        third = apply_topics(settings, specs, admin)
    assert not third.ok
    assert any(raw in line and "retention.ms=1000" in line for line in third.drift)


def test_three_brokers_up_idempotent_status_each_topics_replicated_down_all(
    tmp_path: Path,
) -> None:
    port, controller = free_node_ports(3)
    first = _cli(tmp_path, port, controller, "infra", "up", "--brokers", "3")
    assert first.returncode == 0, first.stderr
    kafka = LocalKafka(
        Settings(home=tmp_path, kafka_port=port, kafka_controller_port=controller, kafka_brokers=3)
    )
    pids = [n.pid for n in kafka.status().nodes]
    try:
        assert "started" in first.stdout and "3 brokers, PLAINTEXT" in first.stdout
        assert len(set(pids)) == 3 and None not in pids
        assert "STREAMSCORE_KAFKA_BROKERS=3" in first.stdout  # what clients must set
        second = _cli(tmp_path, port, controller, "infra", "up", "--brokers", "3")
        assert second.returncode == 0 and "already running" in second.stdout
        assert [n.pid for n in kafka.status().nodes] == pids  # the same nodes
        # One node per folder: its own data, log and pid file.
        for node in kafka.nodes(kafka.layout()):
            assert node.data_dir.is_dir() and node.log_file.is_file()
            assert int(node.pid_file.read_text()) == pids[node.node - 1]

        # A topic someone made with one replica: apply reports it rather than accept it.
        from confluent_kafka.admin import NewTopic

        client = kafka.client_settings(kafka.layout())
        admin = make_admin(client)
        lonely = "streamscore.events.raw"
        admin.create_topics([NewTopic(lonely, 6, 1)])[lonely].result()
        clients = {"STREAMSCORE_KAFKA_BROKERS": "3"}
        applied = _cli(tmp_path, port, controller, "topics", "apply", **clients)
        assert applied.returncode == 0, applied.stderr
        assert f"drift     {lonely}: replication 1 (expected 3 on 3 brokers" in applied.stdout
        assert "created   streamscore.predictions" in applied.stdout
        # A new topic reaches every broker's metadata through KRaft a moment later.
        metadata = _eventually(
            lambda: admin.list_topics(timeout=10).topics["streamscore.predictions"]
        )
        assert {len(p.replicas) for p in metadata.partitions.values()} == {3}
        from confluent_kafka.admin import ConfigResource, ResourceType

        resource = ConfigResource(ResourceType.TOPIC, "streamscore.predictions")
        config = _eventually(lambda: admin.describe_configs([resource])[resource].result())
        assert config["min.insync.replicas"].value == "2"

        status = _cli(tmp_path, port, controller, "infra", "status", **clients)
        assert status.returncode == 0
        for node, pid in enumerate(pids, start=1):
            assert f"node {node}: pid {pid}, port {port + 10 * (node - 1)}" in status.stdout
        # Another layout while this one runs is refused, not started on the same ports.
        single = _cli(tmp_path, port, controller, "infra", "up")
        assert single.returncode == 1 and "3 brokers, PLAINTEXT runs" in single.stderr
    finally:
        down = _cli(tmp_path, port, controller, "infra", "down")
    assert down.returncode == 0 and "kafka stopped (3 nodes)" in down.stdout
    assert not any(alive(pid) for pid in pids if pid is not None)
    again = _cli(tmp_path, port, controller, "infra", "status", **clients)
    assert again.returncode == 1 and "not running" in again.stdout


def _eventually(read: Callable[[], T], timeout: float = 15.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return read()
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
