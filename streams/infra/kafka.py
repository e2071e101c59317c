"""A real local Apache Kafka 3.9.2 broker: KRaft, single combined broker+controller.

The jars come from Maven Central through Maven, once, into a cache folder. State
(data, logs, pid, config) lives under ``<home>/kafka``. ``up`` is idempotent and
waits until the broker answers metadata requests; ``down`` stops only the broker
that this state folder started. When ``STREAMSCORE_KAFKA_BOOTSTRAP`` names another
cluster, nothing here starts anything.
"""

from __future__ import annotations

import base64
import re
import shutil
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka.admin import AdminClient

from streams.errors import InfraError
from streams.infra.process import alive, read_pid, start_detached, stop, tail
from streams.kafka import make_admin
from streams.redact import redact
from streams.settings import KAFKA_VERSION, Settings

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
_MARKER = "kafka.Kafka"


@dataclass(frozen=True, slots=True)
class BrokerStatus:
    running: bool
    bootstrap: str
    pid: int | None = None
    managed: bool = True
    state_dir: Path | None = None
    log_file: Path | None = None
    topics: tuple[str, ...] = field(default=())
    detail: str = ""


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


class LocalKafka:
    """The project-owned broker under ``settings.home / 'kafka'``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.state_dir = settings.home / "kafka"
        self.data_dir = self.state_dir / "data"
        self.config_file = self.state_dir / "server.properties"
        self.log4j_file = self.state_dir / "log4j.properties"
        self.log_file = self.state_dir / "broker.log"
        self.pid_file = self.state_dir / "broker.pid"
        self.libs_dir = settings.kafka_cache / "libs"

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

    # -- lifecycle ----------------------------------------------------------------
    def pid(self) -> int | None:
        return read_pid(self.pid_file, str(self.config_file))

    def _write_config(self) -> None:
        s = self.settings
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.voters=1@127.0.0.1:{s.kafka_controller_port}",
                    f"listeners=PLAINTEXT://127.0.0.1:{s.kafka_port},"
                    f"CONTROLLER://127.0.0.1:{s.kafka_controller_port}",
                    f"advertised.listeners=PLAINTEXT://127.0.0.1:{s.kafka_port}",
                    "controller.listener.names=CONTROLLER",
                    "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
                    "inter.broker.listener.name=PLAINTEXT",
                    f"log.dirs={self.data_dir}",
                    "num.partitions=1",
                    # Topics are declared as code (streamscore topics apply), never by accident.
                    "auto.create.topics.enable=false",
                    "offsets.topic.replication.factor=1",
                    "offsets.topic.num.partitions=12",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "transaction.state.log.num.partitions=4",
                    "group.initial.rebalance.delay.ms=0",
                    # The DLQ must hold what producers sent, a 10 MB payload included.
                    "message.max.bytes=16777216",
                    "replica.fetch.max.bytes=16777216",
                    "log.retention.check.interval.ms=60000",
                    "num.network.threads=2",
                    "num.io.threads=4",
                    "",
                ]
            )
        )
        self.log4j_file.write_text(_LOG4J)

    def _java(self, main: str, *args: str, heap: str = "256m") -> list[str]:
        return [
            "java",
            f"-Xmx{heap}",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j.configuration=file:{self.log4j_file}",
            "-cp",
            f"{self.libs_dir}/*",
            main,
            *args,
        ]

    def _format(self) -> None:
        if (self.data_dir / "meta.properties").is_file():
            return
        cluster_id = self.state_dir / "cluster.id"
        if not cluster_id.is_file():
            # KRaft cluster ids are 16 random bytes, URL-safe base64 without padding; like
            # Kafka's Uuid.randomUuid, never one starting with '-' (read as an option).
            raw = "-"
            while raw.startswith("-"):
                raw = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
            cluster_id.write_text(raw + "\n")
        result = subprocess.run(
            self._java(
                "kafka.tools.StorageTool",
                "format", "-t", cluster_id.read_text().strip(),
                "-c", str(self.config_file),
            ),
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if result.returncode != 0:
            raise InfraError(f"kafka StorageTool format failed: {result.stdout}{result.stderr}")

    def up(self, timeout: float = 90.0) -> BrokerStatus:
        """Install once, format once, start, wait until it answers. Idempotent."""
        if not self.settings.manages_local_kafka:
            raise InfraError(
                f"STREAMSCORE_KAFKA_BOOTSTRAP={self.settings.kafka_bootstrap} names an external "
                "cluster; streamscore does not start a local broker"
            )
        if (pid := self.pid()) is not None:
            return self.status(detail="already running")
        if _java_major() < 17:
            raise InfraError("the local Kafka broker needs Java 17 or newer")
        for port in (self.settings.kafka_port, self.settings.kafka_controller_port):
            if port_in_use(port):
                raise InfraError(
                    f"port {port} is taken by another program; set STREAMSCORE_KAFKA_PORT / "
                    "STREAMSCORE_KAFKA_CONTROLLER_PORT, or STREAMSCORE_KAFKA_BOOTSTRAP to use it"
                )
        self.install()
        self._write_config()
        self._format()
        pid = start_detached(
            self._java("kafka.Kafka", str(self.config_file), heap=self.settings.kafka_heap),
            self.log_file,
            self.pid_file,
            cwd=self.state_dir,
        )
        deadline = time.monotonic() + timeout
        admin: AdminClient | None = None
        while time.monotonic() < deadline:
            if not alive(pid):
                self.pid_file.unlink(missing_ok=True)
                raise InfraError(
                    f"the Kafka broker exited during start-up; log {self.log_file}:\n"
                    f"{tail(self.log_file)}"
                )
            if not port_in_use(self.settings.kafka_port):
                time.sleep(0.3)  # no client before the port opens: it would log each refusal
                continue
            admin = admin or make_admin(self.settings)
            try:
                metadata = admin.list_topics(timeout=2)
                if metadata.brokers:
                    return self.status(detail="started")
            except Exception:  # noqa: S110 - not up yet; retried until the deadline
                pass
            time.sleep(0.5)
        stop(pid)
        self.pid_file.unlink(missing_ok=True)
        raise InfraError(
            f"the Kafka broker did not answer within {timeout:.0f}s; log {self.log_file}:\n"
            f"{tail(self.log_file)}"
        )

    def down(self, timeout: float = 30.0) -> bool:
        """Stop the broker. False (and nothing done) if it was not running."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        stop(pid, timeout)
        self.pid_file.unlink(missing_ok=True)
        return True

    def status(self, detail: str = "") -> BrokerStatus:
        """Whether it runs, where, and the topics it holds."""
        if not self.settings.manages_local_kafka:
            return _remote_status(self.settings)
        pid = self.pid()
        if pid is None:
            return BrokerStatus(
                running=False,
                bootstrap=self.settings.bootstrap_servers,
                state_dir=self.state_dir,
                log_file=self.log_file,
                detail=detail or "not running",
            )
        topics: tuple[str, ...] = ()
        try:
            admin = make_admin(self.settings)
            topics = tuple(sorted(admin.list_topics(timeout=5).topics))
        except Exception as exc:  # running but not answering
            detail = detail or redact(f"process {pid} runs but does not answer: {exc}")
        return BrokerStatus(
            running=True,
            bootstrap=self.settings.bootstrap_servers,
            pid=pid,
            state_dir=self.state_dir,
            log_file=self.log_file,
            topics=topics,
            detail=detail,
        )


def _remote_status(settings: Settings) -> BrokerStatus:
    try:
        admin = make_admin(settings)
        metadata = admin.list_topics(timeout=5)
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
