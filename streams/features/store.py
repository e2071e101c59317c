"""Feast wiring: the repo's definitions and a FeatureStore configured from Settings.

The definitions in ``features/`` are plain Feast objects; the store's config (registry,
online store, repo path) is built here from Settings instead of ``feature_store.yaml``,
so each ``STREAMSCORE_HOME`` has its own registry and online store. The config lives in
memory only: the Redis password is never written to a file.
"""

from __future__ import annotations

import importlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

from streams.errors import ConfigError
from streams.features.paths import feast_dir
from streams.redact import redact

if TYPE_CHECKING:
    from feast import FeatureStore
    from redis import Redis

    from streams.settings import Settings

__all__ = [
    "FeastDefinitions",
    "feature_store",
    "load_definitions",
    "redis_client",
    "redis_connection_string",
    "repo_config",
]

PROJECT = "streamscore"
# How Feast encodes entity keys in the online store; streams.features.redis_store reads
# Redis keys with the same version.
ENTITY_KEY_SERIALIZATION_VERSION = 3
# TLS options of redis-py that a rediss:// URL may carry as query parameters.
_REDIS_TLS_OPTIONS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs")
REPO_MODULES = ("entities", "data_sources", "feature_views", "feature_services")


@dataclass(frozen=True, slots=True)
class FeastDefinitions:
    """Every Feast object the repo declares."""

    entities: tuple[Any, ...]
    data_sources: tuple[Any, ...]
    feature_views: tuple[Any, ...]
    feature_services: tuple[Any, ...]

    @property
    def objects(self) -> list[Any]:
        return [*self.entities, *self.data_sources, *self.feature_views, *self.feature_services]

    def feature_service(self, name: str) -> Any:
        for service in self.feature_services:
            if service.name == name:
                return service
        known = ", ".join(sorted(s.name for s in self.feature_services))
        raise ConfigError(f"no feature service {name!r} in the Feast repo (known: {known})")

    def feature_view(self, name: str) -> Any:
        for view in self.feature_views:
            if view.name == name:
                return view
        raise ConfigError(f"no feature view {name!r} in the Feast repo")


_loaded: dict[Path, FeastDefinitions] = {}


def load_definitions(repo_dir: Path) -> FeastDefinitions:
    """Import the Feast repo's modules (as ``feast apply`` does) and collect their objects."""
    from feast import Entity, FeatureService, FeatureView
    from feast.data_source import DataSource

    repo_dir = Path(repo_dir).resolve()
    if repo_dir in _loaded:
        return _loaded[repo_dir]
    if not (repo_dir / "feature_services.py").is_file():
        raise ConfigError(f"no Feast repo at {repo_dir} (STREAMSCORE_FEATURE_REPO_DIR)")
    # The repo's modules import each other by bare name, as under the feast CLI.
    if str(repo_dir) not in sys.path:
        sys.path.insert(0, str(repo_dir))
    found: dict[type, list[Any]] = {Entity: [], DataSource: [], FeatureView: [], FeatureService: []}
    for name in REPO_MODULES:
        module = importlib.import_module(name)
        origin = Path(getattr(module, "__file__", "") or "").resolve()
        if origin.parent != repo_dir:
            raise ConfigError(
                f"module {name!r} resolved to {origin}, not the Feast repo {repo_dir}; "
                "another module on sys.path shadows it"
            )
        for value in vars(module).values():
            for kind, bucket in found.items():
                if isinstance(value, kind) and not any(value is seen for seen in bucket):
                    bucket.append(value)
    definitions = FeastDefinitions(
        entities=tuple(found[Entity]),
        data_sources=tuple(found[DataSource]),
        feature_views=tuple(found[FeatureView]),
        feature_services=tuple(found[FeatureService]),
    )
    _loaded[repo_dir] = definitions
    return definitions


def _connection_value(name: str, value: str) -> str:
    """``value`` as Feast will read it back, or ConfigError (which never quotes it).

    Feast splits the connection string on ``,`` and JSON-decodes each value, so a comma
    would cut it and ``true`` or ``1.50`` would reach redis-py changed.
    """
    try:
        decoded = json.loads(value)
    except ValueError:
        decoded = value
    if "," in value or str(decoded) != value:
        raise ConfigError(
            f"the Redis {name} in STREAMSCORE_REDIS_URL/STREAMSCORE_REDIS_PASSWORD cannot be "
            "passed to Feast: it holds a ',' or reads as JSON (true, null, 1.50, a quoted "
            "string); choose another"
        )
    return value


