"""Credentials: Kafka security reaches every client, ClickHouse and Redis passwords reach
their clients, and no password shows in an error, a repr or a log line.

Each secret here is planted (``hunter2-PLANTED``) and the tests assert it never comes
back in text. Servers are a closed local port or an in-process fake HTTP server.
"""

from __future__ import annotations

import ast
import http.server
import re
import threading
import traceback
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar
from urllib.parse import parse_qsl, urlsplit

import faust
import pytest
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from streams.app import broker_credentials, create_app
from streams.clickhouse.client import connect
from streams.clickhouse.gateway import ClickHouseGateway
from streams.errors import ConfigError, FeatureError, SinkError
from streams.features.store import redis_connection_string, repo_config
from streams.kafka import (
    admin_config,
    consumer_config,
    kafka_security_config,
    make_admin,
    make_consumer,
    make_producer,
    producer_config,
)
from streams.redact import redact
from streams.settings import Settings
from tests.planted import PLANTED

KEY_PASSWORD = "key-pass-PLANTED"
CLOSED = "127.0.0.1:9"  # nothing listens on the discard port: clients fail fast, locally
ROOT = Path(__file__).resolve().parents[2]

# A self-signed EC certificate (also its own CA) and its key, encrypted with KEY_PASSWORD:
# `openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -days 36500`.
CERTIFICATE = """-----BEGIN CERTIFICATE-----
MIIBmjCCAUGgAwIBAgIUcxad976TX8mUGJemRNZTOvM655IwCgYIKoZIzj0EAwIw
IjEgMB4GA1UEAwwXc3RyZWFtc2NvcmUtdGVzdC1jbGllbnQwIBcNMjYxMjAxMTQz
OTM0WhgPMjEyNjExMDcxNDM5MzRaMCIxIDAeBgNVBAMMF3N0cmVhbXNjb3JlLXRl
c3QtY2xpZW50MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE0y350BGK7p82i7I4
vC4fqTnZxT6FKeHA4TvRo1tBRp/uj02Ije3XxaqOuCVdvQxylMP+iNF6XcXReGwm
FMvEraNTMFEwHQYDVR0OBBYEFBj7JevjryqDjhQdWA09t0Y8e7ZIMB8GA1UdIwQY
MBaAFBj7JevjryqDjhQdWA09t0Y8e7ZIMA8GA1UdEwEB/wQFMAMBAf8wCgYIKoZI
zj0EAwIDRwAwRAIgO7dyPXHmoIyPKLbLWRsThmIZq3Ahy9l/EA3SUkrKTIsCIBaE
atQKfwF083yTxq+UELEanNUYbM5q07pH7G8f8UsT
-----END CERTIFICATE-----
"""
KEY = """-----BEGIN ENCRYPTED PRIVATE KEY-----
MIHjME4GCSqGSIb3DQEFDTBBMCkGCSqGSIb3DQEFDDAcBAh1dT1Uc893ygICCAAw
DAYIKoZIhvcNAgkFADAUBggqhkiG9w0DBwQInOVx7dYKl8cEgZC2IUElMCjTYFrW
lP/BjFv+gs0owZv5hkqTNUREzaTBA0wCvMA4g5r1ScQv4AXykt9dbLS6bmWBRMXJ
pUsR0VVxlEKcvEWiz1KvVGIANg/anoEsx+mniCFz8sEnMgSr83CXxYam3K3D9gMW
fFU+VZ+QUYjWb/RStvWJQOVoj4CbDq5H040fBQexyqDu6BUmiQQ=
-----END ENCRYPTED PRIVATE KEY-----
"""


@pytest.fixture(autouse=True)
def _no_developer_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings here come from arguments only, never from the developer's STREAMSCORE_*."""
    import os

    for name in list(os.environ):
        if name.startswith("STREAMSCORE_"):
            monkeypatch.delenv(name)


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "client.pem", tmp_path / "client.key"
    cert.write_text(CERTIFICATE)
    key.write_text(KEY)
    return cert, key


