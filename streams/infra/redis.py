"""A local Redis server for the Feast online store: Debian's ``redis-server``, run by us.

State under ``<home>/redis``: ``redis.conf`` (owner-only: it holds the password),
``data/`` (the append-only file and snapshots, so a restart keeps the features),
``redis.log`` and ``redis.pid``. The server listens on 127.0.0.1 at
``STREAMSCORE_REDIS_PORT`` (16379), never on Redis's usual 6379: a system Redis that
Debian's package may have started there is none of ours, and nothing here talks to it.
It asks for the password clients are given (STREAMSCORE_REDIS_PASSWORD or the one in
STREAMSCORE_REDIS_URL), so its clients need no other settings.

Guarantees, as for the broker (:mod:`streams.infra.kafka`): ``up`` is idempotent (a
running server is left alone; a killed one is started again on the same data) and returns
once the server answers PING; ``down`` stops only the process this state folder started
(the pid file's process must carry this folder's ``redis.conf`` on its command line).
When STREAMSCORE_REDIS_URL names another host, nothing here starts anything.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from streams.errors import ConfigError, InfraError
from streams.infra.process import alive, read_pid, start_detached, stop, tail
from streams.redact import redact

if TYPE_CHECKING:
    from streams.settings import Settings

__all__ = ["LOOPBACK", "LocalRedis", "RedisStatus", "redis_server_config"]

LOOPBACK = ("127.0.0.1", "localhost")
# Where Debian's package puts it, for a PATH without /usr/bin (cron, systemd units).
_DEBIAN_BINARY = Path("/usr/bin/redis-server")


@dataclass(frozen=True, slots=True)
class RedisStatus:
    """The local Redis (or the external one): whether it runs, where, what it holds."""

    running: bool
    url: str  # redacted
    pid: int | None = None
    managed: bool = True
    state_dir: Path | None = None
    log_file: Path | None = None
    keys: int | None = None
    version: str = ""
    detail: str = ""


def _quote(value: str) -> str:
    """``value`` as one argument of redis.conf (double-quoted, escapes for ``\\`` and ``"``)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def redis_server_config(port: int, data_dir: Path, password: str | None) -> str:
    """redis.conf for the local server: loopback only, persistent, no daemon, the
    command line left as started (``set-proc-title no``: the pid check reads it)."""
    lines = [
        "# Written by streamscore (streams/infra/redis.py) at each start; edits are lost.",
        "bind 127.0.0.1",
        f"port {port}",
        "protected-mode yes",
        "daemonize no",
        "supervised no",
        "set-proc-title no",
        f"dir {_quote(str(data_dir))}",
        # Every write is in the append-only file within a second; the nightly run writes
        # once a day, so the features survive a SIGKILL or a reboot.
        "appendonly yes",
        "appendfsync everysec",
        # The append-only file is the persistence: no RDB snapshots besides it (Redis's
        # default saves after 10,000 writes in a minute, a fork every minute of a nightly
        # load, each copying the whole data set)
        'save ""',
        # ... and the nightly run compacts it after each load (BGREWRITEAOF:
        # streams.features.redis_store.compact_after_load), not Redis in the middle of one
        # (a fork copying the data set while it is written, on the core the writer needs)
        "auto-aof-rewrite-percentage 0",
        'logfile ""',  # stdout: the log file start_detached appends to
        "loglevel notice",
    ]
    if password:
        lines.append(f"requirepass {_quote(password)}")
    return "\n".join(lines) + "\n"


class LocalRedis:
    """The project-owned Redis under ``settings.home / 'redis'``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.root = settings.home / "redis"

    @property
    def config_file(self) -> Path:
        return self.root / "redis.conf"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_file(self) -> Path:
        return self.root / "redis.log"

    @property
    def pid_file(self) -> Path:
        return self.root / "redis.pid"

    @property
    def managed(self) -> bool:
        """True when STREAMSCORE_REDIS_URL names this machine (streamscore runs the server)."""
        return (urlsplit(self.settings.redis_url).hostname or "127.0.0.1") in LOOPBACK

    @property
    def url(self) -> str:
        return redact(self.settings.redis_url)

    def pid(self) -> int | None:
        """The server's pid if it runs (this folder's config path is on its command line)."""
        return read_pid(self.pid_file, str(self.config_file))

    def _password(self) -> str | None:
        if self.settings.redis_password is not None:
            return self.settings.redis_password.get_secret_value() or None
        password = urlsplit(self.settings.redis_url).password
        return unquote(password) if password else None

    def _check_url(self) -> None:
        """The URL clients use must reach the server this starts."""
        url = urlsplit(self.settings.redis_url)
        try:
            port = url.port or 6379
        except ValueError:
            raise ConfigError(f"STREAMSCORE_REDIS_URL={self.url!r} has no valid port") from None
        if url.scheme != "redis":
            raise InfraError(
                f"STREAMSCORE_REDIS_URL={self.url!r}: the local redis-server speaks plain TCP "
                "on 127.0.0.1 (use redis://, or point the URL at a TLS server of your own)"
            )
        if port != self.settings.redis_port:
            raise InfraError(
                f"STREAMSCORE_REDIS_URL={self.url!r} names port {port} but the local server "
                f"listens on STREAMSCORE_REDIS_PORT={self.settings.redis_port}: set both to "
                "the same port"
            )
        if url.username and unquote(url.username) != "default":
            raise InfraError(
                f"STREAMSCORE_REDIS_URL={self.url!r} names user {unquote(url.username)!r}; "
                "the local redis-server has the default user only (drop the user name)"
            )

    @staticmethod
    def binary() -> str:
        found = shutil.which("redis-server")
        if found is None and _DEBIAN_BINARY.is_file():
            found = str(_DEBIAN_BINARY)
        if found is None:
            raise InfraError(
                "redis-server is not installed: apt-get install -y --no-install-recommends "
                "redis-server (Debian's package; streamscore runs its own server on "
                "STREAMSCORE_REDIS_PORT, not the system one)"
            )
        return found

    def prepare(self) -> None:
        """State folder and redis.conf (rewritten each start: the port or password may move)."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        text = redis_server_config(self.settings.redis_port, self.data_dir, self._password())
        fd = os.open(self.config_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.chmod(self.config_file, 0o600)  # an older file keeps its mode through O_CREAT

    # -- lifecycle ----------------------------------------------------------------
    def up(self, timeout: float = 30.0) -> RedisStatus:
        """Start the server unless it runs; return once it answers PING. Idempotent."""
        from streams.infra.kafka import port_in_use

        if not self.managed:
            raise InfraError(
                f"STREAMSCORE_REDIS_URL={self.url} names another host; streamscore does not "
                "start a local Redis for it"
            )
        self._check_url()
        if self.pid() is not None:
            return self.status(detail="already running")
        port = self.settings.redis_port
        if port_in_use(port):
            raise InfraError(
                f"port {port} is taken by another program; set STREAMSCORE_REDIS_PORT and "
                "STREAMSCORE_REDIS_URL to another port, or STREAMSCORE_REDIS_URL alone to "
                "use that server"
            )
        binary = self.binary()
        self.prepare()
        pid = start_detached(
            [binary, str(self.config_file)], self.log_file, self.pid_file, cwd=self.root
        )
        self._wait(pid, timeout)
        return self.status(detail="started")

    def _wait(self, pid: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        error = ""
        while time.monotonic() < deadline:
            if not alive(pid):
                self.pid_file.unlink(missing_ok=True)
                raise InfraError(
                    f"redis-server exited during start-up; log {self.log_file}:\n"
                    f"{redact(tail(self.log_file))}"
                )
            error = self.ping()
            if not error:
                return
            time.sleep(0.1)
        stop(pid, timeout=10)
        self.pid_file.unlink(missing_ok=True)
        raise InfraError(
            f"redis-server did not answer PING on port {self.settings.redis_port} within "
            f"{timeout:.0f}s ({error}); log {self.log_file}:\n{redact(tail(self.log_file, 15))}"
        )

    def ping(self, timeout: float = 1.0) -> str:
        """'' when the server at STREAMSCORE_REDIS_URL answers PING, else why not (redacted)."""
        from streams.features.store import redis_client

        client = redis_client(self.settings, timeout=timeout)
        try:
            client.ping()
        except Exception as exc:  # refused, loading, wrong password: all mean "not ready"
            return redact(f"{type(exc).__name__}: {exc}")
        finally:
            client.close()
        return ""

    def down(self, timeout: float = 30.0) -> bool:
        """Stop the server this folder started (it writes its data first). False, and
        nothing done, when none runs."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        stop(pid, timeout)
        self.pid_file.unlink(missing_ok=True)
        return True

    def status(self, detail: str = "") -> RedisStatus:
        """Whether it runs, where, and how many keys the database holds."""
        if not self.managed:
            return self._remote_status()
        pid = self.pid()
        if pid is None:
            return RedisStatus(
                False, self.url, state_dir=self.root, log_file=self.log_file,
                detail=detail or "not running",
            )  # fmt: skip
        keys, version, error = self._info()
        if error and not detail:
            detail = f"runs but does not answer: {error}"
        return RedisStatus(
            True, self.url, pid, state_dir=self.root, log_file=self.log_file, keys=keys,
            version=version, detail=detail,
        )  # fmt: skip

    def _info(self) -> tuple[int | None, str, str]:
        from streams.features.store import redis_client

        client = redis_client(self.settings, timeout=2.0)
        try:
            keys = int(client.dbsize())  # type: ignore[arg-type]
            version = str(client.info("server").get("redis_version", ""))  # type: ignore[union-attr]
        except Exception as exc:
            return None, "", redact(f"{type(exc).__name__}: {exc}")
        finally:
            client.close()
        return keys, version, ""

    def _remote_status(self) -> RedisStatus:
        keys, version, error = self._info()
        return RedisStatus(
            not error, self.url, managed=False, keys=keys, version=version,
            detail=error or "external server",
        )  # fmt: skip
