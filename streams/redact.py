"""Hide credentials in text that is about to be shown: errors, log lines, status, reports.

One function, :func:`redact`, used on every message path that may quote a DSN or URL
(``scheme://user:pass@host``), a ``password=...`` query parameter, or a Feast/Redis
connection string (``host:port,password=...,ssl=true``). The user name stays visible
because it helps the reader find which account failed; only the secret is replaced.
"""

from __future__ import annotations

import re

__all__ = ["MASK", "redact"]

MASK = "***"

# ``scheme://user:secret@host``: the secret runs up to the last ``@`` before the host
# part ends (a password may itself contain ``@`` or ``:`` when the caller did not
# percent-encode it). The user part has no ``:``, ``/`` or ``@``.
_USERINFO = re.compile(
    r"(?P<prefix>\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/@\s'\"]*:)(?P<secret>[^\s'\"/]*)@",
)

# ``password=secret`` (also ``passwd``, ``pwd``, ``sasl.password``, ``ssl.key.password``,
# ``STREAMSCORE_..._PASSWORD=``) in a query string, a connection string, a key=value log
# line or a config dict's repr (``'sasl.password': 'secret'``). The secret ends at the
# next separator a URL, a connection string or a repr would use. Words like ``token``
# are left alone: JSON parse errors ("unexpected token: ...") must stay readable.
_KEY_VALUE = re.compile(
    r"(?P<prefix>(?:\b|_|\.)(?:password|passwd|pwd)(?P<quote>['\"]?)\s*[=:]\s*['\"]?)"
    r"(?P<secret>[^\s&,;'\"}\)]+)",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    """Return ``text`` with every credential in it replaced by ``***``.

    >>> redact("http://analyst:hunter2@ch.local:8123/db")
    'http://analyst:***@ch.local:8123/db'
    >>> redact("redis.local:6379,password=hunter2,ssl=true")
    'redis.local:6379,password=***,ssl=true'
    """
    masked = _USERINFO.sub(lambda m: f"{m['prefix']}{MASK}@", text)
    return _KEY_VALUE.sub(lambda m: f"{m['prefix']}{MASK}", masked)