def sasl_ssl(tmp_path: Path, tls_files: tuple[Path, Path], **extra: Any) -> Settings:
    cert, key = tls_files
    fields: dict[str, Any] = {
        "home": tmp_path,
        "kafka_bootstrap": CLOSED,
        "kafka_security_protocol": "SASL_SSL",
        "kafka_sasl_mechanism": "SCRAM-SHA-512",
        "kafka_sasl_username": "scorer",
        "kafka_sasl_password": PLANTED,
        "kafka_ssl_ca_location": cert,
        "kafka_ssl_certificate_location": cert,
        "kafka_ssl_key_location": key,
        "kafka_ssl_key_password": KEY_PASSWORD,
        **extra,
    }
    return Settings(**fields)


# ---- redact ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("http://analyst:hunter2@ch:8123/db", "http://analyst:***@ch:8123/db"),
        ("open rediss://:hunter2@r:6380/0 failed", "open rediss://:***@r:6380/0 failed"),
        ("https://u:p@ss:w@ch/x", "https://u:***@ch/x"),  # an unencoded '@' in the password
        ("https://ch/?user=a&password=hunter2&db=x", "https://ch/?user=a&password=***&db=x"),
        ("r:6379,db=0,password=hunter2,ssl=true", "r:6379,db=0,password=***,ssl=true"),
        ("{'sasl.password': 'hunter2', 'acks': 'all'}", "{'sasl.password': '***', 'acks': 'all'}"),
        ('{"password": "hunter2"}', '{"password": "***"}'),
        ("STREAMSCORE_KAFKA_SASL_PASSWORD=hunter2 x", "STREAMSCORE_KAFKA_SASL_PASSWORD=*** x"),
    ],
)
def test_redact_masks_every_credential_form(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "http://ch.local:8123/streamscore",
        "chdb:///var/lib/streamscore/chdb",
        "unexpected token: '}' at line 1",
        "mail ops@example.com about kafka-1:9092",
        "",
    ],
)
def test_redact_leaves_text_without_credentials_alone(text: str) -> None:
    assert redact(text) == text


# ---- settings ----------------------------------------------------------------------------


def test_settings_repr_and_str_never_show_a_secret(
    tmp_path: Path, tls_files: tuple[Path, Path]
) -> None:
    settings = sasl_ssl(
        tmp_path,
        tls_files,
        clickhouse_dsn=f"https://analyst:{PLANTED}@ch.example:8443/",
        redis_url=f"rediss://app:{PLANTED}@redis.example:6380/0",
    )
    for text in (repr(settings), str(settings), f"{settings}", str(settings.model_dump_json())):
        assert PLANTED not in text and KEY_PASSWORD not in text
    assert "analyst:***@ch.example" in repr(settings)  # masked, not dropped


