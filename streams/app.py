"""The faust app factory. Building the app does no network I/O; agents are registered by
the worker. With Kafka TLS on, it reads the CA, certificate and key files named in Settings."""

from __future__ import annotations

import ssl

import faust
from faust.types.auth import CredentialsT

from streams.errors import ConfigError
from streams.settings import Settings

__all__ = ["broker_credentials", "create_app"]


def _ssl_context(settings: Settings) -> ssl.SSLContext:
    """A client TLS context verifying the brokers (CA file or the system's), with mTLS when
    a certificate is given: what librdkafka does with the same ``kafka_ssl_*`` settings."""
    ca = settings.kafka_ssl_ca_location
    try:
        context = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=None if ca is None else str(ca)
        )
        if settings.kafka_ssl_certificate_location is not None:
            key = settings.kafka_ssl_key_location
            password = settings.kafka_ssl_key_password
            context.load_cert_chain(
                str(settings.kafka_ssl_certificate_location),
                None if key is None else str(key),
                None if password is None else password.get_secret_value(),
            )
    except OSError as exc:  # ssl.SSLError included; neither quotes the key password
        files = {
            "STREAMSCORE_KAFKA_SSL_CA_LOCATION": ca,
            "STREAMSCORE_KAFKA_SSL_CERTIFICATE_LOCATION": settings.kafka_ssl_certificate_location,
            "STREAMSCORE_KAFKA_SSL_KEY_LOCATION": settings.kafka_ssl_key_location,
        }
        named = ", ".join(f"{name}={path}" for name, path in files.items() if path is not None)
        raise ConfigError(
            f"cannot load the Kafka TLS files for faust ({named or 'system CA store'}): {exc} "
            "(a wrong STREAMSCORE_KAFKA_SSL_KEY_PASSWORD fails like this too)"
        ) from exc
    return context


def broker_credentials(settings: Settings) -> CredentialsT | None:
    """faust's (aiokafka's) credentials for the security settings; None for PLAINTEXT."""
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    context = _ssl_context(settings) if protocol.endswith("SSL") else None
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    password = settings.kafka_sasl_password
    # SASLCredentials picks SASL_SSL when given a context, SASL_PLAINTEXT without one.
    return faust.SASLCredentials(
        username=settings.kafka_sasl_username,
        password=None if password is None else password.get_secret_value(),
        ssl_context=context,
        mechanism=settings.kafka_sasl_mechanism,
    )


def create_app(settings: Settings, broker_count: int = 1) -> faust.App:
    """A faust app configured from settings: raw bytes in, manual hand-off out.

    Every agent runs at concurrency 1: faust-streaming #606 commits past in-flight
    messages otherwise. Scale out with more worker processes in the same group.
    """
    broker = ";".join(f"kafka://{server}" for server in settings.bootstrap_servers.split(","))
    return faust.App(
        settings.app_id,
        broker=broker,
        broker_credentials=broker_credentials(settings),
        key_serializer="raw",
        value_serializer="raw",
        store="memory://",
        datadir=str(settings.home / "faust"),
        web_enabled=settings.web_enabled,
        web_port=settings.web_port,
        web_host="127.0.0.1",
        web_bind="127.0.0.1",  # the /sql endpoint has no authentication: loopback only
        producer_acks=-1,
        consumer_auto_offset_reset="earliest",
        # Commit often: at most ~1 s of work is re-done after a crash.
        broker_commit_interval=1.0,
        broker_commit_every=20_000,
        # A DLQ'd 10 MB payload must still be fetchable (Kafka returns at least one
        # oversized record, but a larger fetch limit keeps the partition flowing).
        consumer_max_fetch_size=16 * 1024 * 1024,
        stream_buffer_maxsize=16_384,
        stream_wait_empty=False,
        # faust's own topics (leader election): 3 replicas, or all the brokers there are.
        topic_replication_factor=min(3, max(1, broker_count)),
        topic_partitions=6,
    )
