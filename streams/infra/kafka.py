"""A real local Apache Kafka 3.9.2 cluster: KRaft, one or more combined broker+controller nodes.

The jars come from Maven Central through Maven, once, into a cache folder. Each layout
(:class:`~streams.infra.cluster.Layout`: how many nodes, PLAINTEXT or SASL_SSL; its
configuration is :mod:`streams.infra.cluster`) keeps its own state under
``<home>/kafka/<layout>`` (``1-plaintext``, ``3-plaintext``, ``1-sasl_ssl``, ...): the
cluster id, ``client.env`` with the settings clients need, for SASL_SSL the passwords
(``secrets.json``) and TLS files (``tls/``), and per node ``node-<n>/`` with its data,
config, log and pid file. Layouts never share data, so switching loses nothing; they share
the ports, so one runs at a time.

Guarantees: ``up`` is idempotent: it starts only the nodes that do not run (so it also
brings back a killed one) and returns once the cluster reports every node. ``down`` stops
only processes this state folder started (the pid file's process must carry the node's
config path on its command line). When ``STREAMSCORE_KAFKA_BOOTSTRAP`` names another
cluster, nothing here starts anything.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import re
import shutil
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import KafkaException
from pydantic import SecretStr

from streams.errors import InfraError
from streams.infra.cluster import (
    CLIENT_USER,
    SCRAM_MECHANISM,
    ClusterSecrets,
    Layout,
    client_env,
    env_file_text,
    node_ports,
    scram_arguments,
    server_properties,
)
from streams.infra.process import alive, read_pid, start_detached, stop_all, tail
from streams.infra.tls import TlsFiles, make_certificates
from streams.kafka import kafka_failure, make_admin
from streams.redact import redact
from streams.settings import KAFKA_VERSION, Settings

__all__ = ["BrokerStatus", "LocalKafka", "NodeFiles", "NodeStatus", "port_in_use"]

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>dev.streamscore</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>{kafka}</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
      <version>{kafka}</version>
    </dependency>
    <dependency>
      <groupId>org.slf4j</groupId><artifactId>slf4j-reload4j</artifactId>
      <version>1.7.36</version>
    </dependency>
    <dependency>
      <groupId>ch.qos.reload4j</groupId><artifactId>reload4j</artifactId>
      <version>1.2.25</version>
    </dependency>
  </dependencies>
</project>
"""

_LOG4J = """log4j.rootLogger=INFO, file
log4j.appender.file=org.apache.log4j.ConsoleAppender
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka=INFO
log4j.logger.org.apache.kafka=WARN
log4j.logger.kafka.request.logger=WARN
log4j.logger.state.change.logger=WARN
log4j.logger.kafka.log.LogCleaner=WARN
"""

_MAIN_JAR = f"kafka_2.13-{KAFKA_VERSION}.jar"
_SECURITY_FIELDS = (
    "kafka_sasl_mechanism",
    "kafka_sasl_username",
    "kafka_sasl_password",
    "kafka_ssl_ca_location",
    "kafka_ssl_certificate_location",
    "kafka_ssl_key_location",
    "kafka_ssl_key_password",
)


@dataclass(frozen=True, slots=True)
class NodeFiles:
    """One node's folder: ``data/``, ``server.properties``, ``broker.log``, ``broker.pid``."""

    node: int
    directory: Path

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    @property
    def config_file(self) -> Path:
        return self.directory / "server.properties"

    @property
    def log4j_file(self) -> Path:
        return self.directory / "log4j.properties"

    @property
    def log_file(self) -> Path:
        return self.directory / "broker.log"

    @property
    def pid_file(self) -> Path:
        return self.directory / "broker.pid"

    def pid(self) -> int | None:
        """The node's pid if it runs (its config path is on the command line)."""
        return read_pid(self.pid_file, str(self.config_file))

    def formatted(self) -> bool:
        return (self.data_dir / "meta.properties").is_file()


@dataclass(frozen=True, slots=True)
class NodeStatus:
    node: int
    port: int
    controller_port: int
    pid: int | None
    registered: bool  # the cluster's metadata lists it as a live broker
    log_file: Path

    @property
    def running(self) -> bool:
        return self.pid is not None