def test_to_env_hands_children_the_real_secrets(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tls_files: tuple[Path, Path]
) -> None:
    original = sasl_ssl(
        tmp_path,
        tls_files,
        clickhouse_dsn="https://ch.example:8443/",
        clickhouse_user="analyst",
        clickhouse_password=PLANTED,
        redis_password=PLANTED,
    )
    env = original.to_env()
    assert env["STREAMSCORE_KAFKA_SASL_PASSWORD"] == PLANTED
    assert env["STREAMSCORE_KAFKA_SSL_KEY_PASSWORD"] == KEY_PASSWORD
    assert env["STREAMSCORE_CLICKHOUSE_PASSWORD"] == PLANTED
    assert env["STREAMSCORE_REDIS_PASSWORD"] == PLANTED
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    child = Settings()
    assert child.kafka_sasl_password is not None
    assert child.kafka_sasl_password.get_secret_value() == PLANTED
    assert child.model_dump(exclude={"worker_id"}) == original.model_dump(exclude={"worker_id"})


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"kafka_security_protocol": "SASL_SSL", "kafka_sasl_username": "u"},
            "needs STREAMSCORE_KAFKA_SASL_MECHANISM, STREAMSCORE_KAFKA_SASL_PASSWORD",
        ),
        ({"kafka_security_protocol": "SASL_PLAINTEXT"}, "STREAMSCORE_KAFKA_SASL_USERNAME"),
        ({"kafka_sasl_password": PLANTED}, "PLAINTEXT does not use SASL"),
        ({"kafka_ssl_ca_location": "/ca.pem"}, "PLAINTEXT does not use TLS"),
        (
            {
                "kafka_security_protocol": "SASL_PLAINTEXT",
                "kafka_sasl_mechanism": "PLAIN",
                "kafka_sasl_username": "u",
                "kafka_sasl_password": PLANTED,
                "kafka_ssl_ca_location": "/ca.pem",
            },
            "SASL_PLAINTEXT does not use TLS",
        ),
        (
            {"kafka_security_protocol": "SSL", "kafka_ssl_certificate_location": "/c.pem"},
            "a client certificate needs its key",
        ),
        (
            {"kafka_security_protocol": "SSL", "kafka_ssl_key_password": PLANTED},
            "KEY_PASSWORD set without",
        ),
        ({"clickhouse_password": PLANTED}, "chDB has no users"),
        (
            {"clickhouse_dsn": f"http://a:{PLANTED}@ch:8123/", "clickhouse_user": "b"},
            "give the credentials once",
        ),
        (
            {"redis_url": f"redis://:{PLANTED}@r:6379/0", "redis_password": "other"},
            "give it once",
        ),
    ],
)
def test_incomplete_or_contradictory_credentials_are_a_config_error(
    fields: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as raised:
        Settings(kafka_bootstrap="kafka-1:9092", **fields)
    assert PLANTED not in str(raised.value)


def test_security_needs_an_external_cluster() -> None:
    with pytest.raises(ConfigError, match="local broker speaks PLAINTEXT"):
        Settings(kafka_security_protocol="SSL")


def test_tls_paths_are_not_checked_when_settings_are_read(tmp_path: Path) -> None:
    # Certificates may be mounted after start-up: only building a client reads them.
    settings = Settings(
        kafka_bootstrap=CLOSED,
        kafka_security_protocol="SSL",
        kafka_ssl_ca_location=tmp_path / "mounted-later" / "ca.pem",
    )
    assert settings.kafka_ssl_ca_location == tmp_path / "mounted-later" / "ca.pem"


def test_a_rejected_value_is_not_quoted_in_the_validation_error() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as raised:
        Settings(kafka_sasl_mechanism=PLANTED)  # type: ignore[arg-type]
    assert "kafka_sasl_mechanism" in str(raised.value)
    assert PLANTED not in str(raised.value)


# ---- Kafka clients -----------------------------------------------------------------------


def test_plaintext_is_the_default_and_adds_nothing_else(tmp_path: Path) -> None:
    assert kafka_security_config(Settings(home=tmp_path)) == {"security.protocol": "PLAINTEXT"}


def test_security_reaches_producer_consumer_and_admin_configs(
    tmp_path: Path, tls_files: tuple[Path, Path]
) -> None:
    cert, key = tls_files
    settings = sasl_ssl(tmp_path, tls_files)
    expected = {
        "bootstrap.servers": CLOSED,
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "scorer",
        "sasl.password": PLANTED,
        "ssl.ca.location": str(cert),
        "ssl.certificate.location": str(cert),
        "ssl.key.location": str(key),
        "ssl.key.password": KEY_PASSWORD,
    }
    configs = {
        "producer": producer_config(settings, **{"linger.ms": 2}),
        "consumer": consumer_config(settings, "g", **{"fetch.max.bytes": 1024}),
        "admin": admin_config(settings, log_level=0),
    }
    for kind, config in configs.items():
        assert expected.items() <= config.items(), kind
    assert configs["producer"]["linger.ms"] == 2 and configs["consumer"]["group.id"] == "g"


def test_librdkafka_accepts_the_security_config(
    tmp_path: Path, tls_files: tuple[Path, Path]
) -> None:
    # Constructing loads the CA, the certificate and the encrypted key; nothing is sent
    # (the bootstrap is a closed local port).
    settings = sasl_ssl(tmp_path, tls_files)
    make_producer(settings, log_level=0)
    make_admin(settings, log_level=0)
    make_consumer(settings, "credentials-test", log_level=0).close()


def test_a_wrong_key_password_is_a_config_error_that_quotes_no_secret(
    tmp_path: Path, tls_files: tuple[Path, Path]
) -> None:
    settings = sasl_ssl(tmp_path, tls_files, kafka_ssl_key_password="wrong-PLANTED")
    with pytest.raises(ConfigError, match="cannot create a Kafka producer") as raised:
        make_producer(settings, log_level=0)
    text = "".join(traceback.format_exception(raised.value))
    assert "PLANTED" not in text


def test_a_missing_ca_file_is_a_config_error(tmp_path: Path) -> None:
    settings = Settings(
        kafka_bootstrap=CLOSED,
        kafka_security_protocol="SSL",
        kafka_ssl_ca_location=tmp_path / "absent.pem",
    )
    with pytest.raises(ConfigError, match=r"ssl\.ca\.location"):
        make_admin(settings, log_level=0)


def test_faust_gets_sasl_credentials_with_a_tls_context(
    tmp_path: Path, tls_files: tuple[Path, Path]
) -> None:
    app = create_app(sasl_ssl(tmp_path, tls_files))
    credentials = app.conf.broker_credentials
    assert isinstance(credentials, faust.SASLCredentials)
    auth = credentials_to_aiokafka_auth(credentials, app.conf.ssl_context)
    assert auth["security_protocol"] == "SASL_SSL"
    assert auth["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (auth["sasl_plain_username"], auth["sasl_plain_password"]) == ("scorer", PLANTED)
    subjects = [dict(c["subject"][0]) for c in auth["ssl_context"].get_ca_certs()]
    assert {"commonName": "streamscore-test-client"} in subjects  # our CA, not the system's
    assert PLANTED not in repr(credentials)


def test_faust_credentials_per_protocol(tmp_path: Path) -> None:
    plain = Settings(home=tmp_path)
    assert broker_credentials(plain) is None
    assert create_app(plain).conf.broker_credentials is None
    tls = broker_credentials(Settings(kafka_bootstrap=CLOSED, kafka_security_protocol="SSL"))
    assert isinstance(tls, faust.SSLCredentials)
    assert credentials_to_aiokafka_auth(tls)["security_protocol"] == "SSL"
    sasl = broker_credentials(
        Settings(
            kafka_bootstrap=CLOSED,
            kafka_security_protocol="SASL_PLAINTEXT",
            kafka_sasl_mechanism="PLAIN",
            kafka_sasl_username="u",
            kafka_sasl_password=PLANTED,
        )
    )
    assert isinstance(sasl, faust.SASLCredentials)
    assert credentials_to_aiokafka_auth(sasl)["security_protocol"] == "SASL_PLAINTEXT"
    assert sasl.ssl_context is None


def test_faust_reports_a_wrong_key_password_without_quoting_it(
    tmp_path: Path, tls_files: tuple[Path, Path]
) -> None:
    settings = sasl_ssl(tmp_path, tls_files, kafka_ssl_key_password="wrong-PLANTED")
    with pytest.raises(ConfigError, match="STREAMSCORE_KAFKA_SSL_KEY_LOCATION=") as raised:
        create_app(settings)
    assert "PLANTED" not in "".join(traceback.format_exception(raised.value))


# Every confluent-kafka client streamscore makes goes through streams/kafka.py: the
# worker, replay, the benches, status, infra, topics, the producer and the sinks.
CLIENT_CLASSES = {"Producer", "Consumer", "AdminClient"}


def _client_constructions(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call):
            name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            if name in CLIENT_CLASSES:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}(...)")
        elif isinstance(node, ast.Constant) and node.value == "bootstrap.servers":
            found.append(f"{path.relative_to(ROOT)}:{node.lineno} 'bootstrap.servers'")
    return found


def test_no_kafka_client_is_built_outside_the_factories() -> None:
    modules = [p for p in (ROOT / "streams").rglob("*.py") if p != ROOT / "streams" / "kafka.py"]
    assert len(modules) > 50
    found = [hit for path in modules for hit in _client_constructions(path)]
    assert found == []
    # And the check does find one where there is one.
    assert _client_constructions(ROOT / "streams" / "kafka.py")


def test_bench_settings_keep_the_security_for_their_clients_and_workers(
    tmp_path: Path, tls_files: tuple[Path, Path]
) -> None:
    from streams.bench.e2e import bench_settings

    settings = sasl_ssl(tmp_path, tls_files)
    bench = bench_settings(settings)
    assert kafka_security_config(bench) == kafka_security_config(settings)
    assert bench.to_env()["STREAMSCORE_KAFKA_SASL_PASSWORD"] == PLANTED  # the bench's worker


# ---- ClickHouse --------------------------------------------------------------------------

DSN_WITH_PASSWORD = f"http://analyst:{PLANTED}@{CLOSED}/"


@pytest.mark.parametrize(
    "fields",
    [
        {"clickhouse_dsn": DSN_WITH_PASSWORD},
        {"clickhouse_dsn": f"http://analyst:{PLANTED.replace('-', '%2D')}@{CLOSED}/"},
        {
            "clickhouse_dsn": f"http://{CLOSED}/",
            "clickhouse_user": "a",
            "clickhouse_password": PLANTED,
        },
    ],
)
def test_connect_errors_never_quote_the_password(tmp_path: Path, fields: dict[str, str]) -> None:
    with pytest.raises(SinkError, match="cannot open ClickHouse at http://") as raised:
        connect(Settings(home=tmp_path, **fields))
    assert "PLANTED" not in "".join(traceback.format_exception(raised.value))


def test_a_malformed_dsn_error_does_not_quote_the_password(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="neither chdb") as raised:
        connect(Settings(home=tmp_path, clickhouse_dsn=f"tcp://analyst:{PLANTED}@ch:9000/"))
    assert PLANTED not in str(raised.value)


class _FakeClickHouse(http.server.BaseHTTPRequestHandler):
    """Refuses every request as a ClickHouse server would, quoting the password back."""

    seen: ClassVar[list[str]] = []

    def _refuse(self) -> None:
        self.seen.append(self.headers.get("Authorization", ""))
        body = f"Code: 516. DB::Exception: bad password {PLANTED}. (AUTHENTICATION_FAILED)"
        data = body.encode()
        self.send_response(401)
        self.send_header("X-ClickHouse-Exception-Code", "516")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _refuse

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: the test reads what was sent, not the server's log


@pytest.fixture
def fake_clickhouse() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeClickHouse)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _FakeClickHouse.seen = []
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def test_connect_sends_the_separate_user_and_password(tmp_path: Path, fake_clickhouse: str) -> None:
    import base64

    settings = Settings(
        home=tmp_path,
        clickhouse_dsn=fake_clickhouse,
        clickhouse_user="analyst",
        clickhouse_password=PLANTED,
    )
    with pytest.raises(SinkError, match="AUTHENTICATION_FAILED") as raised:
        connect(settings)
    sent = base64.b64encode(f"analyst:{PLANTED}".encode()).decode()
    assert _FakeClickHouse.seen and _FakeClickHouse.seen[0] == f"Basic {sent}"
    # The server quoted the password back; the error (and its traceback) do not.
    assert PLANTED not in "".join(traceback.format_exception(raised.value))


