"""HTTP views served by the worker's faust web server (bound to 127.0.0.1)."""

from __future__ import annotations

from streams.web.query import (
    FORMATS,
    QueryOutput,
    check_read_only,
    handle_query_request,
    open_readonly_gateway,
    register_query_endpoint,
    render,
    run_readonly_query,
)

__all__ = [
    "FORMATS",
    "QueryOutput",
    "check_read_only",
    "handle_query_request",
    "open_readonly_gateway",
    "register_query_endpoint",
    "render",
    "run_readonly_query",
]
