"""The control topic without a broker: the message codec, the handler, publish failures, and
``streamscore model promote`` when no broker answers."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from streams.agents.batching import group_id
from streams.errors import DeliveryError
from streams.kafka import consumer_config
from streams.runtime.control import (
    ControlMessage,
    ControlMessageError,
    control_group,
    control_handler,
    decode,
    encode,
    models_message,
    publish_control,
)
from streams.settings import Settings
from streams.topics import CONTROL, declared_topics

# Nothing listens on the discard port: librdkafka's connection is refused at once.
NO_BROKER = "127.0.0.1:9"

MESSAGE = ControlMessage(
    kind="models",
    action="promote",
    champion="fraud_lightgbm-2",
    challengers=("fraud_mlp-1", "fraud_lightgbm-3"),
    registry_sha256="ab" * 32,
    issued_at_ms=1_760_000_000_123,
    issued_by="ana@ops-1",
)


class FakeMessage:
    """What the control handler reads of a confluent-kafka Message."""

    def __init__(self, value: bytes | None, offset: int) -> None:
        self._value, self._offset = value, offset

    def topic(self) -> str:
        return "p.control"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def value(self) -> bytes | None:
        return self._value


def test_round_trip() -> None:
    assert decode(encode(MESSAGE)) == MESSAGE
    no_champion = ControlMessage("models", "rollback", None, (), "cd" * 32, 5, "u@h")
    assert decode(encode(no_champion)) == no_champion


def test_models_message_digests_the_registry_file(tmp_path: Path) -> None:
    registry = tmp_path / "registry.yaml"
    registry.write_bytes(b"champion: fraud_lightgbm-2\n")
    message = models_message("rollback", "fraud_lightgbm-2", ["fraud_mlp-1"], registry)
    assert message.registry_sha256 == hashlib.sha256(registry.read_bytes()).hexdigest()
    assert (message.kind, message.action, message.challengers) == (
        "models", "rollback", ("fraud_mlp-1",)
    )  # fmt: skip
    assert abs(message.issued_at_ms - time.time() * 1000) < 60_000
    assert "@" in message.issued_by


def _with(**changes: object) -> bytes:
    data = orjson.loads(encode(MESSAGE))
    for key, value in changes.items():
        if value is ...:
            del data[key]
        else:
            data[key] = value
    return orjson.dumps(data)


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (None, "no value"),
        (b"{not json", "not JSON"),
        (b"[1, 2]", "a JSON list"),
        (b"x" * 70_000, "more than"),
        (_with(v=2), "format version 2"),
        (_with(v=True), "format version True"),
        (_with(v=...), "format version None"),
        (_with(kind="features"), "unknown kind 'features'"),
        (_with(action="retire"), "unknown models action 'retire'"),
        (_with(champion=7), "champion is a int"),
        (_with(challengers="fraud_mlp-1"), "challengers is a str"),
        (_with(challengers=["a", 1]), "not all strings"),
        (_with(issued_at_ms="now"), "issued_at_ms is a str"),
        (_with(issued_at_ms=True), "issued_at_ms is a boolean"),
        (_with(registry_sha256=...), "no 'registry_sha256'"),
        (_with(issued_by=None), "issued_by is a NoneType"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_decode_says_what_is_malformed(value: bytes | None, why: str) -> None:
    with pytest.raises(ControlMessageError, match="^.*" + why.replace("(", r"\(")):
        decode(value)


def test_handler_skips_malformed_messages_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    got: list[ControlMessage] = []
    second = ControlMessage("models", "rollback", "fraud_lightgbm-1", (), "ef" * 32, 9, "b@h")
    batch = [
        FakeMessage(b"\x00garbage", 10),
        FakeMessage(encode(MESSAGE), 11),
        FakeMessage(_with(kind="features"), 12),
        FakeMessage(encode(second), 13),
    ]
    with caplog.at_level(logging.INFO, logger="streams.runtime.control"):
        asyncio.run(control_handler(got.append)(batch))  # type: ignore[arg-type]
    assert got == [MESSAGE, second]  # in offset order, malformed ones left out
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "p.control[0]@10 skipped: not JSON" in warnings[0]
    assert "p.control[0]@12 skipped: unknown kind 'features'" in warnings[1]


def test_handler_survives_a_failing_callback_and_awaits_coroutines(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """BatchAgent exits the process when a handler raises: the control handler never does."""
    seen: list[str] = []

    async def on_message(message: ControlMessage) -> None:
        await asyncio.sleep(0)
        if message.action == "promote":
            raise RuntimeError("registry unreadable")
        seen.append(message.action)

    rollback = ControlMessage("models", "rollback", "m-1", (), "00" * 32, 1, "u@h")
    batch = [FakeMessage(encode(MESSAGE), 1), FakeMessage(encode(rollback), 2)]
    asyncio.run(control_handler(on_message)(batch))  # type: ignore[arg-type]
    assert seen == ["rollback"]  # the message after the failure is still handled
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "registry poll picks the change up" in errors[0].getMessage()
    assert errors[0].exc_info is not None


def test_each_process_has_a_group_of_its_own_and_the_consumer_uses_it(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, app_id="shop")
    first, second = control_group(settings), control_group(settings)
    assert first != second
    assert first.startswith(f"shop-control-{settings.worker_id}-")
    # BatchAgent passes group_id(settings, name) first and consumer_config after it: the
    # override must win, or every process would share one group and one would get each
    # message.
    built = consumer_config(settings, group_id(settings, "control"), **{"group.id": first})
    assert built["group.id"] == first


def test_publish_without_a_broker_fails_fast_with_where_and_why(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, kafka_bootstrap=NO_BROKER, topic_prefix="p.")
    started = time.monotonic()
    with pytest.raises(DeliveryError) as caught:
        publish_control(settings, MESSAGE, timeout=20)
    assert time.monotonic() - started < 10  # refused connections: no 20 s wait
    text = str(caught.value)
    assert "models promote broadcast not delivered to control topic p.control" in text
    assert f"at {NO_BROKER}: no broker reachable" in text and "Connection refused" in text


def test_publish_gives_up_within_its_timeout(tmp_path: Path) -> None:
    # A TEST-NET-1 address (RFC 5737) is never routed: silence, or "unreachable" at once.
    settings = Settings(home=tmp_path, kafka_bootstrap="192.0.2.1:9092")
    started = time.monotonic()
    with pytest.raises(DeliveryError, match="models promote broadcast not delivered to control"):
        publish_control(settings, MESSAGE, timeout=1)
    assert time.monotonic() - started < 5


def test_control_topic_is_declared() -> None:
    specs = {s.name: s for s in declared_topics(["transaction"])}
    assert specs["control"] == CONTROL
    assert CONTROL.partitions == 1 and CONTROL.cleanup_policy == "delete"
    # Retention applies per closed segment: a quiet topic must roll its segments sooner.
    assert int(dict(CONTROL.extra)["segment.ms"]) < CONTROL.retention_ms


# -- streamscore model promote / rollback with no broker ------------------------------------


@pytest.fixture(scope="module")
def models_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    from models import train_synthetic
    from tests.unit.test_models_cli import _serving_spec

    root = tmp_path_factory.mktemp("models")
    settings = Settings(
        models_dir=root,
        providers="cpu",
        clickhouse_dsn="http://127.0.0.1:9",  # no comparison evidence: --force
        kafka_bootstrap=NO_BROKER,
    )
    spec = _serving_spec(settings)
    for version in ("1", "2"):
        train_synthetic(root / "artifacts", "lightgbm", spec=spec, version=version, n_estimators=5)
    return settings


def test_promote_and_rollback_stand_when_the_broadcast_fails(
    models_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    from streams.agents.score import RELOAD_EVERY_S
    from streams.cli.model import REGISTRY_POLL_S, model
    from streams.scoring.registry import load_registry

    assert REGISTRY_POLL_S == RELOAD_EVERY_S  # the warning's promise is the scorers' poll
    path = models_settings.models_dir / "registry.yaml"
    runner = CliRunner()
    for args, champion in (
        (["promote", "fraud_lightgbm-1"], "fraud_lightgbm-1"),
        (["promote", "fraud_lightgbm-2", "--force"], "fraud_lightgbm-2"),
        (["rollback"], "fraud_lightgbm-1"),
    ):
        result = runner.invoke(model, args, obj=models_settings, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        assert load_registry(path).champion == champion
        action = args[0]
        assert f"warning: models {action} broadcast not delivered" in result.output
        assert f"The {action} stands ({path} is written)" in result.output
        assert f"within {REGISTRY_POLL_S} s" in result.output
        assert "Traceback" not in result.output
    # The warning quotes librdkafka's reason: its own log lines are not repeated on stderr.
    assert not [r for r in caplog.records if r.name == "streams.librdkafka"]


def test_a_models_broadcast_makes_the_scoring_stage_reload_before_its_next_batch(
    tmp_path: Path,
) -> None:
    from types import SimpleNamespace

    from streams.agents.score import Scoring

    registry = tmp_path / "registry.yaml"
    registry.write_text("champion: fraud_lightgbm-2\n")
    soon: list[bool] = []
    state = SimpleNamespace(
        _registry_mtime=registry.stat().st_mtime, reload_soon=lambda: soon.append(True)
    )
    Scoring.on_control(state, models_message("promote", "fraud_lightgbm-2", [], registry))  # type: ignore[arg-type]
    # The registry is read again at once (no 30 s wait), as if it had changed since its stamp
    assert soon == [True]
    assert state._registry_mtime != registry.stat().st_mtime


def test_the_reload_timer_loads_off_the_batch_path_and_the_next_batch_swaps(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import threading
    from types import SimpleNamespace

    from streams.agents.score import Scoring

    used: list[object] = []
    swapped: list[str] = []
    recorded: list[bool] = []
    run2 = SimpleNamespace(describe=lambda: "run-2")  # the runs held, by event time
    features = SimpleNamespace(
        fetch_held=lambda pending=None: run2, use_held=used.append, run_id="run-1"
    )
    holder = SimpleNamespace(swap=lambda build: swapped.append(build()))

    def broken_models() -> str:
        raise ValueError("artifact hash mismatch")

    state = SimpleNamespace(
        features=features, holder=holder, _reload_lock=threading.Lock(), _pending=None,
        _pending_lock=threading.Lock(),
        _registry_mtime=1.0, _registry_stamp=lambda: 2.0, _load_models=lambda: "models v2",
        record_models=lambda: recorded.append(True), _serving=lambda: "v1",
    )  # fmt: skip
    Scoring.check_reload(state)  # type: ignore[arg-type]
    assert used == [] and swapped == []  # loaded, not yet served: a batch may be running
    Scoring.apply_reload(state)  # type: ignore[arg-type]
    assert used == [run2] and swapped == ["models v2"] and recorded == [True]
    Scoring.apply_reload(state)  # type: ignore[arg-type]
    assert len(used) == 1  # applied once

    state._registry_stamp, state._load_models = lambda: 3.0, broken_models
    features.fetch_held = lambda pending=None: None
    with caplog.at_level(logging.ERROR):
        Scoring.check_reload(state)  # type: ignore[arg-type]
    assert "model reload failed, keeping v1: artifact hash mismatch" in caplog.text
    assert state._pending is None  # nothing to swap: the old set keeps serving
