"""``streamscore worker``: the faust worker process."""

from __future__ import annotations

import click

from streams.settings import Settings


@click.command()
@click.pass_obj
def worker(settings: Settings) -> None:
    """Run the worker: STREAMSCORE_SCORERS scoring processes (default one per core) and
    one for the other stages, supervised; with STREAMSCORE_SCORERS=0 every stage of
    STREAMSCORE_AGENTS runs in this process.

    Run more processes with the same STREAMSCORE_APP_ID to scale out over partitions.
    Stops cleanly on SIGINT/SIGTERM, committing what was handed off.
    """
    from streams.errors import InfraError
    from streams.infra.kafka import LocalKafka
    from streams.runtime.supervisor import run_supervisor
    from streams.worker import run_worker

    if settings.manages_local_kafka and LocalKafka(settings).pid() is None:
        raise InfraError(
            f"no local Kafka broker runs for {settings.home}; start it with "
            "'streamscore infra up' or set STREAMSCORE_KAFKA_BOOTSTRAP"
        )
    if settings.scoring_processes and "score" in settings.agent_names:
        _log_to_stderr(settings)
        run_supervisor(settings)
    else:
        run_worker(settings)


def _log_to_stderr(settings: Settings) -> None:
    import logging

    from streams.monitoring.logs import configure_json_logging

    if settings.log_format == "json":
        configure_json_logging(settings.log_level.upper(), settings.worker_id)
    else:
        logging.basicConfig(
            level=settings.log_level.upper(), format="[%(asctime)s] [%(process)d] %(message)s"
        )
