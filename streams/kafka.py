"""confluent-kafka client construction in one place: every producer, consumer and admin
client streamscore makes gets its configuration here, security settings included.

The config dicts hold passwords in the clear (librdkafka wants them so): never log one.
"""

from __future__ import annotations

import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka import KafkaError as ConfluentKafkaError
from confluent_kafka.admin import AdminClient

from streams.errors import ConfigError, KafkaError
from streams.kafka_logging import librdkafka_logger
from streams.redact import redact
from streams.settings import Settings

__all__ = [
    "Refusals",
    "admin_config",
    "admin_result",
    "consumer_config",
    "kafka_failure",
    "kafka_security_config",
    "make_admin",
    "make_consumer",
    "make_producer",
    "producer_config",
    "refusal_error",
]


def kafka_security_config(settings: Settings) -> dict[str, str]:
    """librdkafka's ``security.protocol``, SASL and TLS keys for ``settings``.

    Settings has already checked that the combination is complete (a SASL protocol has
    a mechanism, a user name and a password), so only what is set is passed on.
    """
    config: dict[str, str] = {"security.protocol": settings.kafka_security_protocol}
    if settings.kafka_sasl_mechanism is not None:
        config["sasl.mechanism"] = settings.kafka_sasl_mechanism
    if settings.kafka_sasl_username is not None:
        config["sasl.username"] = settings.kafka_sasl_username
    if settings.kafka_sasl_password is not None:
        config["sasl.password"] = settings.kafka_sasl_password.get_secret_value()
    if settings.kafka_ssl_ca_location is not None:
        config["ssl.ca.location"] = str(settings.kafka_ssl_ca_location)
    if settings.kafka_ssl_certificate_location is not None:
        config["ssl.certificate.location"] = str(settings.kafka_ssl_certificate_location)
    if settings.kafka_ssl_key_location is not None:
        config["ssl.key.location"] = str(settings.kafka_ssl_key_location)
    if settings.kafka_ssl_key_password is not None:
        config["ssl.key.password"] = settings.kafka_ssl_key_password.get_secret_value()
    return config


def _base(settings: Settings) -> dict[str, Any]:
    # librdkafka's own log lines go to Python logging (streams.librdkafka), not stderr.
    return {
        "bootstrap.servers": settings.bootstrap_servers,
        "logger": librdkafka_logger(),
        **kafka_security_config(settings),
    }


def producer_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    """Idempotent, acks=all producer: no loss and no broker-side duplicates on retry."""
    config: dict[str, Any] = {
        **_base(settings),
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "batch.num.messages": 10000,
        "compression.type": "lz4",
        "queue.buffering.max.messages": 1_000_000,
        "message.max.bytes": 16 * 1024 * 1024,
    }
    config.update(overrides)
    return config


def consumer_config(settings: Settings, group_id: str, **overrides: Any) -> dict[str, Any]:
    """A consumer that commits only when told to (no auto-commit)."""
    config: dict[str, Any] = {
        **_base(settings),
        "group.id": group_id,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": False,
        "fetch.max.bytes": 64 * 1024 * 1024,
    }
    config.update(overrides)
    return config


def admin_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    """An admin client's config: bootstrap and security, plus ``overrides``."""
    config = _base(settings)
    config.update(overrides)
    return config


def _built(kind: str, build: Any, config: dict[str, Any]) -> Any:
    # librdkafka checks its config (and loads TLS files) when the client is made: a
    # missing CA file or a wrong key password fails here, with a message that may quote
    # config values, so it is redacted and the cause (which quotes them too) dropped.
    try:
        return build(config)
    except KafkaException as exc:
        error = exc.args[0] if exc.args else exc
        reason = error.str() if hasattr(error, "str") else str(error)
        raise ConfigError(
            redact(
                f"cannot create a Kafka {kind} for {config['bootstrap.servers']} "
                f"(security.protocol={config.get('security.protocol')}): {reason}; "
                "check the STREAMSCORE_KAFKA_* settings"
            )
        ) from None


def make_producer(settings: Settings, **overrides: Any) -> Producer:
    """A producer from :func:`producer_config`; ConfigError when librdkafka refuses it."""
    producer: Producer = _built("producer", Producer, producer_config(settings, **overrides))
    return producer


def make_consumer(settings: Settings, group_id: str, **overrides: Any) -> Consumer:
    """A consumer from :func:`consumer_config`; ConfigError when librdkafka refuses it."""
    consumer: Consumer = _built(
        "consumer", Consumer, consumer_config(settings, group_id, **overrides)
    )
    return consumer