def _redis_options(settings: Settings) -> tuple[str, int, list[tuple[str, str]]]:
    """Host, port and ``name=value`` options of ``settings.redis_url`` (checked): what
    Feast's connection string carries and what :func:`redis_client` connects with."""
    url = urlsplit(settings.redis_url)
    shown = redact(settings.redis_url)
    if url.scheme not in ("redis", "rediss"):
        raise ConfigError(
            f"STREAMSCORE_REDIS_URL={shown!r}: use redis://host:port/db (or rediss:// for TLS)"
        )
    try:
        port = url.port or 6379
    except ValueError:
        raise ConfigError(f"STREAMSCORE_REDIS_URL={shown!r} has no valid port") from None
    database = url.path.strip("/") or "0"
    host = url.hostname or "127.0.0.1"
    if not database.isdigit() or ":" in host:
        raise ConfigError(
            f"STREAMSCORE_REDIS_URL={shown!r}: the path must be a database number and the "
            "host a name or an IPv4 address (Feast's connection string cannot carry IPv6)"
        )
    options = [("db", database)]
    if url.username:
        options.append(("username", _connection_value("user name", unquote(url.username))))
    if settings.redis_password is not None:
        password: str | None = settings.redis_password.get_secret_value()
    else:
        password = unquote(url.password) if url.password else None
    if password:
        options.append(("password", _connection_value("password", password)))
    if url.scheme == "rediss":
        options.append(("ssl", "true"))
    query = parse_qs(url.query)
    unknown = sorted(set(query) - set(_REDIS_TLS_OPTIONS))
    if unknown or (query and url.scheme != "rediss"):
        raise ConfigError(
            f"STREAMSCORE_REDIS_URL={shown!r}: only a rediss:// URL takes parameters, and "
            f"only {', '.join(_REDIS_TLS_OPTIONS)}"
        )
    for name in _REDIS_TLS_OPTIONS:
        if name in query:
            options.append((name, _connection_value(name, query[name][-1])))
    return host, port, options


def redis_connection_string(settings: Settings) -> str:
    """Feast's Redis ``connection_string`` for ``settings.redis_url``: ``host:port,db=N``
    plus ``username=``, ``password=`` (the URL's or STREAMSCORE_REDIS_PASSWORD) and
    ``ssl=true`` for ``rediss://``. It holds the password: show it only through ``redact``."""
    host, port, options = _redis_options(settings)
    return ",".join([f"{host}:{port}", *(f"{name}={value}" for name, value in options)])


def redis_client(settings: Settings, timeout: float = 5.0) -> Redis:
    """A redis-py client for ``settings.redis_url``, with the same host, database, user,
    password and TLS options Feast's connection string gives Feast's own client, and
    socket timeouts (Feast's client has none: a hung server would hang it). It connects
    when first used."""
    from redis import Redis

    host, port, options = _redis_options(settings)
    # Feast JSON-decodes each value (db=0 → 0, ssl=true → True); the same here.
    kwargs: dict[str, Any] = {
        name: json.loads(v) if name in ("db", "ssl") else v for name, v in options
    }
    return Redis(
        host=host, port=port, socket_timeout=timeout, socket_connect_timeout=timeout, **kwargs
    )


def repo_config(settings: Settings) -> Any:
    """Feast's RepoConfig for this home: file offline store, SQLite or Redis online store."""
    from feast.repo_config import RepoConfig

    root = feast_dir(settings)
    online: dict[str, Any]
    if settings.online_store == "sqlite":
        online = {"type": "sqlite", "path": str(root / "online.db")}
    elif settings.online_store == "redis":
        # skip_dedup: the last materialisation wins, as in SQLite (Feast's default keeps a
        # value whose stored timestamp is not older, so a rerun of a date would leave the
        # first run's values behind). The serving side checks what a view holds against
        # the run it loads (streams.features.redis_store).
        online = {
            "type": "redis",
            "connection_string": redis_connection_string(settings),
            "skip_dedup": True,
        }
    else:
        raise ConfigError(
            f"STREAMSCORE_ONLINE_STORE={settings.online_store!r}: use 'sqlite' or 'redis'"
        )
    return RepoConfig(
        project=PROJECT,
        provider="local",
        registry={"path": str(root / "registry.db"), "cache_ttl_seconds": 60},
        online_store=online,
        offline_store={"type": "file"},
        entity_key_serialization_version=ENTITY_KEY_SERIALIZATION_VERSION,
        repo_path=root,
    )


def feature_store(settings: Settings) -> FeatureStore:
    """A FeatureStore over this home's registry and online store."""
    from feast import FeatureStore

    root = feast_dir(settings)
    root.mkdir(parents=True, exist_ok=True)
    return FeatureStore(repo_path=str(root), config=repo_config(settings))
