"""The worker's ``/sql`` bearer token: random per worker start, in a 0600 file under home.

The worker writes it (:func:`issue_token`) before it serves; ``streamscore sql``, the
report and status read it (:func:`read_token`) from the same ``STREAMSCORE_HOME``. Only a
process of the same user (or root) can read the file, so only those can query the worker.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from streams.errors import ConfigError

__all__ = ["TOKEN_FILE", "issue_token", "read_token", "token_path"]

TOKEN_FILE = "sql.token"  # noqa: S105 - a file name, not a secret


def token_path(home: Path) -> Path:
    return home / TOKEN_FILE


def issue_token(home: Path) -> str:
    """A new random token, written to ``<home>/sql.token`` with mode 0600 (atomically)."""
    home.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    path = token_path(home)
    temporary = path.with_name(f".{TOKEN_FILE}.{os.getpid()}")
    temporary.unlink(missing_ok=True)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, token.encode("ascii"))
    finally:
        os.close(fd)
    os.replace(temporary, path)
    return token


def read_token(home: Path) -> str:
    """The running worker's token; ConfigError naming the file when there is none."""
    path = token_path(home)
    try:
        token = path.read_text(encoding="ascii").strip()
    except FileNotFoundError as exc:
        raise ConfigError(
            f"no /sql token at {path}: the worker writes it when it starts; is it running "
            f"with this STREAMSCORE_HOME ({home})?"
        ) from exc
    except OSError as exc:
        raise ConfigError(f"cannot read the /sql token at {path}: {exc}") from exc
    if not token:
        raise ConfigError(f"the /sql token at {path} is empty; restart the worker")
    return token
