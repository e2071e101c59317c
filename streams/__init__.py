"""streamscore: real-time ML scoring on Kafka.

Raw events are validated against versioned JSON Schemas at ingestion (schema on
write), joined with nightly-materialised features, scored with ONNX Runtime and
written to ClickHouse. Nothing here does work at import time.
"""

from __future__ import annotations

from streams.errors import StreamscoreError

__all__ = ["StreamscoreError", "__version__"]
__version__ = "0.1.0"
