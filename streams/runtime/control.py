"""The control topic: model promotions and rollbacks broadcast to every worker process.

``streamscore model promote`` and ``rollback`` write ``models/registry.yaml`` and then
publish one ``ControlMessage`` here; every process running the control agent hears it
and reloads at once, instead of waiting for its 30 s poll of the registry's mtime.

Why not a faust agent: a faust app has one consumer, and every agent's topic is read
through it in the app's one group, ``app_id``: ``App.consumer`` → ``_new_consumer``
(faust/app/base.py:2074, 1921) → ``AIOKafkaConsumerThread._create_worker_consumer``
passes ``group_id=conf.id`` (faust/transport/drivers/aiokafka.py:606); ``conf.id`` is
the app id (faust/types/settings/settings.py:266-273), also the group that
``Consumer.commit`` commits to (faust/transport/consumer.py:335; faust-streaming
0.15.3). A message on a faust topic reaches ONE process of the group: the one assigned
its partition. So the control agent is a ``BatchAgent`` in a group of its own per
process, ``<app_id>-control-<worker_id>-<random>``: every process gets every message.

Delivery: at most once per process, best effort, with the registry file as the truth.

* Each process starts at the end of the topic (``auto.offset.reset=latest``) and never
  commits an offset, so a restart replays no old promotion (a starting process loads
  the registry itself). A message published while a process is (re)joining, before its
  position is set, is not seen by it: its registry poll catches the change.
* A stopped process leaves an EMPTY group holding no offsets; Kafka deletes such groups
  in its periodic offsets cleanup (``offsets.retention.check.interval.ms``, 10 min).
* A malformed message is logged with a warning and skipped; a failing ``on_message``
  is logged as an error. Neither stops the agent or the process (``BatchAgent`` would
  exit on a handler error), since the poll remains as a backstop.
* ``publish_control`` waits for the broker's acknowledgement (acks=all, idempotent) and
  raises ``DeliveryError`` when there is none; callers that have already written the
  registry report it as a warning: the change still reaches every process by the poll.

On several machines each process reloads the registry file it sees, so the models
directory must be shared; ``registry_sha256`` tells a receiver whether its copy is the
one that was promoted.

Topic: ``control``, one partition (one order for every reader), delete policy with a
day's retention (``streams.topics.CONTROL``).
"""

from __future__ import annotations

import getpass
import hashlib
import inspect
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast, get_args

import orjson
from confluent_kafka import KafkaError as ConfluentKafkaError
from confluent_kafka import Message

from streams.agents.batching import EXIT_UNEXPECTED, BatchAgent, Handler, group_id
from streams.errors import DeliveryError, StreamscoreError
from streams.kafka import make_producer
from streams.settings import Settings
from streams.text import bounded
from streams.topics import CONTROL, topic_name

if TYPE_CHECKING:  # the CLI imports this module to publish: no faust import for that
    import faust

__all__ = [
    "AGENT",
    "ControlMessage",
    "ControlMessageError",
    "ModelsAction",
    "OnControl",
    "control_agent",
    "control_group",
    "control_handler",
    "decode",
    "encode",
    "issuer",
    "models_message",
    "publish_control",
    "read_control",
    "register_control_agent",
]

log = logging.getLogger("streams.runtime.control")

AGENT = "control"
VERSION = 1  # the message format; a reader skips (with a warning) versions it does not know
ModelsAction = Literal["promote", "rollback"]
Kind = Literal["models"]
_KINDS: tuple[str, ...] = get_args(Kind)
_ACTIONS: tuple[str, ...] = get_args(ModelsAction)
# A control message is a few hundred bytes; a larger one is not ours.
MAX_MESSAGE_BYTES = 64 * 1024
# How much of a malformed message a warning quotes.
_QUOTE_CHARS = 200

# What a delivery reports for a topic that does not exist (they are not auto-created).
_NO_TOPIC = (ConfluentKafkaError.UNKNOWN_TOPIC_OR_PART, ConfluentKafkaError._UNKNOWN_TOPIC)

_T = TypeVar("_T")

OnControl = Callable[["ControlMessage"], Awaitable[None] | None]


class ControlMessageError(StreamscoreError):
    """A control message could not be decoded; the reader skips it (nothing reloads)."""


@dataclass(frozen=True, slots=True)
class ControlMessage:
    """One broadcast: the model registry changed (``kind="models"``).

    ``champion`` and ``challengers`` are the serving model ids as written;
    ``registry_sha256`` is the digest of ``registry.yaml`` right after the write, so a
    receiver can tell whether the file it reads is the one promoted (on a machine whose
    models directory has not caught up yet, it is not).
    """

    kind: Kind
    action: ModelsAction
    champion: str | None
    challengers: tuple[str, ...]
    registry_sha256: str
    issued_at_ms: int
    issued_by: str

    def describe(self) -> str:
        """One line for logs and the CLI: ``models promote: champion fraud_lightgbm-2, ...``."""
        models = f"champion {self.champion or '(none)'}"
        if self.challengers:
            models += f", challengers {', '.join(self.challengers)}"
        return (
            f"{self.kind} {self.action}: {models} (registry sha256 "
            f"{self.registry_sha256[:12]}, by {self.issued_by})"
        )


