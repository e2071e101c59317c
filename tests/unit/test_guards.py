"""Guards on raw bytes are linear and exact; whatever quotes input is cut with its length."""

from __future__ import annotations

import logging
import random
from typing import Any

import orjson
import pytest

from streams.agents.dlq import to_stored
from streams.bench.adversarial import ACCEPTED, Adversarial, adversarial_payloads, valid_event
from streams.errors import Violation
from streams.headers import DLQ_ERROR_MESSAGE, DLQ_ERROR_PATHS, SCHEMA_ID
from streams.ingest import (
    Accepted,
    DeadLetter,
    Limits,
    RawRecord,
    guard,
    ingest_record,
    nesting_depth,
    too_deep,
)
from streams.monitoring.logs import JsonFormatter
from streams.schemas import SchemaRegistry
from streams.sinks.handoff import (
    MAX_MESSAGE_CHARS,
    MAX_PATHS_BYTES,
    dead_letter_headers,
    log_dead_letter,
    paths_header,
)
from streams.text import MARKER_MAX_CHARS, bounded

LIMITS = Limits(max_payload_bytes=256 * 1024, max_nesting_depth=32)
MB = 1 << 20
# What a dead letter may cost in a DLQ header or a log line, whatever its input.
MESSAGE_BOUND = MAX_MESSAGE_CHARS + MARKER_MAX_CHARS
LINE_BOUND = MESSAGE_BOUND + 200  # plus "dead letter <topic>[p]@offset (reason at stage): "


