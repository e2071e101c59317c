"""``streamscore worker``: the faust worker process."""

from __future__ import annotations

import click

from streams.settings import Settings


@click.command()
@click.pass_obj
def worker(settings: Settings) -> None:
    """Run the faust worker: ingestion (schema on write, DLQ) and the later stages.

    Run more processes with the same STREAMSCORE_APP_ID to scale out over partitions.
    Stops cleanly on SIGINT/SIGTERM, committing what was handed off.
    """
    from streams.errors import InfraError
    from streams.infra.kafka import LocalKafka
    from streams.worker import run_worker

    if settings.manages_local_kafka and LocalKafka(settings).pid() is None:
        raise InfraError(
            f"no local Kafka broker runs for {settings.home}; start it with "
            "'streamscore infra up' or set STREAMSCORE_KAFKA_BOOTSTRAP"
        )
    run_worker(settings)
