"""The faust app factory. Building the app does no I/O; agents are registered by the worker."""

from __future__ import annotations

import faust

from streams.settings import Settings


def create_app(settings: Settings, broker_count: int = 1) -> faust.App:
    """A faust app configured from settings: raw bytes in, manual hand-off out.

    Every agent runs at concurrency 1: faust-streaming #606 commits past in-flight
    messages otherwise. Scale out with more worker processes in the same group.
    """
    broker = ";".join(f"kafka://{server}" for server in settings.bootstrap_servers.split(","))
    return faust.App(
        settings.app_id,
        broker=broker,
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