def reference_depth(value: bytes) -> int:
    """The obvious byte-at-a-time scan nesting_depth must agree with: a backslash escapes
    the next byte, an unescaped quote opens or closes a string, brackets outside count."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in value:
        if escaped:
            escaped = False
        elif byte == ord("\\"):
            escaped = True
        elif byte == ord('"'):
            in_string = not in_string
        elif not in_string and byte in b"[{":
            depth += 1
            deepest = max(deepest, depth)
        elif not in_string and byte in b"]}":
            depth -= 1
    return deepest


PAYLOADS = adversarial_payloads(LIMITS)
# The same shapes at small limits: cheap enough for the byte-at-a-time reference scan.
SMALL = Limits(max_payload_bytes=8192, max_nesting_depth=5)
SMALL_PAYLOADS = adversarial_payloads(SMALL, header_bytes=8192)


def test_payloads_sit_at_the_limits() -> None:
    by_name = {p.name: p for p in PAYLOADS}
    assert len(by_name) == len(PAYLOADS)
    assert len(by_name["accepted_at_the_limit"].value) == LIMITS.max_payload_bytes
    assert len(by_name["over_the_limit_by_one"].value) == LIMITS.max_payload_bytes + 1
    # The reported payload: 33 brackets, a quote, escaped quotes to about 256 KB.
    reported = by_name["unterminated_escaped_quotes_deep"].value
    assert reported.startswith(b"[" * 33 + b'"\\"\\"')
    assert len(reported) > LIMITS.max_payload_bytes - 2
    assert {p.expected for p in PAYLOADS} >= {
        ACCEPTED, "too_deeply_nested", "not_json", "not_utf8", "not_an_object",
        "payload_too_large", "schema_violation", "unknown_schema", "schema_mismatch",
    }  # fmt: skip


CASES = [(LIMITS, p) for p in PAYLOADS] + [(SMALL, p) for p in SMALL_PAYLOADS]


@pytest.mark.parametrize(
    ("limits", "payload"),
    CASES,
    ids=[f"{p.name}-{limits.max_payload_bytes}" for limits, p in CASES],
)
def test_each_hostile_payload_gets_its_verdict(
    registry: SchemaRegistry, limits: Limits, payload: Adversarial
) -> None:
    record = RawRecord("t.raw", 1, 9, 0, b"k", payload.value, payload.headers)
    result = ingest_record(record, registry, limits)
    if payload.expected == ACCEPTED:
        assert isinstance(result, Accepted), result
        return
    assert isinstance(result, DeadLetter)
    assert result.reason == payload.expected, result.message
    assert result.record.value is payload.value  # the DLQ gets the bytes as they came
    headers = dict(dead_letter_headers(result, "ingest", "w-1", now_ms=1))
    assert len(headers[DLQ_ERROR_MESSAGE].decode()) <= MESSAGE_BOUND
    assert len(headers[DLQ_ERROR_PATHS]) <= MAX_PATHS_BYTES


def test_hostile_payloads_agree_with_the_reference_depth() -> None:
    for payload in SMALL_PAYLOADS:
        expected = reference_depth(payload.value)
        assert nesting_depth(payload.value) == expected, payload.name
        limit = SMALL.max_nesting_depth
        assert too_deep(payload.value, limit) == (expected > limit), payload.name


def _random_text(rng: random.Random) -> bytes:
    """Bytes made of the characters that matter to the depth scan, often in runs, at
    lengths on both sides of 64-bit word boundaries."""
    length = rng.choice([rng.randrange(0, 20), rng.randrange(50, 140), rng.randrange(1, 700)])
    parts: list[bytes] = []
    size = 0
    while size < length:
        if rng.random() < 0.2:
            part = rng.choice([b"\\", b'"', b"["]) * rng.randrange(1, 70)
        else:
            part = bytes([rng.choice(b'[]{}"\\\\\\a ')])
        parts.append(part)
        size += len(part)
    return b"".join(parts)[:length]


def test_nesting_depth_matches_the_reference_on_random_bytes() -> None:
    rng = random.Random(20261120)
    for _ in range(4000):
        text = _random_text(rng)
        expected = reference_depth(text)
        assert nesting_depth(text) == expected, text
        limit = rng.randrange(0, 12)
        assert too_deep(text, limit) == (expected > limit), (text, limit)


def _random_json(rng: random.Random, depth: int) -> tuple[Any, int]:
    """A random JSON value and its true nesting depth; strings full of brackets,
    quotes and backslashes."""
    roll = rng.random()
    if depth <= 0 or roll < 0.3:
        text = "".join(rng.choice('[]{}"\\ab') for _ in range(rng.randrange(0, 12)))
        return rng.choice([text, 1, None, True]), 0
    children = [_random_json(rng, depth - 1) for _ in range(rng.randrange(0, 4))]
    inner = max((d for _, d in children), default=0)
    if roll < 0.65:
        return [c for c, _ in children], inner + 1
    keys = [
        "".join(rng.choice('[{"\\k') for _ in range(rng.randrange(0, 6))) + str(i)
        for i in range(len(children))
    ]
    return dict(zip(keys, (c for c, _ in children), strict=True)), inner + 1


def test_nesting_depth_of_valid_json_is_the_depth_of_what_it_parses_to() -> None:
    rng = random.Random(7)
    for _ in range(1500):
        value, depth = _random_json(rng, rng.randrange(0, 8))
        text = orjson.dumps(value)
        assert orjson.loads(text) == value
        assert nesting_depth(text) == depth, text


def test_guard_refuses_before_parsing_and_passes_the_rest() -> None:
    assert guard(RawRecord("t", 0, 0, 0, None, None), LIMITS) is not None
    deep = guard(RawRecord("t", 0, 0, 0, None, b"[" * 33), LIMITS)
    assert deep is not None and deep.reason == "too_deeply_nested"
    assert guard(RawRecord("t", 0, 0, 0, None, b'{"a": "[[[[\\"'), LIMITS) is None


def test_bounded_cuts_with_a_marker_that_gives_the_length() -> None:
    assert bounded("short", 10) == "short"
    assert bounded(b"short", 10) == "short"
    assert bounded("x" * 10, 10) == "x" * 10
    cut = bounded(b"a" * MB, 100)
    assert cut == "a" * 100 + f"…[truncated, {MB} bytes]"
    assert bounded("é" * MB, 3) == f"ééé…[truncated, {MB} chars]"
    # A multi-byte character cut in two is replaced, not an error.
    assert bounded("é".encode() * 10, 3).startswith("é\ufffd")
    quoted = bounded("line\nbreak" * MB, 8, quote=True)
    assert quoted == f"'line\\nbre'…[truncated, {10 * MB} chars]"
    assert len(bounded("\x00" * MB, 50, quote=True)) <= 10 * 50 + 2 + MARKER_MAX_CHARS
    assert len(f"…[truncated, {2**64 - 1} bytes]") == MARKER_MAX_CHARS


def test_a_megabyte_header_value_makes_a_short_dlq_header_and_log_line(
    registry: SchemaRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    value = orjson.dumps(valid_event())
    header = b"https://streamscore.dev/schemas/" + b"x" * MB
    record = RawRecord("t.raw", 2, 5, 0, b"k", value, [(SCHEMA_ID, header)])
    dead = ingest_record(record, registry, LIMITS)
    assert isinstance(dead, DeadLetter) and dead.reason == "unknown_schema"
    assert f"[truncated, {len(header)} bytes]" in dead.message
    assert len(dead.message) < 200
    headers = dead_letter_headers(dead, "ingest", "w-1", now_ms=1)
    message = dict(headers)[DLQ_ERROR_MESSAGE].decode()
    assert len(message) <= MESSAGE_BOUND and f"{len(header)} bytes" in message
    assert headers[0] == (SCHEMA_ID, header)  # the record's own headers travel as they came
    assert dead.record.value is value
    with caplog.at_level(logging.INFO, logger="streams.sinks.handoff"):
        log_dead_letter(dead, "ingest")
    (line,) = caplog.records
    assert len(line.getMessage()) <= LINE_BOUND
    assert f"[truncated, {len(header)} bytes]" in line.getMessage()


def test_a_megabyte_string_in_an_event_makes_a_short_dlq_header_and_log_line(
    registry: SchemaRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    # A limit above 1 MB so that the event reaches validation, whose message quotes it.
    value = orjson.dumps({**valid_event(), "merchant_name": "A" * MB})
    dead = ingest_record(RawRecord("t.raw", 0, 1, 0, None, value), registry, Limits(2 * MB, 32))
    assert isinstance(dead, DeadLetter) and dead.reason == "schema_violation"
    (violation,) = dead.violations
    assert violation.path == "$.merchant_name"
    cut = violation.message.rsplit("[truncated, ", 1)[1]
    assert int(cut.split(" ")[0]) > MB  # the validator's message, value included
    headers = dict(dead_letter_headers(dead, "ingest", "w-1", now_ms=1))
    assert len(headers[DLQ_ERROR_MESSAGE].decode()) <= MESSAGE_BOUND
    assert b"[truncated, " in headers[DLQ_ERROR_MESSAGE]
    assert dead.record.value is value
    with caplog.at_level(logging.INFO, logger="streams.sinks.handoff"):
        log_dead_letter(dead, "ingest")
    (line,) = caplog.records
    assert len(line.getMessage()) <= LINE_BOUND and "[truncated, " in line.getMessage()


def test_a_megabyte_event_id_is_cut_in_the_log_line(
    registry: SchemaRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    value = orjson.dumps({"event_id": "e" * 60_000, "event_type": "alien"})
    dead = ingest_record(RawRecord("t.raw", 0, 1, 0, None, value), registry, LIMITS)
    assert isinstance(dead, DeadLetter) and dead.reason == "unknown_event_type"
    with caplog.at_level(logging.INFO, logger="streams.sinks.handoff"):
        log_dead_letter(dead, "ingest")
    (line,) = caplog.records
    assert line.event_id.endswith("…[truncated, 60000 chars]")
    assert len(line.event_id) < 200


def test_paths_header_keeps_to_its_bound_and_counts_what_it_left_out() -> None:
    many = [Violation(f"$.field_{i:05d}", "wrong") for i in range(5000)]
    header = paths_header(many)
    assert len(header) <= MAX_PATHS_BYTES
    paths = orjson.loads(header)
    assert paths[0] == "$.field_00000"
    assert paths[-1] == "…[truncated, 5000 paths]"
    assert orjson.loads(paths_header([Violation("$.b", "x"), Violation("$.a", "y")])) == [
        "$.a",
        "$.b",
    ]


class _DlqMessage:
    """What the DLQ agent reads of a confluent-kafka Message."""

    def __init__(self, headers: list[tuple[str, bytes]]) -> None:
        self._headers = headers

    def topic(self) -> str:
        return "p.events.dlq"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return 17

    def headers(self) -> list[tuple[str, bytes]]:
        return self._headers

    def key(self) -> bytes:
        return b"k"

    def value(self) -> bytes:
        return b"payload"

    def timestamp(self) -> tuple[int, int]:
        return (1, 1_700_000_000_000)


def test_dlq_rows_keep_our_headers_and_cut_foreign_ones(registry: SchemaRegistry) -> None:
    by_name = {p.name: p for p in PAYLOADS}
    letter = ingest_record(
        RawRecord("t.raw", 2, 5, 0, b"k", b'{"event_id": 1', ()), registry, LIMITS
    )
    assert isinstance(letter, DeadLetter)
    ours = dead_letter_headers(letter, "ingest", "w-1", now_ms=1)
    stored = to_stored(_DlqMessage(ours))  # type: ignore[arg-type]
    assert (stored.topic, stored.partition, stored.offset) == ("t.raw", 2, 5)
    assert stored.message == letter.message and stored.reason == "not_json"
    foreign = [
        ("trace", b"t" * MB),
        (DLQ_ERROR_MESSAGE, b"m" * MB),
        (DLQ_ERROR_PATHS, b"[" + b'"$.a",' * MB + b'"$.b"]'),
        ("event-type", by_name["long_event_type_header"].headers[0][1]),
    ]
    row = to_stored(_DlqMessage(foreign))  # type: ignore[arg-type]
    assert row.message.endswith(f"…[truncated, {MB} bytes]") and len(row.message) < 5000
    assert row.event_type.endswith(f"…[truncated, {MB} bytes]") and len(row.event_type) < 300
    assert len(row.paths) == 1 and len(row.paths[0]) < 300
    assert row.offset == 17  # no dlq.source.offset: the DLQ's own coordinates


def test_json_log_lines_are_cut_whatever_logs_them() -> None:
    formatter = JsonFormatter("w-1", max_field_chars=1000)
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "got %s", ("v" * MB,), None)
    record.detail = "d" * MB
    line = formatter.format(record)
    assert len(line) < 3000
    entry = orjson.loads(line)
    assert entry["message"].endswith(f"…[truncated, {MB + 4} chars]")
    assert entry["detail"].endswith(f"…[truncated, {MB} chars]")
