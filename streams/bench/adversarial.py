"""Hostile records at the ingestion limits, each with the verdict ingestion must reach.

One list shared by the guard tests (``tests/unit/test_guards.py``: each payload gets its
verdict) and ``streamscore bench ingest`` (the worst time any of them costs the guards).
The payloads aim at the checks that run on raw bytes: unterminated strings, long runs
of ``\\\\`` and ``\\"``, brackets inside strings and after escaped quotes, invalid UTF-8
at the very end, and long header values that the schema resolution reads and quotes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from streams.headers import EVENT_TYPE, SCHEMA_ID, SCHEMA_VERSION
from streams.ingest import (
    NOT_AN_OBJECT,
    NOT_JSON,
    NOT_UTF8,
    PAYLOAD_TOO_LARGE,
    SCHEMA_VIOLATION,
    TOO_DEEPLY_NESTED,
    Limits,
)

__all__ = ["ACCEPTED", "Adversarial", "adversarial_payloads", "valid_event"]

# The verdict of a payload that must pass every check.
ACCEPTED = "accepted"


@dataclass(frozen=True, slots=True)
class Adversarial:
    """One hostile record: its value, its headers and the verdict (a DLQ reason or ACCEPTED)."""

    name: str
    value: bytes
    expected: str
    headers: tuple[tuple[str, bytes], ...] = ()


def valid_event() -> dict[str, Any]:
    """A valid transaction/v2 whose merchant name is all brackets, escaped quotes and
    escaped backslashes (160 characters, under the schema's 200)."""
    return {
        "event_id": "d1e2f3a4-b5c6-4d7e-8f9a-0b1c2d3e4f5a", "event_type": "transaction",
        "schema_version": 2, "event_time": "2026-11-20T14:03:27.512Z",
        "account_id": "acc_000123", "card_id": "card_000123_1", "merchant_id": "m_00042",
        "amount": 42.5, "currency": "EUR", "mcc": "5411", "merchant_country": "DE",
        "card_country": "DE", "channel": "pos", "entry_mode": "contactless",
        "device_id": None, "ip": None, "is_3ds": False, "card_present": True,
        "geo": {"lat": 48.85, "lon": 2.35, "accuracy_m": 25},
        "merchant_name": '["{\\' * 40, "wallet": "apple_pay",
    }  # fmt: skip


def _fill(head: bytes, unit: bytes, tail: bytes, size: int) -> bytes:
    """``head + unit * k + tail`` with the largest ``k`` that keeps it within ``size``."""
    room = size - len(head) - len(tail)
    if room < 0:
        raise ValueError(f"{size} bytes cannot hold a {len(head) + len(tail)}-byte frame")
    return head + unit * (room // len(unit)) + tail


def _padded(value: bytes, size: int) -> bytes:
    """``value`` followed by JSON whitespace (every kind of it) up to exactly ``size`` bytes."""
    room = size - len(value)
    if room < 0:
        raise ValueError(f"a {len(value)}-byte event does not fit in {size} bytes")
    return value + (b" \n\t\r" * (room // 4 + 1))[:room]


def adversarial_payloads(limits: Limits, header_bytes: int = 1 << 20) -> list[Adversarial]:
    """Every hostile record at ``limits`` (values of about ``max_payload_bytes``; header
    values of ``header_bytes``), each with the verdict ingestion must reach."""
    size, depth = limits.max_payload_bytes, limits.max_nesting_depth
    if size < 4096 or depth < 2:
        raise ValueError(f"limits too small for these payloads: {limits}")
    event = valid_event()
    small = orjson.dumps(event)
    over = b"[" * (depth + 1)
    deep_pair = over + b"]" * (depth + 1)
    payloads = [
        # The report's payload: 33 brackets, then a string that never closes.
        Adversarial(
            "unterminated_escaped_quotes_deep",
            _fill(over + b'"', b'\\"', b"", size),
            TOO_DEEPLY_NESTED,
        ),
        # As deep as allowed; the brackets inside the open string must not count.
        Adversarial(
            "unterminated_escaped_quotes_at_depth",
            _fill(b"[" * depth + b'"', b'\\"[', b"", size),
            NOT_JSON,
        ),
        Adversarial(
            "unterminated_backslash_run", _fill(over + b'"', b"\\", b"", size), TOO_DEEPLY_NESTED
        ),
        Adversarial(
            "unterminated_string_of_brackets", _fill(b'{"a": "', b"[{", b"", size), NOT_JSON
        ),
        # An odd run of backslashes escapes the quote: the brackets are still in the string.
        Adversarial(
            "brackets_after_escaped_quote_odd_run",
            _fill(b'{"a": "', b"\\\\", b'\\"' + over + b'"}', size),
            "unknown_event_type",
        ),
        # An even run does not: the string closes and the brackets after it count.
        Adversarial(
            "brackets_after_even_backslash_run",
            _fill(b'{"a": "', b"\\\\", b'", "b": ' + deep_pair + b"}", size),
            TOO_DEEPLY_NESTED,
        ),
        Adversarial(
            "escaped_quotes_and_brackets_in_a_string",
            _fill(b'{"a": "', b'\\"[{', b'"}', size),
            "unknown_event_type",
        ),
        Adversarial(
            "deep_brackets_in_many_strings",
            _fill(b"[", b'"[[[[{{{{\\"",', b'""]', size),
            NOT_AN_OBJECT,
        ),
        # Every other quote closes a string, so one bracket in two is outside one.
        Adversarial("quote_bracket_alternation", _fill(b"", b'"[', b"", size), TOO_DEEPLY_NESTED),
        Adversarial(
            "deep_brackets",
            b"[" * (size // 2) + b"]" * (size // 2),
            TOO_DEEPLY_NESTED,
        ),
        Adversarial("one_level_too_deep", _padded(deep_pair, size), TOO_DEEPLY_NESTED),
        Adversarial(
            "at_the_depth_limit_with_braces_in_a_string",
            _padded(b"[" * depth + b'"' + b"{" * (depth + 1) + b'"' + b"]" * depth, size),
            NOT_AN_OBJECT,
        ),
        Adversarial("closing_brackets_first", _fill(b"", b"]", over, size), NOT_JSON),
        Adversarial("quotes_only", _fill(b"", b'"', b"", size), NOT_JSON),
        Adversarial("backslashes_only", _fill(b"", b"\\", b"", size), NOT_JSON),
        Adversarial(
            "control_characters_in_a_string", _fill(b'{"a": "', b"\x01", b'"}', size), NOT_JSON
        ),
        Adversarial("invalid_utf8_at_the_end", _padded(small, size - 1) + b"\xff", NOT_UTF8),
        Adversarial(
            "truncated_utf8_at_the_end",
            _fill(b'{"a": "', "é".encode(), b"\xe2\x82", size),
            NOT_UTF8,
        ),
        Adversarial("accepted_at_the_limit", _padded(small, size), ACCEPTED),
        Adversarial("over_the_limit_by_one", _padded(small, size + 1), PAYLOAD_TOO_LARGE),
        Adversarial(
            "long_string_value",
            orjson.dumps({**event, "merchant_name": "A" * (size - len(small))}),
            SCHEMA_VIOLATION,
        ),
        Adversarial(
            "long_escaped_string_value",
            orjson.dumps({**event, "merchant_name": '"[' * ((size - len(small)) // 3)}),
            SCHEMA_VIOLATION,
        ),
        Adversarial(
            "long_property_name",
            orjson.dumps({**event, "k" * (size - len(small) - 8): 1}),
            SCHEMA_VIOLATION,
        ),
        Adversarial(
            "long_event_type_field",
            orjson.dumps({"event_type": "t" * (size - 32)}),
            "unknown_event_type",
        ),
        Adversarial(
            "long_schema_id_header",
            small,
            "unknown_schema",
            ((SCHEMA_ID, b"https://streamscore.dev/schemas/" + b"x" * header_bytes),),
        ),
        Adversarial(
            "long_event_type_header", small, "schema_mismatch", ((EVENT_TYPE, b"t" * header_bytes),)
        ),
        Adversarial(
            "invalid_utf8_event_type_header",
            small,
            "schema_mismatch",
            ((EVENT_TYPE, b"\xff" * header_bytes),),
        ),
        Adversarial(
            "long_schema_version_header",
            small,
            "schema_mismatch",
            ((SCHEMA_VERSION, b"2" * header_bytes),),
        ),
        Adversarial(
            "whitespace_padded_schema_version_header",
            small,
            "schema_mismatch",
            ((SCHEMA_VERSION, b" " * header_bytes + b"2"),),
        ),
    ]
    return payloads