def encode(message: ControlMessage) -> bytes:
    """``message`` as JSON (orjson), with the format version."""
    return orjson.dumps(
        {
            "v": VERSION,
            "kind": message.kind,
            "action": message.action,
            "champion": message.champion,
            "challengers": list(message.challengers),
            "registry_sha256": message.registry_sha256,
            "issued_at_ms": message.issued_at_ms,
            "issued_by": message.issued_by,
        }
    )


def decode(value: bytes | None) -> ControlMessage:
    """The message in ``value``; ``ControlMessageError`` saying what is wrong otherwise."""
    if value is None:
        raise ControlMessageError("no value")
    if len(value) > MAX_MESSAGE_BYTES:
        raise ControlMessageError(f"{len(value)} bytes, more than {MAX_MESSAGE_BYTES}")
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise ControlMessageError(f"not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ControlMessageError(f"a JSON {type(data).__name__}, not an object")
    version = data.get("v")
    if type(version) is not int or version != VERSION:  # (True == 1: not a version)
        raise ControlMessageError(f"format version {version!r}, this reader knows {VERSION}")
    kind = _field(data, "kind", str)
    if kind not in _KINDS:
        raise ControlMessageError(f"unknown kind {kind!r} (known: {', '.join(_KINDS)})")
    action = _field(data, "action", str)
    if action not in _ACTIONS:
        raise ControlMessageError(f"unknown {kind} action {action!r} ({', '.join(_ACTIONS)})")
    champion = data.get("champion")
    if champion is not None and not isinstance(champion, str):
        raise ControlMessageError(f"champion is a {type(champion).__name__}, not a string")
    challengers = _field(data, "challengers", list)
    if not all(isinstance(c, str) for c in challengers):
        raise ControlMessageError("challengers are not all strings")
    issued_at_ms = _field(data, "issued_at_ms", int)
    if isinstance(issued_at_ms, bool):
        raise ControlMessageError("issued_at_ms is a boolean, not an integer")
    return ControlMessage(
        kind=cast(Kind, kind),
        action=cast(ModelsAction, action),
        champion=champion,
        challengers=tuple(challengers),
        registry_sha256=_field(data, "registry_sha256", str),
        issued_at_ms=issued_at_ms,
        issued_by=_field(data, "issued_by", str),
    )


def _field(data: dict[str, Any], name: str, kind: type[_T]) -> _T:
    if name not in data:
        raise ControlMessageError(f"no {name!r}")
    value = data[name]
    if not isinstance(value, kind):
        raise ControlMessageError(f"{name} is a {type(value).__name__}, not a {kind.__name__}")
    return value


def read_control(message: Message) -> ControlMessage | None:
    """A consumed message's ControlMessage; None (after a warning) when it is malformed."""
    try:
        return decode(message.value())
    except ControlMessageError as exc:
        log.warning(
            "control message %s[%s]@%s skipped: %s; value %s",
            message.topic(), message.partition(), message.offset(), exc,
            bounded(message.value() or b"", _QUOTE_CHARS, quote=True),
        )  # fmt: skip
        return None


def issuer() -> str:
    """``user@host``: who issued a control message (the uid when there is no user name)."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # no passwd entry (a container's arbitrary uid)
        user = f"uid{os.getuid()}"
    return f"{user}@{socket.gethostname()}"


def models_message(
    action: ModelsAction,
    champion: str | None,
    challengers: Sequence[str],
    registry_file: Path,
    *,
    issued_at_ms: int | None = None,
    issued_by: str | None = None,
) -> ControlMessage:
    """The broadcast after ``action`` wrote ``registry_file`` (read for its digest)."""
    return ControlMessage(
        kind="models",
        action=action,
        champion=champion,
        challengers=tuple(challengers),
        registry_sha256=hashlib.sha256(registry_file.read_bytes()).hexdigest(),
        issued_at_ms=int(time.time() * 1000) if issued_at_ms is None else issued_at_ms,
        issued_by=issuer() if issued_by is None else issued_by,
    )


def publish_control(
    settings: Settings, message: ControlMessage, timeout: float = 10.0, **config: Any
) -> int:
    """Publish ``message`` and wait for the broker's ack; returns its offset.

    ``DeliveryError`` when it is not acknowledged within ``timeout`` seconds or no broker
    can be reached: librdkafka reports "all brokers down" within milliseconds when every
    connection is refused, and the message is then purged, never sent later.
    ``ConfigError`` when librdkafka refuses the settings. ``config`` overrides the
    producer's librdkafka configuration (e.g. its ``logger``).
    """
    topic = topic_name(settings, CONTROL)
    offsets: list[int] = []
    failed: list[str] = []  # why it was not delivered
    reported: list[str] = []  # librdkafka's errors, in order

    def on_error(error: ConfluentKafkaError) -> None:
        reported.append(error.str())
        if error.code() == ConfluentKafkaError._ALL_BROKERS_DOWN or error.fatal():
            # "1/1 brokers are down" alone does not say why: the error before it does.
            failed.append("no broker reachable: " + "; ".join(reported[-2:]))

    def on_delivery(error: ConfluentKafkaError | None, delivered: Message) -> None:
        if error is None:
            offsets.append(int(delivered.offset() or 0))
        elif error.code() in _NO_TOPIC:
            failed.append(f"{error.str()} (create it: streamscore topics apply)")
        else:
            failed.append(error.str())

    producer = make_producer(
        settings,
        **{
            "linger.ms": 0,
            "message.timeout.ms": max(1, int(timeout * 1000)),
            # A missing topic fails after 1 s as "Unknown topic", not at the timeout as
            # "Message timed out" (topics are not auto-created).
            "topic.metadata.propagation.max.ms": 1000,
            "error_cb": on_error,
            "client.id": f"{settings.worker_id}-control",
            **config,
        },
    )
    what = f"{message.kind} {message.action} broadcast"
    where = f"control topic {topic} at {settings.bootstrap_servers}"
    try:
        value, key = encode(message), message.kind.encode()
        producer.produce(topic, value=value, key=key, on_delivery=on_delivery)
    except Exception as exc:  # KafkaException, BufferError: nothing was queued
        raise DeliveryError(f"{what} not sent to {where}: {exc}") from exc
    deadline = time.monotonic() + timeout
    try:
        while not offsets and not failed and time.monotonic() < deadline:
            producer.poll(0.05)
    finally:
        if not offsets:
            producer.purge()  # an unsent message must not go out later, out of order
            producer.flush(0)
    if offsets:
        return offsets[0]
    reason = failed[0] if failed else f"no acknowledgement within {timeout:g} s"
    raise DeliveryError(f"{what} not delivered to {where}: {reason}")


def control_handler(on_message: OnControl) -> Handler:
    """A BatchAgent handler: each well-formed message to ``on_message`` in offset order.

    It never raises: a malformed message is skipped with a warning (``read_control``) and
    an ``on_message`` failure is logged, because BatchAgent exits the process on a
    handler error and the registry poll still delivers the change.
    """

    async def handle(batch: Sequence[Message]) -> None:
        for raw in batch:
            message = read_control(raw)
            if message is None:
                continue
            log.info("control: %s", message.describe())
            try:
                result = on_message(message)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.error(
                    "control: handling %s failed; the registry poll picks the change up",
                    message.describe(), exc_info=True,
                )  # fmt: skip

    return handle


def control_group(settings: Settings) -> str:
    """A consumer group of this process alone: ``<app_id>-control-<worker_id>-<random>``.

    The random part keeps two processes apart even if they were given one worker id.
    """
    return f"{group_id(settings, AGENT)}-{settings.worker_id}-{uuid.uuid4().hex[:8]}"


def control_agent(settings: Settings, on_message: OnControl, **service: Any) -> BatchAgent:
    """A BatchAgent reading the control topic in a group of its own (``control_group``);
    ``service`` goes to ``mode.Service`` (``loop``, ``beacon``)."""
    group = control_group(settings)
    agent = BatchAgent(
        settings,
        AGENT,
        [topic_name(settings, CONTROL)],
        control_handler(on_message),
        exit_code=EXIT_UNEXPECTED,  # the handler never raises
        batch_size=100,
        batch_seconds=1.0,  # consume's wait: also how soon the agent stops
        consumer_config={
            # BatchAgent builds its consumer with group_id(settings, name); consumer_config
            # is applied after it (streams.kafka.consumer_config), so this group wins.
            "group.id": group,
            "auto.offset.reset": "latest",  # no replay after a restart
            "enable.auto.commit": False,  # nothing to resume from: the group keeps no offsets
        },
        **service,
    )
    # BatchAgent logs the group it joins (and would report lag) as .group: the real one.
    agent.group = group
    return agent


def register_control_agent(app: faust.App, settings: Settings, on_message: OnControl) -> BatchAgent:
    """Attach the control agent to the faust ``app``; ``on_message`` gets every broadcast.

    ``on_message`` runs on the event loop: keep it short (mark a reload due) or make it a
    coroutine that does the work in a thread.
    """
    agent = control_agent(settings, on_message, loop=app.loop, beacon=app.beacon)
    app.add_dependency(agent)
    return agent
