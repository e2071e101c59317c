"""Structured logs: one JSON object per line, with the worker's id and any ``extra=`` fields.

faust (through mode) configures logging itself when the worker starts and clears the
root handlers first, so a handler installed beforehand is lost. Hand it this module's
:func:`logging_config` instead: ``faust.Worker(app, logging_config=logging_config(...))``
applies it with ``logging.config.dictConfig`` in place of its coloured console handler.
:func:`configure_json_logging` applies the same config directly (CLI, tests, scripts).
"""

from __future__ import annotations

import logging
import logging.config
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import IO, Any

import orjson

from streams.text import bounded

__all__ = [
    "MAX_FIELD_CHARS",
    "JsonFormatter",
    "batch_scope",
    "configure_json_logging",
    "logging_config",
]

# The batch being handled: set by the batch loop, read by the formatter. asyncio.to_thread
# copies the context, so lines logged from the handler's threads carry it too.
_BATCH_ID: ContextVar[str | None] = ContextVar("streamscore_batch_id", default=None)


@contextmanager
def batch_scope(batch_id: str) -> Iterator[None]:
    """Every line logged inside carries ``batch_id`` (unless it passes its own)."""
    token = _BATCH_ID.set(batch_id)
    try:
        yield
    finally:
        _BATCH_ID.reset(token)


# The backstop for a line's message and each text field: the code that quotes input
# cuts it far shorter; this keeps any line it missed from echoing a megabyte.
MAX_FIELD_CHARS = 16_384

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_RESERVED = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line: time (UTC, ISO 8601, ms), level, logger, message,
    worker_id, the ``extra=`` fields (``event_id``, ``batch_id``, ...) and, when there is
    one, the exception's traceback as ``exception``. Text longer than ``max_field_chars``
    (four times that for a traceback) is cut with a marker that gives its length."""

    def __init__(self, worker_id: str = "", max_field_chars: int = MAX_FIELD_CHARS) -> None:
        super().__init__()
        self.worker_id = worker_id
        self.max_field_chars = max_field_chars

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, tz=UTC)
        limit = self.max_field_chars
        entry: dict[str, Any] = {
            "time": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": bounded(record.getMessage(), limit),
            "worker_id": self.worker_id,
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_") and key not in entry:
                entry[key] = bounded(value, limit) if isinstance(value, str) else value
        if "batch_id" not in entry and (batch_id := _BATCH_ID.get()) is not None:
            entry["batch_id"] = batch_id
        # A traceback ends with the exception's message, which may quote input too.
        if record.exc_info:
            entry["exception"] = bounded(self.formatException(record.exc_info), 4 * limit)
        if record.stack_info:
            entry["stack"] = bounded(self.formatStack(record.stack_info), 4 * limit)
        # default=str: an extra value orjson cannot write (a Path, a Decimal) is logged as
        # text rather than losing the line.
        return orjson.dumps(entry, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


def logging_config(
    level: str | int, worker_id: str, stream: str = "ext://sys.stderr"
) -> dict[str, Any]:
    """A ``dictConfig`` dict: the root logger writes JSON lines to ``stream`` at ``level``."""
    level_name = logging.getLevelName(level) if isinstance(level, int) else level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,  # loggers made at import time keep working
        "formatters": {"json": {"()": JsonFormatter, "worker_id": worker_id}},
        "handlers": {
            "json": {"class": "logging.StreamHandler", "formatter": "json", "stream": stream}
        },
        "root": {"level": level_name, "handlers": ["json"]},
    }


def configure_json_logging(
    level: str | int, worker_id: str, stream: IO[str] | None = None
) -> logging.Handler:
    """Make the root logger write JSON lines (to ``stream``, default stderr); returns the
    handler. Replaces the root's handlers; other loggers keep theirs."""
    config = logging_config(level, worker_id)
    logging.config.dictConfig(config)
    handler = logging.getLogger().handlers[0]
    if stream is not None and isinstance(handler, logging.StreamHandler):
        handler.setStream(stream)
    return handler
