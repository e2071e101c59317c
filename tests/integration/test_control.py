"""The control topic on the real broker: every control agent gets every message (one group
per process), a newly started one only what comes after it, and none commits an offset."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from confluent_kafka import OFFSET_INVALID, TopicPartition

from streams.agents.batching import BatchAgent
from streams.errors import DeliveryError
from streams.kafka import make_admin, make_consumer
from streams.runtime.control import ControlMessage, control_agent, publish_control
from streams.settings import Settings
from streams.topics import CONTROL, apply_topics, topic_name
from tests.integration.conftest import delete_topics

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

WAIT_S = 30.0


def _message(issued_by: str, champion: str = "fraud_lightgbm-2") -> ControlMessage:
    return ControlMessage(
        kind="models",
        action="promote",
        champion=champion,
        challengers=("fraud_mlp-1",),
        registry_sha256="ab" * 32,
        issued_at_ms=int(time.time() * 1000),
        issued_by=issued_by,
    )


class Receiver:
    """A control agent and what it received."""

    def __init__(self, settings: Settings) -> None:
        self.got: list[ControlMessage] = []
        self.agent: BatchAgent = control_agent(settings, self.got.append)

    def real(self) -> list[str]:
        """Who issued each message received, probes left out."""
        return [m.issued_by for m in self.got if not m.issued_by.startswith("probe-")]

    def probed(self) -> bool:
        return any(m.issued_by.startswith("probe-") for m in self.got)


async def _until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {WAIT_S:g} s")
        await asyncio.sleep(0.1)


async def _publish(settings: Settings, message: ControlMessage) -> int:
    return await asyncio.to_thread(publish_control, settings, message)


async def _live(settings: Settings, receivers: list[Receiver]) -> None:
    """Until each receiver has its partition and reads from the end: probes go out until
    each has seen one (with auto.offset.reset=latest, a message sent before a consumer's
    position is set is never read by it, so "assigned" alone is not enough)."""
    sent = 0
    deadline = time.monotonic() + WAIT_S
    while not all(r.probed() for r in receivers):
        if time.monotonic() > deadline:
            raise AssertionError(f"a control agent saw none of {sent} probes in {WAIT_S:g} s")
        await _publish(settings, _message(f"probe-{sent}"))
        sent += 1
        await asyncio.sleep(0.5)


async def _scenario(settings: Settings) -> tuple[Receiver, Receiver, Receiver]:
    first, second = Receiver(settings), Receiver(settings)
    late: Receiver | None = None
    await first.agent.start()
    await second.agent.start()
    try:
        await _live(settings, [first, second])
        # One group per process, as the broker sees it: each has one member, this one.
        groups = [first.agent.group, second.agent.group]
        assert len(set(groups)) == 2
        admin = make_admin(settings)
        for name, future in admin.describe_consumer_groups(groups).items():
            members = future.result().members
            assert len(members) == 1, (name, members)
            assert members[0].client_id == f"{settings.worker_id}-control"
        # One promotion: both hear it (a faust agent in the app's group: only one would).
        await _publish(settings, _message("ana@ops"))
        await _until(
            lambda: "ana@ops" in first.real() and "ana@ops" in second.real(),
            "both control agents did not receive the promotion",
        )
        # A message sent before a process starts never reaches it: no replay on restart.
        before = await _publish(settings, _message("before@ops", champion="fraud_lightgbm-1"))
        await _until(lambda: "before@ops" in first.real(), "the first agent missed a message")
        late = Receiver(settings)
        await late.agent.start()
        await _live(settings, [late])
        after = await _publish(settings, _message("after@ops"))
        assert after > before
        await _until(
            lambda: all("after@ops" in r.real() for r in (first, second, late)),
            "a control agent missed the message sent after the late one started",
        )
    finally:
        for receiver in (first, second, late):
            if receiver is not None:
                await receiver.agent.stop()
    assert late is not None
    return first, second, late


def test_every_process_gets_each_broadcast_and_none_replays(settings: Settings) -> None:
    # Topics are not auto-created: before `topics apply` a broadcast fails within a second,
    # saying so.
    started = time.monotonic()
    with pytest.raises(DeliveryError, match=r"Unknown topic .*\(create it: streamscore topics"):
        publish_control(settings, _message("early@ops"))
    assert time.monotonic() - started < 5
    admin = make_admin(settings)
    assert apply_topics(settings, [CONTROL], admin).ok
    started = time.monotonic()
    try:
        first, second, late = asyncio.run(_scenario(settings))
        assert first.real() == ["ana@ops", "before@ops", "after@ops"]
        assert second.real() == ["ana@ops", "before@ops", "after@ops"]
        assert late.real() == ["after@ops"]  # neither the old promotion nor "before"
        assert first.got[-1].champion == "fraud_lightgbm-2"
        # No group keeps an offset: a restarted process has nothing to resume from.
        topic = topic_name(settings, CONTROL)
        for receiver in (first, second, late):
            reader = make_consumer(settings, receiver.agent.group)  # never subscribes
            try:
                (committed,) = reader.committed([TopicPartition(topic, 0)], timeout=10)
            finally:
                reader.close()
            assert committed.offset == OFFSET_INVALID, receiver.agent.group
    finally:
        delete_topics(settings)
    assert time.monotonic() - started < 60


def test_promote_and_rollback_reach_a_running_agent(settings: Settings, tmp_path: Path) -> None:
    """``streamscore model promote``/``rollback`` broadcast what they wrote to the registry."""
    from models import train_synthetic
    from streams.cli.model import model
    from tests.unit.test_models_cli import _serving_spec

    cli_settings = settings.model_copy(
        update={"models_dir": tmp_path, "providers": "cpu", "clickhouse_dsn": "http://127.0.0.1:9"}
    )
    spec = _serving_spec(cli_settings)
    for version in ("1", "2"):
        train_synthetic(
            tmp_path / "artifacts", "lightgbm", spec=spec, version=version, n_estimators=5
        )
    assert apply_topics(settings, [CONTROL], make_admin(settings)).ok
    registry = tmp_path / "registry.yaml"
    outputs: list[str] = []
    digests: list[str] = []

    async def scenario() -> Receiver:
        receiver = Receiver(settings)
        await receiver.agent.start()
        try:
            await _live(settings, [receiver])
            for args in (
                ["promote", "fraud_lightgbm-1"],
                ["promote", "fraud_lightgbm-2", "--force"],
                ["rollback"],
            ):
                result = await asyncio.to_thread(
                    CliRunner().invoke, model, args, obj=cli_settings, catch_exceptions=False
                )
                assert result.exit_code == 0, result.output
                outputs.append(result.output)
                digests.append(hashlib.sha256(registry.read_bytes()).hexdigest())
            await _until(lambda: len(receiver.real()) == 3, "the agent did not get 3 broadcasts")
        finally:
            await receiver.agent.stop()
        return receiver

    try:
        receiver = asyncio.run(scenario())
    finally:
        delete_topics(settings)
    got = [m for m in receiver.got if not m.issued_by.startswith("probe-")]
    assert [(m.action, m.champion) for m in got] == [
        ("promote", "fraud_lightgbm-1"),
        ("promote", "fraud_lightgbm-2"),
        ("rollback", "fraud_lightgbm-1"),
    ]
    assert [m.registry_sha256 for m in got] == digests
    assert all(
        "broadcast to every worker process" in out and "warning" not in out for out in outputs
    )