def test_analysts_queries_run_as_the_analyst_user(tmp_path: Path, fake_clickhouse: str) -> None:
    """On a server, ReadOnlySQL connects as STREAMSCORE_CLICKHOUSE_ANALYST_USER, not as the
    sinks' user, and its refusal quotes neither password."""
    import base64

    from streams.sql import ReadOnlySQL

    settings = Settings(
        home=tmp_path,
        clickhouse_dsn=fake_clickhouse,
        clickhouse_user="sinks",
        clickhouse_password="sinks-password",
        clickhouse_analyst_user="analyst",
        clickhouse_analyst_password=PLANTED,
    )
    with pytest.raises(SinkError, match="AUTHENTICATION_FAILED") as raised:
        ReadOnlySQL.for_settings(settings).query("select 1")
    sent = base64.b64encode(f"analyst:{PLANTED}".encode()).decode()
    assert _FakeClickHouse.seen and _FakeClickHouse.seen[0] == f"Basic {sent}"
    shown = "".join(traceback.format_exception(raised.value))
    assert PLANTED not in shown and "sinks-password" not in shown


def test_analyst_credentials_need_a_server(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ANALYST_USER/PASSWORD are for a ClickHouse server"):
        Settings(home=tmp_path, clickhouse_analyst_user="analyst")
    with pytest.raises(ConfigError, match="without STREAMSCORE_CLICKHOUSE_ANALYST_USER"):
        Settings(
            home=tmp_path, clickhouse_dsn="http://ch:8123/", clickhouse_analyst_password=PLANTED
        )


# ---- ClickHouse DSN forms -----------------------------------------------------------------
#
# Each form of STREAMSCORE_CLICKHOUSE_DSN is connected to for real: chDB in-process, and a
# ClickHouse HTTP(S) interface served here in front of the same chDB engine, so that
# clickhouse-connect's whole connect sequence runs and the client it returns can be read.

# A self-signed EC certificate for 127.0.0.1 (also its own CA) and its key, for the HTTPS
# server: `openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes
# -days 36500 -addext subjectAltName=IP:127.0.0.1,DNS:localhost`.
SERVER_CERTIFICATE = """-----BEGIN CERTIFICATE-----
MIIBuDCCAV2gAwIBAgIUAYQcO5GnPDNrmDtX4rjL1MPU6fIwCgYIKoZIzj0EAwIw
IjEgMB4GA1UEAwwXc3RyZWFtc2NvcmUtdGVzdC1zZXJ2ZXIwIBcNMjYxMjAxMTkz
MDU1WhgPMjEyNjExMDcxOTMwNTVaMCIxIDAeBgNVBAMMF3N0cmVhbXNjb3JlLXRl
c3Qtc2VydmVyMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEIq44hP6+BSDg9K33
X/J/2ZIKeFKFBmIrFrGJjHC/kXkLWBu19xxfhz8C7FR2E/rzEXWgsCkQbkQJWos5
hsFfPqNvMG0wHQYDVR0OBBYEFBPFY7paGr9NNpUR3nFZNTPwckwqMB8GA1UdIwQY
MBaAFBPFY7paGr9NNpUR3nFZNTPwckwqMA8GA1UdEwEB/wQFMAMBAf8wGgYDVR0R
BBMwEYcEfwAAAYIJbG9jYWxob3N0MAoGCCqGSM49BAMCA0kAMEYCIQD2aBXF5G3h
kURizDjaswvT3NOxnNvdCdu5JIZvVo2mtgIhAKdPCa66UwcgYL9cK1wBsRbDvhPV
uyNNywj9jPGq3A95
-----END CERTIFICATE-----
"""
SERVER_KEY = """-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgE4XzeEzr47DSqf3z
FSqD5rJxL2F+M2OviOOllQKzJj2hRANCAAQirjiE/r4FIOD0rfdf8n/Zkgp4UoUG
YisWsYmMcL+ReQtYG7X3HF+HPwLsVHYT+vMRdaCwKRBuRAlaizmGwV8+
-----END PRIVATE KEY-----
"""
_FORMAT = re.compile(r"\s+FORMAT\s+(\w+)\s*$", re.IGNORECASE)


class _ClickHouseOverChdb(http.server.BaseHTTPRequestHandler):
    """ClickHouse's HTTP interface in front of a chDB client: runs each request's SQL (body
    or ``query=``) in the format it names, refuses a ``database=`` that does not exist as
    the server does, and records every request's parameters and headers."""

    engine: ClassVar[Any] = None
    seen: ClassVar[list[tuple[dict[str, str], dict[str, str]]]] = []

    def _answer(self) -> None:
        size = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(size).decode() if size else ""
        url = urlsplit(self.path)
        params = dict(parse_qsl(url.query))
        self.seen.append((params, dict(self.headers.items())))
        sql = params.get("query", "") + body
        match = _FORMAT.search(sql)
        fmt = match.group(1) if match else "TabSeparated"
        sql = sql[: match.start()] if match else sql
        database = params.get("database")
        try:
            if database and self.engine.command(f"exists database `{database}`") != 1:
                raise RuntimeError(f"Code: 81. DB::Exception: Database {database} does not exist")
            data, status = self.engine.raw_query(sql, fmt=fmt), 200
        except Exception as exc:
            data, status = str(exc).encode(), 500
        self.send_response(status)
        if status != 200:
            self.send_header("X-ClickHouse-Exception-Code", "81")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: the tests read what was sent


@pytest.fixture(scope="module")
def engine(chdb_settings: Settings) -> Iterator[Any]:
    """The session's chDB engine, which the HTTP(S) servers below answer from."""
    client = connect(chdb_settings)
    yield client
    client.close()


@pytest.fixture(params=["http", "https"])
def clickhouse_server(
    request: pytest.FixtureRequest, engine: Any, tmp_path: Path
) -> Iterator[tuple[str, str, Path]]:
    """(scheme, host:port, CA file) of a ClickHouse HTTP or HTTPS interface over chDB."""
    import ssl

    server = http.server.HTTPServer(("127.0.0.1", 0), _ClickHouseOverChdb)
    ca = tmp_path / "server.pem"
    ca.write_text(SERVER_CERTIFICATE)
    if request.param == "https":
        key = tmp_path / "server.key"
        key.write_text(SERVER_KEY)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(ca, key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    _ClickHouseOverChdb.engine, _ClickHouseOverChdb.seen = engine, []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield request.param, f"127.0.0.1:{server.server_address[1]}", ca
    finally:
        server.shutdown()
        server.server_close()


# (DSN after scheme://, extra settings, the user:password sent, what the client holds)
DSN_FORMS = {
    "host-and-database": ("{host}/{db}", {}, None, {"database": "{db}"}),
    "no-database": ("{host}", {}, None, {"database": None}),
    "user-and-password": (
        f"writer:{PLANTED}@{{host}}/{{db}}",
        {},
        f"writer:{PLANTED}",
        {"database": "{db}"},
    ),
    "percent-encoded-password": (
        "writer:p%40ss%3Aw%2Frd@{host}/{db}",
        {},
        "writer:p@ss:w/rd",
        {"database": "{db}"},
    ),
    "separate-user-and-password": (
        "{host}/{db}",
        {"clickhouse_user": "writer", "clickhouse_password": PLANTED},
        f"writer:{PLANTED}",
        {"database": "{db}"},
    ),
    "query-options": (
        "{host}/{db}?connect_timeout=3&send_receive_timeout=7&compress=false"
        "&client_name=streamscore-test",
        {},
        None,
        {"database": "{db}", "timeout": (3, 7), "compression": None, "agent": "streamscore-test "},
    ),
}


@pytest.mark.parametrize("form", list(DSN_FORMS))
def test_each_dsn_form_builds_the_client_it_names(
    form: str,
    clickhouse_server: tuple[str, str, Path],
    engine: Any,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import base64
    import logging

    scheme, host, ca = clickhouse_server
    template, extra, credentials, expected = DSN_FORMS[form]
    db = f"dsn_{form.replace('-', '_')}_{scheme}"
    engine.command(f"create database if not exists {db}")  # a named one must exist
    dsn = f"{scheme}://" + template.format(host=host, db=db)
    if scheme == "https":  # verify the server against the test's CA (a query option too)
        dsn += ("&" if "?" in dsn else "?") + f"ca_cert={ca}"
    settings = Settings(home=tmp_path, clickhouse_dsn=dsn, clickhouse_database=f"{db}_own", **extra)
    caplog.set_level(logging.DEBUG)
    client = connect(settings)
    try:
        assert client.url == f"{scheme}://{host}"
        assert client.database == (None if expected["database"] is None else db)
        if "timeout" in expected:
            assert (client.timeout.connect_timeout, client.timeout.read_timeout) == (3, 7)
        if "compression" in expected:
            assert client.compression is None
        sent = [headers for _params, headers in _ClickHouseOverChdb.seen]
        assert sent, "no request reached the server"
        auth = {h.get("Authorization") for h in sent}
        wanted = None if credentials is None else base64.b64encode(credentials.encode()).decode()
        assert auth == {None if wanted is None else f"Basic {wanted}"}
        if "agent" in expected:
            assert all(h["User-Agent"].startswith(expected["agent"]) for h in sent)
        # The configured database is created, whatever the DSN's own default is.
        assert engine.command(f"exists database {db}_own") == 1
    finally:
        client.close()
    shown = repr(settings) + str(settings) + caplog.text
    assert PLANTED not in shown


def test_a_chdb_dsn_opens_its_path_and_creates_the_database(chdb_settings: Settings) -> None:
    client = connect(chdb_settings.model_copy(update={"clickhouse_database": "dsn_chdb_own"}))
    try:
        assert type(client).__name__ == "ChdbClient"
        assert client.command("exists database dsn_chdb_own") == 1
        path = chdb_settings.clickhouse_url.removeprefix("chdb://")
        assert Path(path).is_dir()
    finally:
        client.close()
    with pytest.raises(ConfigError, match="names no chDB data path"):
        connect(Settings(clickhouse_dsn="chdb://"))


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("secure=true", "'secure'"),  # TLS is the scheme: https://
        ("max_execution_time=5", "'max_execution_time'"),  # a ClickHouse setting, not an option
        (f"password={PLANTED}", "'password'"),
    ],
    ids=["secure", "a-setting", "password"],
)
def test_a_dsn_option_clickhouse_connect_does_not_take_is_named_in_the_error(
    tmp_path: Path, query: str, named: str
) -> None:
    settings = Settings(home=tmp_path, clickhouse_dsn=f"http://{CLOSED}/?{query}")
    with pytest.raises(SinkError, match=named) as raised:
        connect(settings)
    assert PLANTED not in "".join(traceback.format_exception(raised.value))


class _FailingClient:
    """A clickhouse-connect client whose every call fails quoting its DSN."""

    def __getattr__(self, name: str) -> Any:
        def fail(*args: Any, **kwargs: Any) -> Any:
            raise OSError(f"connection to {DSN_WITH_PASSWORD} reset")

        return fail


def test_gateway_errors_are_redacted_and_drop_a_cause_that_quotes_a_dsn() -> None:
    import pyarrow as pa

    gateway = ClickHouseGateway(_FailingClient(), "streamscore")  # type: ignore[arg-type]
    calls = [
        lambda: gateway.query("select 1"),
        lambda: gateway.command("select 1"),
        lambda: gateway.insert_columns("t", [[1]], ["a"]),
        lambda: gateway.insert_arrow("t", pa.table({"a": [1]})),
    ]
    for call in calls:
        with pytest.raises(SinkError, match=r"analyst:\*\*\*@") as raised:
            call()
        assert raised.value.__cause__ is None
        assert PLANTED not in "".join(traceback.format_exception(raised.value))


def test_scoring_error_without_features_does_not_quote_the_dsn(tmp_path: Path) -> None:
    from streams.agents.score import Scoring
    from streams.clickhouse.reads import GatewayReads

    class NoRuns:
        def query(self, *args: Any, **kwargs: Any) -> Any:
            return SimpleNamespace(result_rows=[])

    settings = Settings(home=tmp_path, clickhouse_dsn=DSN_WITH_PASSWORD)
    gateway = ClickHouseGateway(NoRuns(), settings.clickhouse_database)  # type: ignore[arg-type]
    with pytest.raises(FeatureError, match=r"analyst:\*\*\*@") as raised:
        Scoring(settings, GatewayReads(gateway))
    assert PLANTED not in str(raised.value)


# ---- Redis (Feast online store) ----------------------------------------------------------


def _feast_redis_kwargs(connection_string: str) -> dict[str, Any]:
    from feast.infra.online_stores.redis import RedisOnlineStore

    nodes, params = RedisOnlineStore._parse_connection_string(connection_string)
    (node,) = nodes
    return {**params, **node}


def test_rediss_url_gives_feast_tls_user_password_and_db(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path,
        online_store="redis",
        redis_url=f"rediss://app:{PLANTED}@redis.example:6380/2?ssl_ca_certs=/etc/ca.pem",
    )
    kwargs = _feast_redis_kwargs(redis_connection_string(settings))
    assert kwargs == {
        "host": "redis.example",
        "port": "6380",
        "db": 2,
        "username": "app",
        "password": PLANTED,
        "ssl": True,
        "ssl_ca_certs": "/etc/ca.pem",
    }
    config = repo_config(settings)
    assert config.online_store.connection_string == redis_connection_string(settings)
    # redis-py builds a TLS connection with those (it connects only when used).
    import redis

    client = redis.Redis(**{**kwargs, "port": int(kwargs["port"])})
    pool = client.connection_pool
    assert pool.connection_class is redis.SSLConnection
    assert pool.connection_kwargs["password"] == PLANTED


def test_redis_password_setting_and_plain_url(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, redis_url="redis://r:6379/1", redis_password="12345")
    assert redis_connection_string(settings) == "r:6379,db=1,password=12345"
    assert redis_connection_string(Settings(home=tmp_path)) == "127.0.0.1:16379,db=0"


@pytest.mark.parametrize(
    "url",
    [
        f"redis://:{PLANTED},x@r:6379/0",  # Feast would cut the password at the comma
        "redis://:true@r:6379/0",  # Feast would hand redis-py the boolean True
        f"http://:{PLANTED}@r:6379/0",
        f"redis://:{PLANTED}@r:6379/0?ssl_ca_certs=/ca.pem",  # TLS options without rediss
        f"redis://:{PLANTED}@r:6379/zero",
    ],
    # Named ids: a test id would carry the planted password into the run's logs.
    ids=["comma", "boolean", "not-redis", "tls-options-without-rediss", "non-numeric-db"],
)
def test_redis_urls_feast_cannot_carry_are_refused_without_quoting_the_password(
    tmp_path: Path, url: str
) -> None:
    with pytest.raises(ConfigError, match="STREAMSCORE_REDIS") as raised:
        redis_connection_string(Settings(home=tmp_path, redis_url=url))
    assert PLANTED not in str(raised.value) and ":true@" not in str(raised.value)