@dataclass(frozen=True, slots=True)
class BrokerStatus:
    """The local cluster (or the external one): whether it runs, where, what it holds."""

    running: bool
    bootstrap: str
    pid: int | None = None  # the first running node's
    managed: bool = True
    state_dir: Path | None = None
    log_file: Path | None = None  # the first node's
    topics: tuple[str, ...] = field(default=())
    detail: str = ""
    layout: Layout | None = None
    nodes: tuple[NodeStatus, ...] = field(default=())
    client_env: Path | None = None


def _java_major() -> int:
    java = shutil.which("java")
    if java is None:
        raise InfraError("java is not on PATH: the local Kafka broker needs Java 17 or newer")
    out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False).stderr
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if match is None:
        raise InfraError(f"cannot read the Java version from: {out.strip()[:200]}")
    major = int(match[1])
    return int(match[2]) if major == 1 and match[2] else major


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` readable by the owner only (it may hold passwords)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.chmod(path, 0o600)  # an older file keeps its mode through O_CREAT


class LocalKafka:
    """The project-owned cluster under ``settings.home / 'kafka'``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.root = settings.home / "kafka"
        self.libs_dir = settings.kafka_cache / "libs"

    def layout(self, brokers: int | None = None, secure: bool | None = None) -> Layout:
        """The layout asked for; what is not given comes from the settings
        (STREAMSCORE_KAFKA_BROKERS; SASL_SSL when STREAMSCORE_KAFKA_SECURITY_PROTOCOL says so)."""
        if secure is None:
            secure = self.settings.kafka_security_protocol == "SASL_SSL"
        return Layout(brokers or self.settings.kafka_brokers, secure)

    def state_dir(self, layout: Layout) -> Path:
        return self.root / layout.name

    def nodes(self, layout: Layout) -> list[NodeFiles]:
        state = self.state_dir(layout)
        return [NodeFiles(n, state / f"node-{n}") for n in layout.nodes]

    def client_env_file(self, layout: Layout) -> Path:
        return self.state_dir(layout) / "client.env"

    def tls_files(self, layout: Layout) -> TlsFiles:
        return TlsFiles(self.state_dir(layout) / "tls")

    # -- installation -------------------------------------------------------------
    def installed(self) -> bool:
        return (self.libs_dir / _MAIN_JAR).is_file() and (self.libs_dir / ".complete").is_file()

    def install(self) -> bool:
        """Fetch the broker jars with Maven once. Returns True if it downloaded anything."""
        if self.installed():
            return False
        mvn = shutil.which("mvn")
        if mvn is None:
            raise InfraError("mvn is not on PATH: it fetches the Kafka jars from Maven Central")
        cache = self.settings.kafka_cache
        cache.mkdir(parents=True, exist_ok=True)
        (cache / "pom.xml").write_text(_POM.format(kafka=KAFKA_VERSION))
        staging = cache / "libs.partial"
        shutil.rmtree(staging, ignore_errors=True)
        result = subprocess.run(
            [
                mvn, "-q", "-B", "-f", str(cache / "pom.xml"),
                "dependency:copy-dependencies",
                f"-DoutputDirectory={staging}", "-DincludeScope=runtime",
            ],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if result.returncode != 0 or not (staging / _MAIN_JAR).is_file():
            raise InfraError(
                f"Maven could not fetch Kafka {KAFKA_VERSION} jars (exit {result.returncode}): "
                f"{(result.stdout + result.stderr).strip()[-1500:]}"
            )
        (staging / ".complete").write_text(KAFKA_VERSION + "\n")
        shutil.rmtree(self.libs_dir, ignore_errors=True)
        staging.rename(self.libs_dir)  # atomic: a half-done download is never "installed"
        return True

    # -- state ----------------------------------------------------------------------
    def _layouts(self) -> list[Layout]:
        """Every layout with a state folder here."""
        found: list[Layout] = []
        for marker in sorted(self.root.glob("*/layout.json")):
            try:
                raw = json.loads(marker.read_text())
                found.append(Layout(int(raw["brokers"]), bool(raw["secure"])))
            except (OSError, ValueError, KeyError, TypeError, InfraError):
                continue  # not ours, or half-written: nothing of it runs
        return found

    def _running(self) -> dict[Layout, dict[int, int]]:
        """Layout → {node: pid} of every node that runs."""
        running: dict[Layout, dict[int, int]] = {}
        for layout in self._layouts():
            pids = {n.node: pid for n in self.nodes(layout) if (pid := n.pid()) is not None}
            if pids:
                running[layout] = pids
        return running

    def _legacy_pid(self) -> int | None:
        # A broker started by streamscore before layouts: <home>/kafka/broker.pid.
        return read_pid(self.root / "broker.pid", str(self.root / "server.properties"))

    def pid(self) -> int | None:
        """The pid of a running node (of any layout), or None when none runs."""
        for pids in self._running().values():
            return min(pids.items())[1]
        return self._legacy_pid()

    def _secrets(self, layout: Layout, create: bool = False) -> ClusterSecrets:
        path = self.state_dir(layout) / "secrets.json"
        try:
            return ClusterSecrets(**json.loads(path.read_text()))
        except FileNotFoundError:
            if not create:
                raise InfraError(
                    f"{path} is missing: the {layout.describe()} cluster was never started "
                    "here ('streamscore infra up --secure' makes its users and certificates)"
                ) from None
        except (ValueError, TypeError) as exc:
            raise InfraError(
                f"{path} is not a streamscore secrets file ({type(exc).__name__}); remove "
                f"{self.state_dir(layout)} to start this layout afresh"
            ) from None
        made = ClusterSecrets.generate()
        _write_private(path, json.dumps(dataclasses.asdict(made)))
        return made

    def client_settings(self, layout: Layout) -> Settings:
        """``self.settings`` with what a client of ``layout`` needs (brokers, security)."""
        update: dict[str, object] = dict.fromkeys(_SECURITY_FIELDS)
        update |= {"kafka_brokers": layout.brokers, "kafka_security_protocol": layout.protocol}
        if layout.secure:
            update |= {
                "kafka_sasl_mechanism": SCRAM_MECHANISM,
                "kafka_sasl_username": CLIENT_USER,
                "kafka_sasl_password": SecretStr(self._secrets(layout).client_password),
                "kafka_ssl_ca_location": self.tls_files(layout).ca_pem,
            }
        return self.settings.model_copy(update=update)

    def prepare(self, layout: Layout) -> None:
        """State folder, cluster id, (secure) passwords and certificates, every node's
        config and the client settings. Configs are rewritten each time: ports may move."""
        state = self.state_dir(layout)
        state.mkdir(parents=True, exist_ok=True, mode=0o700)
        cluster_id = state / "cluster.id"
        if not cluster_id.is_file():
            # KRaft cluster ids are 16 random bytes, URL-safe base64 without padding; like
            # Kafka's Uuid.randomUuid, never one starting with '-' (read as an option).
            raw = "-"
            while raw.startswith("-"):
                raw = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
            cluster_id.write_text(raw + "\n")
        made: ClusterSecrets | None = None
        tls: TlsFiles | None = None
        if layout.secure:
            made = self._secrets(layout, create=True)
            tls = make_certificates(state / "tls", made.store_password)
        ca_pem = None if tls is None else tls.ca_pem
        for node in self.nodes(layout):
            node.directory.mkdir(parents=True, exist_ok=True)
            text = server_properties(
                self.settings, layout, node.node, node.data_dir,
                keystore=None if tls is None else tls.keystore, ca_pem=ca_pem,
                cluster_secrets=made,
            )  # fmt: skip
            _write_private(node.config_file, text)
            node.log4j_file.write_text(_LOG4J)
        env = client_env(self.settings, layout, ca_pem=ca_pem, cluster_secrets=made)
        _write_private(self.client_env_file(layout), env_file_text(env))
        (state / "layout.json").write_text(
            json.dumps({"brokers": layout.brokers, "secure": layout.secure}) + "\n"
        )

    def _java(self, node: NodeFiles, main: str, *args: str, heap: str = "256m") -> list[str]:
        return [
            "java",
            f"-Xmx{heap}",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j.configuration=file:{node.log4j_file}",
            "-cp",
            f"{self.libs_dir}/*",
            main,
            *args,
        ]

    def _format(self, layout: Layout, nodes: list[NodeFiles]) -> None:
        """Format the nodes' data folders (in parallel); SCRAM users are created here."""
        todo = [node for node in nodes if not node.formatted()]
        if not todo:
            return
        cluster_id = (self.state_dir(layout) / "cluster.id").read_text().strip()
        # The SCRAM passwords are on the format tool's command line for its few seconds:
        # the state folder is the owner's only, and the broker reads them from the log.
        users = scram_arguments(self._secrets(layout)) if layout.secure else []
        running = [
            (node, subprocess.Popen(
                self._java(
                    node, "kafka.tools.StorageTool",
                    "format", "-t", cluster_id, "-c", str(node.config_file), *users,
                ),
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            ))
            for node in todo
        ]  # fmt: skip
        failed = []
        for node, process in running:
            out, _ = process.communicate()
            if process.returncode != 0:
                failed.append(f"node {node.node}: {out.strip()[-1000:]}")
        if failed:
            raise InfraError(redact("kafka StorageTool format failed: " + "; ".join(failed)))

    # -- lifecycle ----------------------------------------------------------------
    def up(
        self, timeout: float = 90.0, *, brokers: int | None = None, secure: bool | None = None
    ) -> BrokerStatus:
        """Install once, format once, start the nodes that do not run, wait until the
        cluster reports every node. Idempotent."""
        if not self.settings.manages_local_kafka:
            raise InfraError(
                f"STREAMSCORE_KAFKA_BOOTSTRAP={self.settings.kafka_bootstrap} names an external "
                "cluster; streamscore does not start a local broker"
            )
        layout = self.layout(brokers, secure)
        self._refuse_another(layout)
        missing = [node for node in self.nodes(layout) if node.pid() is None]
        if not missing:
            return self.status(layout, detail="already running")
        if _java_major() < 17:
            raise InfraError("the local Kafka broker needs Java 17 or newer")
        ports = node_ports(self.settings, layout)
        for node in missing:
            for port in ports[node.node]:
                if port_in_use(port):
                    raise InfraError(
                        f"port {port} (node {node.node}) is taken by another program; set "
                        "STREAMSCORE_KAFKA_PORT / STREAMSCORE_KAFKA_CONTROLLER_PORT, or "
                        "STREAMSCORE_KAFKA_BOOTSTRAP to use it"
                    )
        self.install()
        self.prepare(layout)
        self._format(layout, missing)
        started = {
            node.node: start_detached(
                self._java(
                    node, "kafka.Kafka", str(node.config_file), heap=self.settings.kafka_heap
                ),
                node.log_file,
                node.pid_file,
                cwd=node.directory,
            )
            for node in missing
        }
        self._wait(layout, missing, started, timeout)
        if len(missing) == layout.brokers:
            return self.status(layout, detail="started")
        return self.status(layout, detail="started node " + ", ".join(str(n) for n in started))

    def _refuse_another(self, layout: Layout) -> None:
        legacy = self._legacy_pid()
        if legacy is not None:
            raise InfraError(
                f"a broker started by an older streamscore runs (pid {legacy}, {self.root}); "
                "stop it with 'streamscore infra down' first"
            )
        for other in self._running():
            if other != layout:
                raise InfraError(
                    f"a local Kafka cluster of {other.describe()} runs from {self.root}; "
                    f"stop it with 'streamscore infra down' before starting {layout.describe()}"
                    f" (or set STREAMSCORE_KAFKA_BROKERS={other.brokers}"
                    + (" and the client settings in its client.env" if other.secure else "")
                    + " to use it)"
                )

    def _wait(
        self, layout: Layout, nodes: list[NodeFiles], started: dict[int, int], timeout: float
    ) -> None:
        """Until the cluster's metadata lists every node; stop what was started on failure."""
        deadline = time.monotonic() + timeout
        ports = node_ports(self.settings, layout)
        while time.monotonic() < deadline:
            for node in nodes:
                if not alive(started[node.node]):
                    self._abort(nodes, started)
                    raise InfraError(
                        f"Kafka node {node.node} exited during start-up; log {node.log_file}:\n"
                        f"{redact(tail(node.log_file))}"
                    )
            if not all(port_in_use(client) for client, _ in ports.values()):
                time.sleep(0.3)  # a node opens its port once the controller unfenced it
                continue
            if self._each_reports_all(layout):
                return
            time.sleep(0.5)
        self._abort(nodes, started)
        logs = "\n".join(f"log {n.log_file}:\n{redact(tail(n.log_file, 15))}" for n in nodes)
        raise InfraError(
            f"the local Kafka cluster ({layout.describe()}) did not report every node within "
            f"{timeout:.0f}s; {logs}"
        )

    def _each_reports_all(self, layout: Layout) -> bool:
        """Whether every node, asked itself, lists every node as a live broker. One answer
        is not enough: brokers learn of a node's unfencing from the metadata log a moment
        apart, and a client may ask any of them next."""
        client = self.client_settings(layout)
        for port, _ in node_ports(self.settings, layout).values():
            # A fresh client's first request goes to its only bootstrap server.
            one = client.model_copy(update={"kafka_bootstrap": f"127.0.0.1:{port}"})
            admin = make_admin(one)
            try:
                if not set(layout.nodes) <= set(admin.list_topics(timeout=2).brokers):
                    return False
            except KafkaException:
                return False  # not up yet; retried until the deadline
        return True

    @staticmethod
    def _abort(nodes: list[NodeFiles], started: dict[int, int]) -> None:
        stop_all(list(started.values()), timeout=15)
        for node in nodes:
            node.pid_file.unlink(missing_ok=True)

    def down(self, timeout: float = 30.0) -> int:
        """Stop every node this home started (all layouts). The number stopped; 0 (and
        nothing done) when none ran."""
        pids: list[int] = []
        for layout in self._layouts():
            for node in self.nodes(layout):
                pid = node.pid()
                if pid is None:
                    node.pid_file.unlink(missing_ok=True)
                else:
                    pids.append(pid)
        if (legacy := self._legacy_pid()) is not None:
            pids.append(legacy)
        if not pids:
            return 0
        stop_all(pids, timeout)
        for layout in self._layouts():
            for node in self.nodes(layout):
                node.pid_file.unlink(missing_ok=True)
        (self.root / "broker.pid").unlink(missing_ok=True)
        return len(pids)

    def status(self, layout: Layout | None = None, detail: str = "") -> BrokerStatus:
        """Whether it runs, where, each node, and the topics it holds. Without a layout:
        the one that runs, else the one the settings name."""
        if not self.settings.manages_local_kafka:
            return _remote_status(self.settings)
        if layout is None:
            running = list(self._running())
            layout = running[0] if running else self.layout()
        nodes = self.nodes(layout)
        pids = {node.node: node.pid() for node in nodes}
        ports = node_ports(self.settings, layout)
        state = self.state_dir(layout)
        env_file = self.client_env_file(layout)
        first = next((pid for pid in pids.values() if pid is not None), None)
        topics: tuple[str, ...] = ()
        registered: set[int] = set()
        if first is None:
            detail = detail or "not running"
        else:
            try:
                metadata = make_admin(self.client_settings(layout)).list_topics(timeout=5)
                topics = tuple(sorted(metadata.topics))
                registered = set(metadata.brokers)
            except Exception as exc:  # running but not answering
                failure = redact(f"nodes run but the cluster does not answer: {exc}")
                detail = f"{detail}; {failure}" if detail else failure
            down = [n for n, pid in pids.items() if pid is None]
            if down and not detail:
                detail = f"{layout.brokers - len(down)} of {layout.brokers} nodes running"
        return BrokerStatus(
            running=first is not None,
            bootstrap=self.settings.model_copy(
                update={"kafka_brokers": layout.brokers}
            ).bootstrap_servers,
            pid=first,
            state_dir=state,
            log_file=nodes[0].log_file,
            topics=topics,
            detail=detail,
            layout=layout,
            nodes=tuple(
                NodeStatus(
                    node.node,
                    *ports[node.node],
                    pids[node.node],
                    node.node in registered,
                    node.log_file,
                )
                for node in nodes
            ),
            client_env=env_file if env_file.is_file() else None,
        )


def _remote_status(settings: Settings) -> BrokerStatus:
    try:
        admin = make_admin(settings)
        metadata = admin.list_topics(timeout=5)
    except KafkaException as exc:  # a refusal (password, CA) is named as such
        detail = str(kafka_failure(settings, exc, "cannot reach", admin))
        return BrokerStatus(False, settings.bootstrap_servers, managed=False, detail=detail)
    except Exception as exc:
        detail = redact(str(exc))
        return BrokerStatus(False, settings.bootstrap_servers, managed=False, detail=detail)
    return BrokerStatus(
        running=bool(metadata.brokers),
        bootstrap=settings.bootstrap_servers,
        managed=False,
        topics=tuple(sorted(metadata.topics)),
        detail=f"external cluster, {len(metadata.brokers)} broker(s)",
    )
