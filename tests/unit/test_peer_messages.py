"""bench/peer's messages for Kafka Connect: the same event as JSON with Connect's embedded schema."""
from __future__ import annotations

import json
import uuid

from bench.peer_messages import to_json
from billing import codec


TENANT = str(uuid.uuid4())


def _avro(event_id: str, quantity: str = "12.5") -> bytes:
    return codec.encode(codec.Schema.USAGE_EVENT, {
        "event_id": event_id, "tenant_id": TENANT, "subscription_id": "sub-1", "metric_code": "calls",
        "quantity": quantity, "occurred_at_us": 1_764_900_000_123_456, "properties": {}})


def test_an_avro_usage_event_becomes_json_with_schema_and_the_same_fields():
    value, event_id = to_json(_avro("ev-1", "-2"))
    doc = json.loads(value)
    assert event_id == "ev-1"
    assert doc["payload"] == {"tenant_id": TENANT, "event_id": "ev-1",
                              "subscription_id": "sub-1", "metric_code": "calls", "quantity": "-2",
                              "occurred_at": 1_764_900_000_123}
    fields = {f["field"]: f for f in doc["schema"]["fields"]}
    assert set(fields) == set(doc["payload"])
    assert fields["occurred_at"]["name"] == "org.apache.kafka.connect.data.Timestamp"


def test_bytes_that_are_not_a_usage_event_are_copied_as_they_are():
    junk = b"\x00\x01not avro"
    assert to_json(junk) == (junk, None)
