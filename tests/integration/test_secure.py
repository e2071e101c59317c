"""SASL_SSL end to end: ``streamscore infra up --secure`` starts the local broker with a
SCRAM-SHA-512 user and its own CA, and everything streamscore runs connects with the
client settings it wrote: the producer, a scoring worker (librdkafka stages and faust's
aiokafka alike), ClickHouse at the end. A wrong password is refused with a message
that says so, no traceback, and no password in the output.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka import KafkaException
from pydantic import SecretStr

from streams.infra.kafka import LocalKafka
from streams.kafka import make_admin
from streams.settings import Settings
from tests.integration.conftest import (
    FEAST_STACK_MARKS,
    _worker_starter,
    free_port,
    publish,
    query,
    records,
    scoring_world,
    stop,
    wait_for_predictions,
)
from tests.integration.test_scoring import stored_sources
from tests.planted import PLANTED

pytestmark = FEAST_STACK_MARKS


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streams.cli.main", *args],
        env=env, capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip


def _client_env(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {name: value for name, value in pairs if not name.startswith("#")}


@pytest.fixture(scope="module")
def secure_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    """One SASL_SSL node started through the CLI, as a developer would."""
    if os.environ.get("STREAMSCORE_KAFKA_BOOTSTRAP"):
        pytest.skip("STREAMSCORE_KAFKA_BOOTSTRAP names an external cluster")
    home = tmp_path_factory.mktemp("secure-home")
    port, controller = free_port(), free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("STREAMSCORE_")},
        "STREAMSCORE_HOME": str(home),
        "STREAMSCORE_KAFKA_PORT": str(port),
        "STREAMSCORE_KAFKA_CONTROLLER_PORT": str(controller),
        "STREAMSCORE_KAFKA_HEAP": "384m",
    }
    kafka = LocalKafka(
        Settings(
            home=home,
            kafka_port=port,
            kafka_controller_port=controller,
            redis_password=SecretStr(PLANTED),  # every worker carries it; no log may show it
        )
    )
    up = _cli(env, "infra", "up", "--secure")
    try:
        assert up.returncode == 0, up.stderr
        layout = kafka.layout(secure=True)
        client_env = _client_env(kafka.client_env_file(layout))
        password = client_env["STREAMSCORE_KAFKA_SASL_PASSWORD"]
        assert "kafka started" in up.stdout and "1 broker, SASL_SSL" in up.stdout
        assert "STREAMSCORE_KAFKA_SECURITY_PROTOCOL=SASL_SSL" in up.stdout
        assert "STREAMSCORE_KAFKA_SASL_MECHANISM=SCRAM-SHA-512" in up.stdout
        assert f"STREAMSCORE_KAFKA_SSL_CA_LOCATION={kafka.tls_files(layout).ca_pem}" in up.stdout
        assert "STREAMSCORE_KAFKA_SASL_PASSWORD=(in client.env)" in up.stdout
        assert password not in up.stdout + up.stderr
        # With the client settings loaded, `infra up` is the same cluster: nothing to do.
        again = _cli({**env, **client_env}, "infra", "up")
        assert again.returncode == 0 and "already running" in again.stdout, again.stderr
        yield kafka
    finally:
        _cli(env, "infra", "down")


@pytest.fixture
def secure_settings(secure_kafka: LocalKafka, world: Path, tmp_path: Path) -> Iterator[Settings]:
    tag = uuid.uuid4().hex[:8]
    settings = secure_kafka.client_settings(secure_kafka.layout(secure=True)).model_copy(
        update={"topic_prefix": f"it-{tag}.", "app_id": f"it-{tag}", "web_enabled": False}
    )
    with scoring_world(settings, world, tmp_path) as scoring:
        yield scoring


@pytest.fixture
def start_secure_worker(
    secure_settings: Settings, tmp_path: Path
) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    start, started = _worker_starter(secure_settings, tmp_path)
    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def test_produce_score_and_store_over_sasl_ssl(
    secure_settings: Settings, start_secure_worker: Callable[..., subprocess.Popen[bytes]]
) -> None:
    settings = secure_settings
    assert settings.kafka_security_protocol == "SASL_SSL"
    assert settings.kafka_sasl_mechanism == "SCRAM-SHA-512"
    # The broker has no PLAINTEXT listener for clients: the same port refuses one.
    plain = settings.model_copy(
        update={
            "kafka_security_protocol": "PLAINTEXT",
            "kafka_sasl_mechanism": None,
            "kafka_sasl_username": None,
            "kafka_sasl_password": None,
            "kafka_ssl_ca_location": None,
        }
    )
    with pytest.raises(KafkaException):
        make_admin(plain).list_topics(timeout=3)

    items = records(800, invalid_fraction=0.05, seed=31)
    landed = publish(settings, items)  # the project's producer, over SASL_SSL
    valid = {c for c, r in landed.items() if r.expected == "accepted"}
    assert valid and len(valid) < len(landed)
    worker = start_secure_worker(STREAMSCORE_AGENTS="score,sink,dlq")
    wait_for_predictions(settings, valid, timeout=180, worker=worker, drained=("sink", "dlq"))
    log = worker.log_path.read_text(errors="replace")  # type: ignore[attr-defined]
    stop(worker)
    assert worker.returncode == 0
    # faust's own clients (aiokafka) worked over SASL_SSL too: its producer created the
    # leader-election topic and its consumer joined the group that elects the leader.
    assert "__assignor-__leader' created" in log
    assert "Elected group leader" in log and "[^Worker]: Ready" in log
    assert "SaslAuthenticationFailed" not in log and "SSLError" not in log

    count, unique = query(
        settings,
        "select count(), uniqExact(topic, partition, offset, model_version) from {db}.predictions",
    )[0]
    predictions, dead = stored_sources(settings)
    assert predictions == valid
    assert dead == set(landed) - valid
    assert count == unique == 2 * len(valid)


def test_a_wrong_password_is_refused_clearly_without_echoing_it(
    secure_kafka: LocalKafka, secure_settings: Settings
) -> None:
    real = secure_settings.kafka_sasl_password
    assert real is not None
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("STREAMSCORE_")},
        **secure_settings.to_env(STREAMSCORE_KAFKA_SASL_PASSWORD=PLANTED),
    }
    for args in (("topics", "apply"), ("infra", "status")):
        result = _cli(env, *args)
        output = result.stdout + result.stderr
        assert PLANTED not in output, args
        assert real.get_secret_value() not in output, args
        assert "Traceback" not in output, args
        if args[0] == "topics":
            assert result.returncode == 1, output
            assert "refused user 'streamscore' (SCRAM-SHA-512 over SASL_SSL)" in result.stderr
            assert "STREAMSCORE_KAFKA_SASL_PASSWORD" in result.stderr
            assert "invalid credentials" in result.stderr
    # The right password still works: the refusal was the password's, not the broker's.
    assert make_admin(secure_settings).list_topics(timeout=10).brokers
