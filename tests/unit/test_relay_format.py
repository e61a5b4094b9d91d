"""What the relay writes for an outbox row: CloudEvents headers and the wire format (producers/relay_format.py)."""
from __future__ import annotations

import uuid
from datetime import datetime, timezone

import pytest

from billing import codec
from billing.config import Settings
from billing.registry import registry_for
from billing.store.outbox_relay import PendingRow
from producers.relay_format import RelayFormat, cloudevent_headers, relay_format
from producers.relay_publisher import message_headers

TENANT = uuid.UUID("6f1c2a0e-3b7d-4c55-9a8e-2f4d1c0b9e77")
AT = datetime(2026, 3, 1, 12, 30, 5, 123456, tzinfo=timezone.utc)


def row(stream: str, headers: dict, key: bytes | None = b"sub-1", payload: bytes = b"") -> PendingRow:
    return PendingRow(TENANT, 42, stream, key, payload, headers, AT)


def test_subscription_event_headers_name_the_event():
    h = cloudevent_headers(row("subscription_events", {"event-id": "ev-1", "event-type": "subscription.paused"}),
                           "/billing")
    assert h == {"ce_specversion": "1.0", "ce_id": "ev-1", "ce_source": "/billing",
                 "ce_type": "billing.v1.subscription.paused", "ce_time": "2026-03-01T12:30:05.123456Z",
                 "ce_tenantid": str(TENANT), "ce_subject": "sub-1"}


def test_invoice_request_headers_use_the_request_id():
    h = cloudevent_headers(row("invoice_requests", {"invoice-request-id": "ir-9"}), "/b")
    assert (h["ce_id"], h["ce_type"]) == ("ir-9", "billing.v1.InvoiceRequest")


def test_a_row_without_a_domain_id_gets_a_stable_one():
    h = cloudevent_headers(row("billing_runs", {}, key=None), "/b")
    assert (h["ce_id"], h["ce_type"]) == ("billing_runs/42", "billing.v1.BillingRunRequest")
    assert "ce_subject" not in h
    assert cloudevent_headers(row("billing_runs", {}, key=None), "/b")["ce_id"] == h["ce_id"]


def test_a_row_header_of_the_same_name_wins_and_message_headers_carry_each_once():
    r = row("invoice_requests", {"ce_type": "custom.type", "content-type": "x"})
    ce = cloudevent_headers(r, "/b")
    assert ce["ce_type"] == "custom.type"
    headers = message_headers(r, {"traceparent": "00-ab"}, ce)
    names = [k for k, _ in headers]
    assert len(names) == len(set(names))
    assert {"content-type", "ce_id", "ce_specversion", "outbox-id", "tenant-id", "traceparent"} <= set(names)


def test_single_object_format_passes_the_payload_through():
    payload = b"\xc3\x01" + b"\x00" * 8 + b"x"
    value, headers = RelayFormat(source="/b").message(row("invoice_requests", {}, payload=payload), "t")
    assert value == payload and "ce_dataschema" not in headers


def test_confluent_format_frames_the_payload_and_names_the_schema():
    url = f"mock://relay-{uuid.uuid4().hex}"
    fmt = relay_format(Settings(env_file="", kafka_wire_format="confluent", schema_registry_url=url))
    event = {"event_id": "e", "tenant_id": str(TENANT), "subscription_id": "s", "customer_id": "c",
             "type": "subscription.created", "occurred_at_us": 1}
    payload = codec.encode(codec.Schema.SUBSCRIPTION_EVENT, event)
    value, headers = fmt.message(row("subscription_events", {}, payload=payload), "billing.subscription-events.v1")
    schema_id = registry_for(url).client.get_latest_version("billing.subscription-events.v1-value").schema_id
    assert value == b"\x00" + schema_id.to_bytes(4, "big") + payload[codec.HEADER_SIZE:]
    assert headers["ce_dataschema"] == f"{url}/schemas/ids/{schema_id}"


def test_default_settings_keep_single_object_encoding():
    s = Settings(env_file="")
    assert (s.kafka_wire_format, s.schema_registry_url) == ("single-object", "")
    assert relay_format(s).registry is None


def test_confluent_without_a_registry_url_is_refused_naming_both_settings():
    with pytest.raises(ValueError, match="BILLING_KAFKA_WIRE_FORMAT=confluent needs BILLING_SCHEMA_REGISTRY_URL"):
        Settings(env_file="", kafka_wire_format="confluent")


def test_a_payload_that_is_not_avro_cannot_be_framed():
    fmt = relay_format(Settings(env_file="", kafka_wire_format="confluent",
                                schema_registry_url=f"mock://relay-{uuid.uuid4().hex}"))
    with pytest.raises(codec.CodecError, match="not a single-object"):
        fmt.message(row("invoice_requests", {}, payload=b'{"json": true}'), "t")
