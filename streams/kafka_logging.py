"""librdkafka's own log lines as Python log records, on the logger ``streams.librdkafka``.

Without a logger, librdkafka writes lines such as ``%6|…|BGQUEUE|rdkafka#producer-3| …``
straight to the process's stderr, past every logging handler (into the demo's progress
display, into a worker's JSON log). confluent-kafka's ``logger`` config key (Producer,
Consumer and AdminClient alike) takes a :class:`logging.Logger` instead; each line then
arrives as one record, librdkafka's syslog level mapped to Python's (3 → ERROR,
4 → WARNING, 5-6 → INFO, 7 → DEBUG), formatted ``"%s [%s] %s"`` from the facility, the
client's name and the message.

The records are delivered on the client's own queue, so they appear only when the
application serves it: ``Producer.poll()``/``flush()``, ``Consumer.poll()``/``consume()``,
``AdminClient.poll()``. A client that is never polled keeps its log lines queued.
"""

from __future__ import annotations

import logging

__all__ = ["LIBRDKAFKA_LOGGER", "librdkafka_logger"]

LIBRDKAFKA_LOGGER = "streams.librdkafka"


def librdkafka_logger() -> logging.Logger:
    """The logger every confluent-kafka client should be given as its ``logger`` config."""
    return logging.getLogger(LIBRDKAFKA_LOGGER)
