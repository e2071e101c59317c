"""HTTP views served by the worker's faust web server (bound to 127.0.0.1)."""

from __future__ import annotations

from streams.web.query import MAX_BODY_BYTES, PATH, handle_query_request, register_query_endpoint
from streams.web.token import issue_token, read_token

__all__ = [
    "MAX_BODY_BYTES",
    "PATH",
    "handle_query_request",
    "issue_token",
    "read_token",
    "register_query_endpoint",
]
