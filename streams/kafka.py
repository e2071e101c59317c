"""confluent-kafka client construction in one place: every producer, consumer and admin
client streamscore makes gets its configuration here, security settings included.

The config dicts hold passwords in the clear (librdkafka wants them so): never log one.
"""

from __future__ import annotations

from typing import Any

from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import AdminClient

from streams.errors import ConfigError
from streams.kafka_logging import librdkafka_logger
from streams.redact import redact
from streams.settings import Settings

__all__ = [
    "admin_config",
    "consumer_config",
    "kafka_security_config",
    "make_admin",
    "make_consumer",
    "make_producer",
    "producer_config",
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
    """An admin client from :func:`admin_config`; ConfigError when librdkafka refuses it."""
    admin: AdminClient = _built("admin client", AdminClient, admin_config(settings, **overrides))
    return admin
