"""Bounded consumption without a broker: the size split, placeholders for batches librdkafka
would not decompress, and CloudEvent fields that must not count (consumers/limits.py,
consumers/usage_payloads.py)."""
from __future__ import annotations

import json

from billing.services.usage import UsageEvent
from consumers.limits import PLACEHOLDER_HEADER, UndecompressableTracker, placeholder, split_too_large
from consumers.runner import Message
from consumers.usage_payloads import decode_batch

TENANT = "6f1c2a0e-3b7d-4c55-9a8e-2f4d1c0b9e77"
SUB = "0b7d3c1e-6b55-4c4e-9c3e-3f9d2a1b7c11"


def msg(value: bytes | None, offset: int) -> Message:
    return Message("billing.usage.v1", 0, offset, b"k", value, {}, None)


def test_values_over_the_limit_are_split_off_before_the_strategy():
    small, exact, big, none = msg(b"a" * 10, 0), msg(b"b" * 100, 1), msg(b"c" * 101, 2), msg(None, 3)
    work, dead = split_too_large([small, exact, big, none], 100)
    assert work == [small, exact, none]
    assert [(d.message.offset, d.reason) for d in dead] == [(2, "too_large")]
    assert "value of 101 bytes exceeds the limit of 100" in dead[0].detail
    assert split_too_large([small, big], None) == ([small, big], [])


def test_a_placeholder_is_always_dead_lettered_and_carries_no_bytes():
    p = placeholder("billing.usage.v1", 2, 41, "Decompression (codec 0x4) of message at 41 failed")
    assert (p.topic, p.partition, p.offset, p.key, p.value) == ("billing.usage.v1", 2, 41, None, None)
    assert PLACEHOLDER_HEADER.startswith("dlq.")  # replaced by the DLQ's own headers, never forwarded
    work, dead = split_too_large([msg(b"x", 40), p], None)
    assert [m.offset for m in work] == [40]
    assert dead[0].reason == "too_large" and "receive.message.max.bytes" in dead[0].detail
    assert "codec 0x4" in dead[0].detail


def test_tracker_steps_through_a_batch_that_keeps_reporting_its_base_offset():
    t = UndecompressableTracker()
    # A batch of three records at base offset 10: reported as 10 after each seek into it.
    assert [t.next_offset("t", 0, 10) for _ in range(3)] == [10, 11, 12]
    # The next bad batch, past the last placeholder, starts at its own base offset.
    assert t.next_offset("t", 0, 20) == 20
    assert t.next_offset("t", 1, 10) == 10  # partitions are apart
    # After a seek or an assignment the partition may be read again from an earlier offset.
    t.forget()
    assert t.next_offset("t", 0, 10) == 10


def _ce(data: dict) -> bytes:
    return json.dumps({"specversion": "1.0", "id": "e-1", "time": "2025-11-24T16:00:00Z", "subject": SUB,
                       "tenantid": TENANT, "data": data}).encode()


def test_a_junk_field_is_ignored_and_never_stands_in_for_the_quantity():
    plain = decode_batch([msg(_ce({"metric": "calls", "quantity": "3"}), 0)])[0]
    junk = decode_batch([msg(_ce({"metric": "calls", "quantity": "3", "junk": "x" * 1000,
                                  "count": 99, "value": "7"}), 0)])[0]
    assert junk == plain == [UsageEvent("e-1", TENANT, SUB, "calls", "3", 1_764_000_000_000_000, None)]
    # No quantity: refused, whatever else the data holds; never stored as one unit.
    events, _, dead = decode_batch([msg(_ce({"metric": "calls", "junk": "x" * 1000, "amount": "1"}), 0)])
    assert events == [] and [(d.reason, d.detail) for d in dead] == [("invalid_cloudevent", "data.quantity: missing")]
    # Junk inside properties is not a way around them either: values must be strings.
    events, _, dead = decode_batch([msg(_ce({"metric": "calls", "quantity": "1", "properties": {"a": {"b": 1}}}), 0)])
    assert events == [] and dead[0].detail.startswith("data.properties:")
