"""The local Kafka cluster's shape and files, as pure functions: no process, no disk.

A :class:`Layout` is how many nodes and whether clients must authenticate. Every node is a
combined KRaft broker+controller (``process.roles=broker,controller``), so three nodes
make a three-voter controller quorum: any one node may die, the other two keep a majority
for metadata and an in-sync pair for every partition (replication 3,
``min.insync.replicas=2``). Node n (from 1) listens on ``STREAMSCORE_KAFKA_PORT + 10(n-1)``
for clients and on ``STREAMSCORE_KAFKA_CONTROLLER_PORT + 10(n-1)`` for the quorum, both on
127.0.0.1 only.

A secure layout has one SASL_SSL listener, for clients and for the brokers' own
replication: TLS with a certificate from the state folder's own CA (:mod:`streams.infra.tls`)
and SCRAM-SHA-512 users written into the metadata log when the nodes are formatted (an
``admin`` user for the brokers, a client user for streamscore). Only the controller
listener stays PLAINTEXT, bound to 127.0.0.1.

The files here hold passwords in the clear (the broker and the clients need them): the
caller writes them readable by the owner only and never prints them.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

from streams.errors import InfraError
from streams.settings import Settings
from streams.topics import min_insync_replicas, replication_factor

__all__ = [
    "ADMIN_USER",
    "CLIENT_USER",
    "SCRAM_MECHANISM",
    "ClusterSecrets",
    "Layout",
    "client_env",
    "env_file_text",
    "node_ports",
    "scram_arguments",
    "server_properties",
]

SCRAM_MECHANISM = "SCRAM-SHA-512"
ADMIN_USER = "admin"  # the brokers' own user, for replication between them
CLIENT_USER = "streamscore"  # producers, workers, replay, admin, bench
# The client listener's name; lower-cased in per-listener keys (listener.name.<name>.*).
_LISTENER = {False: "PLAINTEXT", True: "SASL_SSL"}


@dataclass(frozen=True, slots=True)
class Layout:
    """How many nodes, and whether clients speak SASL_SSL (else PLAINTEXT)."""

    brokers: int
    secure: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.brokers <= 9:
            raise InfraError(f"a local Kafka cluster has 1 to 9 brokers, not {self.brokers}")

    @property
    def name(self) -> str:
        """The state folder's name: ``1-plaintext``, ``3-sasl_ssl``, ..."""
        return f"{self.brokers}-{self.protocol.lower()}"

    @property
    def protocol(self) -> str:
        return _LISTENER[self.secure]

    @property
    def nodes(self) -> range:
        return range(1, self.brokers + 1)

    @property
    def replication(self) -> int:
        return replication_factor(self.brokers)

    @property
    def min_insync(self) -> int:
        return min_insync_replicas(self.replication)

    def describe(self) -> str:
        return f"{self.brokers} broker{'s' if self.brokers > 1 else ''}, {self.protocol}"


@dataclass(frozen=True, slots=True)
class ClusterSecrets:
    """The passwords of a secure layout, made once and kept in its state folder."""

    admin_password: str
    client_password: str
    store_password: str  # the broker's PKCS12 keystore (and the CA's)

    @classmethod
    def generate(cls) -> ClusterSecrets:
        # Hex: safe inside a JAAS string, a --add-scram argument and an env file alike.
        return cls(secrets.token_hex(24), secrets.token_hex(24), secrets.token_hex(24))


def node_ports(settings: Settings, layout: Layout) -> dict[int, tuple[int, int]]:
    """Node id → (client port, controller port); InfraError if two ports collide."""
    ports = {node: settings.kafka_node_ports(node) for node in layout.nodes}
    flat = [port for pair in ports.values() for port in pair]
    if len(set(flat)) != len(flat) or max(flat) > 65535 or min(flat) < 1:
        raise InfraError(
            f"{layout.describe()} need distinct ports: STREAMSCORE_KAFKA_PORT="
            f"{settings.kafka_port} and STREAMSCORE_KAFKA_CONTROLLER_PORT="
            f"{settings.kafka_controller_port} give {sorted(flat)} (node n adds 10(n-1))"
        )
    return ports


def _jaas(user: str, password: str) -> str:
    return (
        "org.apache.kafka.common.security.scram.ScramLoginModule required "
        f'username="{user}" password="{password}";'
    )