def make_admin(settings: Settings, **overrides: Any) -> AdminClient:
    """An admin client from :func:`admin_config`; ConfigError when librdkafka refuses it.
    Unless ``overrides`` bring their own ``error_cb``, it remembers an authentication or
    TLS refusal for :func:`kafka_failure` and :func:`admin_result`."""
    admin: AdminClient = _built("admin client", _Admin, admin_config(settings, **overrides))
    return admin


# librdkafka's client-level errors that mean "the cluster refuses this client", as the
# error_cb reports them while a request is waiting: the request itself later fails with
# a bare timeout or "all brokers down" that does not say why.
_AUTHENTICATION = frozenset(
    {ConfluentKafkaError._AUTHENTICATION, ConfluentKafkaError.SASL_AUTHENTICATION_FAILED}
)
_TLS = frozenset({ConfluentKafkaError._SSL})


class Refusals:
    """An ``error_cb`` keeping the first authentication or TLS error a client was given."""

    def __init__(self) -> None:
        self.authentication: str | None = None
        self.tls: str | None = None

    def __call__(self, error: ConfluentKafkaError) -> None:
        if error.code() in _AUTHENTICATION and self.authentication is None:
            self.authentication = error.str()
        elif error.code() in _TLS and self.tls is None:
            self.tls = error.str()


class _Admin(AdminClient):
    """An AdminClient that remembers why the cluster refused it, for :func:`kafka_failure`."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.refusals = Refusals()
        with_callback: dict[str, Any] = {"error_cb": self.refusals, **config}
        super().__init__(with_callback)


def _refused(settings: Settings, client: Any, what: str) -> KafkaError | None:
    """A KafkaError saying the cluster refused ``client`` (served callbacks first), or None."""
    if not isinstance(client, _Admin):
        return None
    client.poll(0)  # serves the error callbacks queued while a request waited
    return refusal_error(settings, client.refusals, what)


def refusal_error(settings: Settings, refusals: Refusals, what: str) -> KafkaError | None:
    """A KafkaError naming why the cluster refused a client whose ``error_cb`` is
    ``refusals`` (its callbacks already served), or None when it was not refused."""
    where = f"{what} {settings.bootstrap_servers}"
    if (reason := refusals.authentication) is not None:
        return KafkaError(
            redact(
                f"{where}: the cluster refused user {settings.kafka_sasl_username!r} "
                f"({settings.kafka_sasl_mechanism} over {settings.kafka_security_protocol}): "
                f"{reason}; check STREAMSCORE_KAFKA_SASL_USERNAME and "
                "STREAMSCORE_KAFKA_SASL_PASSWORD"
            )
        )
    if (reason := refusals.tls) is not None:
        return KafkaError(
            redact(
                f"{where}: the TLS handshake failed "
                f"(security.protocol={settings.kafka_security_protocol}): {reason}; check "
                "STREAMSCORE_KAFKA_SSL_CA_LOCATION (the CA that signed the brokers' certificate)"
            )
        )
    return None


def kafka_failure(
    settings: Settings, exc: KafkaException, what: str, client: Any = None
) -> KafkaError:
    """A KafkaError for a failed call: ``what`` failed at which servers, and why (when
    ``client`` came from :func:`make_admin`, an authentication or TLS refusal by name)."""
    if (refused := _refused(settings, client, what)) is not None:
        return refused
    error = exc.args[0] if exc.args else exc
    reason = error.str() if hasattr(error, "str") else str(error)
    return KafkaError(
        redact(
            f"{what} {settings.bootstrap_servers} "
            f"(security.protocol={settings.kafka_security_protocol}): {reason}"
        )
    )


def admin_result(
    settings: Settings, admin: AdminClient, future: Future[Any], what: str, timeout: float
) -> Any:
    """``future.result()`` of an admin request, failing at once with a KafkaError that says
    so when the cluster refuses the client (a wrong password, an unknown CA) instead of
    after ``timeout`` with a bare "timed out"."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return future.result(timeout=0.25)
        except FutureTimeout:
            if (refused := _refused(settings, admin, what)) is not None:
                raise refused from None
            if time.monotonic() >= deadline:
                raise KafkaError(
                    f"{what} {settings.bootstrap_servers}: no answer within {timeout:.0f}s"
                ) from None
        except KafkaException as exc:
            raise kafka_failure(settings, exc, what, admin) from None
