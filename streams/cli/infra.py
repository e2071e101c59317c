"""``streamscore infra up | down | status``: the local Kafka cluster (one node or more,
PLAINTEXT or SASL_SSL)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from streams.settings import Settings

if TYPE_CHECKING:
    from streams.infra.kafka import BrokerStatus

# Shown as where they are, never as what they are.
_SECRET_VARIABLES = ("STREAMSCORE_KAFKA_SASL_PASSWORD",)


@click.group()
def infra() -> None:
    """Start, stop and inspect the local Kafka 3.9.2 cluster (KRaft).

    One node by default; --brokers 3 starts three combined broker+controller nodes
    (replication 3, min.insync.replicas 2); --secure starts them with a SASL_SSL
    listener (SCRAM-SHA-512 users, a CA of their own). The jars are fetched once from
    Maven Central with Maven. When STREAMSCORE_KAFKA_BOOTSTRAP names another cluster,
    nothing is started.

    --redis (or STREAMSCORE_ONLINE_STORE=redis) also starts the Redis online store:
    Debian's redis-server on STREAMSCORE_REDIS_PORT, its data under <home>/redis; down
    and status include it when it runs.
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
@click.option("--timeout", default=90.0, show_default=True, help="Seconds to wait for the nodes.")
@click.option(
    "--brokers",
    type=click.IntRange(1, 9),
    default=None,
    help="Nodes to run (default: STREAMSCORE_KAFKA_BROKERS, 1).",
)
@click.option(
    "--secure",
    is_flag=True,
    help="A SASL_SSL listener with SCRAM-SHA-512 users and a local CA (also implied by "
    "STREAMSCORE_KAFKA_SECURITY_PROTOCOL=SASL_SSL).",
)
@click.option(
    "--redis",
    "with_redis",
    is_flag=True,
    help="Also the local Redis online store (redis-server on STREAMSCORE_REDIS_PORT; also "
    "implied by STREAMSCORE_ONLINE_STORE=redis).",
)
@click.pass_obj
def up(
    settings: Settings, timeout: float, brokers: int | None, secure: bool, with_redis: bool
) -> None:
    """Install (once), format (once) and start the nodes that do not run; wait until the
    cluster reports each. Prints the client settings when clients need more than the
    defaults (they are in the state folder's client.env)."""
    from streams.infra.kafka import LocalKafka

    if not settings.manages_local_kafka:
        click.echo(f"using external Kafka at {settings.bootstrap_servers}; nothing to start")
        _redis_up(settings, with_redis)
        return
    kafka = LocalKafka(settings)
    if not kafka.installed():
        click.echo(f"installing Kafka jars with Maven into {kafka.libs_dir} (once)...")
    status = kafka.up(timeout=timeout, brokers=brokers, secure=True if secure else None)
    layout = status.layout
    what = layout.describe() if layout is not None else "kafka"
    click.echo(
        f"kafka {status.detail}: {status.bootstrap} ({what}; pid {status.pid}, "
        f"log {status.log_file})"
    )
    _echo_nodes(status)
    if status.client_env is not None and layout is not None:
        defaults = LocalKafka(settings).client_settings(layout) == settings
        if not defaults:
            _echo_client_settings(status)
    _redis_up(settings, with_redis)


def _redis_up(settings: Settings, asked: bool) -> None:
    if not (asked or settings.online_store == "redis"):
        return
    from streams.infra.redis import LocalRedis

    redis = LocalRedis(settings)
    if not redis.managed:
        click.echo(f"using external Redis at {redis.url}; nothing to start")
        return
    state = redis.up()
    click.echo(f"redis {state.detail}: {state.url} (pid {state.pid}, log {state.log_file})")


def _redis_down(settings: Settings) -> None:
    from streams.infra.redis import LocalRedis

    if LocalRedis(settings).down():
        click.echo("redis stopped")


@infra.command()
@click.pass_obj
def down(settings: Settings) -> None:
    """Stop every node this project started (whatever its layout)."""
    from streams.infra.kafka import LocalKafka

    if not settings.manages_local_kafka:
        click.echo(f"using external Kafka at {settings.bootstrap_servers}; nothing to stop")
        _redis_down(settings)
        return
    stopped = LocalKafka(settings).down()
    if stopped:
        click.echo(f"kafka stopped ({stopped} node{'s' if stopped > 1 else ''})")
    else:
        click.echo("kafka is not running (nothing to stop)")
    _redis_down(settings)


@infra.command()
@click.pass_obj
def status(settings: Settings) -> None:
    """Whether the cluster runs, where, each node, and its topics. Exit 1 when no node runs."""
    from streams.infra.kafka import LocalKafka

    state = LocalKafka(settings).status()
    where = "external" if not state.managed else f"local, state {state.state_dir}"
    layout = f", {state.layout.describe()}" if state.layout is not None else ""
    click.echo(f"kafka: {'running' if state.running else 'not running'} ({where}{layout})")
    click.echo(f"  bootstrap: {state.bootstrap}")
    if state.pid and len(state.nodes) <= 1:
        click.echo(f"  pid: {state.pid}  log: {state.log_file}")
    if len(state.nodes) > 1:
        _echo_nodes(state)
    if state.client_env is not None and state.running:
        click.echo(f"  client settings: {state.client_env}")
    if state.detail:
        click.echo(f"  {state.detail}")
    for topic in state.topics:
        click.echo(f"  topic {topic}")
    redis_ok = _echo_redis(settings)
    if not state.running or not redis_ok:
        raise SystemExit(1)


def _echo_redis(settings: Settings) -> bool:
    """Redis's lines when it runs or is the online store; False when it should and does not."""
    from streams.infra.redis import LocalRedis

    redis = LocalRedis(settings)
    wanted = settings.online_store == "redis"
    if not wanted and (not redis.managed or redis.pid() is None):
        return True
    state = redis.status()
    where = "external" if not state.managed else f"local, state {state.state_dir}"
    click.echo(f"redis: {'running' if state.running else 'not running'} ({where})")
    click.echo(f"  url: {state.url}")
    if state.pid:
        click.echo(f"  pid: {state.pid}  log: {state.log_file}")
    if state.keys is not None:
        click.echo(f"  keys: {state.keys}  version: {state.version}")
    if state.detail:
        click.echo(f"  {state.detail}")
    return state.running or not wanted


def _echo_nodes(status: BrokerStatus) -> None:
    if len(status.nodes) <= 1:
        return
    for node in status.nodes:
        if node.pid is None:
            state = "not running"
        else:
            state = f"pid {node.pid}" + ("" if node.registered else " (not in the cluster yet)")
        click.echo(
            f"  node {node.node}: {state}, port {node.port}, controller {node.controller_port}, "
            f"log {node.log_file}"
        )


def _echo_client_settings(status: BrokerStatus) -> None:
    """What clients set, from the client.env file; a password is named, never shown."""
    path = status.client_env
    assert path is not None
    click.echo(f"client settings (in {path}; load them with: set -a; . {path}; set +a):")
    for line in path.read_text().splitlines():
        name, sep, _ = line.partition("=")
        if not sep or line.startswith("#"):
            continue
        shown = f"(in {path.name})" if name in _SECRET_VARIABLES else line.partition("=")[2]
        click.echo(f"  {name}={shown}")