def server_properties(
    settings: Settings,
    layout: Layout,
    node: int,
    data_dir: Path,
    *,
    keystore: Path | None = None,
    ca_pem: Path | None = None,
    cluster_secrets: ClusterSecrets | None = None,
) -> str:
    """``server.properties`` of one node. A secure layout needs the keystore, the CA and
    the secrets."""
    ports = node_ports(settings, layout)
    client, controller = ports[node]
    listener = layout.protocol
    voters = ",".join(f"{n}@127.0.0.1:{c}" for n, (_, c) in ports.items())
    lines = [
        "process.roles=broker,controller",
        f"node.id={node}",
        f"controller.quorum.voters={voters}",
        f"listeners={listener}://127.0.0.1:{client},CONTROLLER://127.0.0.1:{controller}",
        f"advertised.listeners={listener}://127.0.0.1:{client}",
        "controller.listener.names=CONTROLLER",
        f"listener.security.protocol.map=CONTROLLER:PLAINTEXT,{listener}:{listener}",
        f"inter.broker.listener.name={listener}",
        f"log.dirs={data_dir}",
        "num.partitions=1",
        # Topics are declared as code (streamscore topics apply), never by accident.
        "auto.create.topics.enable=false",
        # Replication as topics as code picks it (streams.topics.replication_factor), also
        # for the topics Kafka and faust create themselves: one node down loses nothing
        # acknowledged and blocks no acks=all producer.
        f"default.replication.factor={layout.replication}",
        f"min.insync.replicas={layout.min_insync}",
        f"offsets.topic.replication.factor={layout.replication}",
        "offsets.topic.num.partitions=12",
        f"transaction.state.log.replication.factor={layout.replication}",
        f"transaction.state.log.min.isr={layout.min_insync}",
        "transaction.state.log.num.partitions=4",
        "unclean.leader.election.enable=false",
        "group.initial.rebalance.delay.ms=0",
        # The DLQ must hold what producers sent, a 10 MB payload included.
        "message.max.bytes=16777216",
        "replica.fetch.max.bytes=16777216",
        "log.retention.check.interval.ms=60000",
        "num.network.threads=2",
        "num.io.threads=4",
    ]
    if layout.secure:
        if keystore is None or ca_pem is None or cluster_secrets is None:
            raise InfraError("a SASL_SSL node needs its keystore, the CA and the passwords")
        scope = f"listener.name.{listener.lower()}"
        lines += [
            f"sasl.enabled.mechanisms={SCRAM_MECHANISM}",
            f"sasl.mechanism.inter.broker.protocol={SCRAM_MECHANISM}",
            f"{scope}.{SCRAM_MECHANISM.lower()}.sasl.jaas.config="
            + _jaas(ADMIN_USER, cluster_secrets.admin_password),
            "ssl.keystore.type=PKCS12",
            f"ssl.keystore.location={keystore}",
            f"ssl.keystore.password={cluster_secrets.store_password}",
            f"ssl.key.password={cluster_secrets.store_password}",
            # The brokers verify each other (replication) with the same CA as clients do.
            "ssl.truststore.type=PEM",
            f"ssl.truststore.location={ca_pem}",
            "ssl.endpoint.identification.algorithm=https",
            "ssl.client.auth=none",  # clients authenticate with SCRAM, not certificates
        ]
    return "\n".join(lines) + "\n"


def scram_arguments(cluster_secrets: ClusterSecrets) -> list[str]:
    """``kafka-storage format`` arguments creating both SCRAM users before first start."""
    users = (
        (ADMIN_USER, cluster_secrets.admin_password),
        (CLIENT_USER, cluster_secrets.client_password),
    )
    arguments: list[str] = []
    for user, password in users:
        arguments += ["--add-scram", f"{SCRAM_MECHANISM}=[name={user},password={password}]"]
    return arguments


def client_env(
    settings: Settings,
    layout: Layout,
    *,
    ca_pem: Path | None = None,
    cluster_secrets: ClusterSecrets | None = None,
) -> dict[str, str]:
    """The ``STREAMSCORE_*`` variables a client needs for this cluster (password included)."""
    env = {
        "STREAMSCORE_KAFKA_PORT": str(settings.kafka_port),
        "STREAMSCORE_KAFKA_CONTROLLER_PORT": str(settings.kafka_controller_port),
        "STREAMSCORE_KAFKA_BROKERS": str(layout.brokers),
        "STREAMSCORE_KAFKA_SECURITY_PROTOCOL": layout.protocol,
    }
    if layout.secure:
        if ca_pem is None or cluster_secrets is None:
            raise InfraError("SASL_SSL client settings need the CA and the passwords")
        env |= {
            "STREAMSCORE_KAFKA_SASL_MECHANISM": SCRAM_MECHANISM,
            "STREAMSCORE_KAFKA_SASL_USERNAME": CLIENT_USER,
            "STREAMSCORE_KAFKA_SASL_PASSWORD": cluster_secrets.client_password,
            "STREAMSCORE_KAFKA_SSL_CA_LOCATION": str(ca_pem),
        }
    return env


def env_file_text(env: dict[str, str]) -> str:
    """An env file for ``set -a; . FILE; set +a`` or docker's ``--env-file``."""
    header = "# Client settings of the local Kafka cluster, written by `streamscore infra up`.\n"
    return header + "".join(f"{name}={value}\n" for name, value in env.items())
