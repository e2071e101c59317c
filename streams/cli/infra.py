"""``streamscore infra up | down | status``: the local Kafka broker."""

from __future__ import annotations

import click

from streams.settings import Settings


@click.group()
def infra() -> None:
    """Start, stop and inspect the local Kafka 3.9.2 broker (KRaft, one node).

    The jars are fetched once from Maven Central with Maven. When
    STREAMSCORE_KAFKA_BOOTSTRAP names another cluster, nothing is started.
    """


@infra.command()
@click.pass_obj
def install(settings: Settings) -> None:
    """Fetch the Kafka 3.9.2 jars from Maven Central with Maven (once, cached)."""
    from streams.infra.kafka import LocalKafka

    kafka = LocalKafka(settings)
    if kafka.install():
        click.echo(f"installed Kafka jars into {kafka.libs_dir}")
    else:
        click.echo(f"Kafka jars already installed in {kafka.libs_dir}")


@infra.command()
@click.option("--timeout", default=90.0, show_default=True, help="Seconds to wait for the broker.")
@click.pass_obj
def up(settings: Settings, timeout: float) -> None:
    """Install (once), format (once) and start the broker; wait until it answers."""
    from streams.infra.kafka import LocalKafka

    if not settings.manages_local_kafka:
        click.echo(f"using external Kafka at {settings.bootstrap_servers}; nothing to start")
        return
    kafka = LocalKafka(settings)
    if not kafka.installed():
        click.echo(f"installing Kafka jars with Maven into {kafka.libs_dir} (once)...")
    status = kafka.up(timeout=timeout)
    click.echo(
        f"kafka {status.detail}: {status.bootstrap} (pid {status.pid}, log {status.log_file})"
    )


@infra.command()
@click.pass_obj
def down(settings: Settings) -> None:
    """Stop the broker this project started."""
    from streams.infra.kafka import LocalKafka

    if not settings.manages_local_kafka:
        click.echo(f"using external Kafka at {settings.bootstrap_servers}; nothing to stop")
        return
    if LocalKafka(settings).down():
        click.echo("kafka stopped")
    else:
        click.echo("kafka is not running (nothing to stop)")


@infra.command()
@click.pass_obj
def status(settings: Settings) -> None:
    """Whether the broker runs, where, and its topics. Exit 1 when it is not running."""
    from streams.infra.kafka import LocalKafka

    state = LocalKafka(settings).status()
    where = "external" if not state.managed else f"local, state {state.state_dir}"
    click.echo(f"kafka: {'running' if state.running else 'not running'} ({where})")
    click.echo(f"  bootstrap: {state.bootstrap}")
    if state.pid:
        click.echo(f"  pid: {state.pid}  log: {state.log_file}")
    if state.detail:
        click.echo(f"  {state.detail}")
    for topic in state.topics:
        click.echo(f"  topic {topic}")
    if not state.running:
        raise SystemExit(1)
