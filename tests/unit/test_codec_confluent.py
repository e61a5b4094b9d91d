"""The Confluent Schema Registry wire format beside single-object encoding (billing.codec_confluent).

The registry here is confluent-kafka's own in-process one (`mock://` URLs of its
SchemaRegistryClient); the same paths against a real registry server and a real broker
are in tests/integration/test_schema_registry.py.
"""
from __future__ import annotations

import json
import uuid

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from billing import codec
from billing.codec_confluent import RegistryUnavailable, set_registry_resolver, subject, to_confluent
from billing.registry import Registry, registry_for
from consumers.runner import Message
from consumers.usage_payloads import decode_batch
from billing.services.usage_ingest import as_event

TOPIC = "billing.usage.v1"
T0 = 1_732_406_400_000_000  # 2024-11-24T00:00:00Z


def usage(i: int = 1, **over) -> dict:
    return {"event_id": f"e-{i}", "tenant_id": str(uuid.UUID(int=7)), "subscription_id": "sub-1",
            "metric_code": "calls", "quantity": f"{i}.5", "occurred_at_us": T0 + i, "properties": {}, **over}


@pytest.fixture
def registry():
    reg = registry_for(f"mock://unit-{uuid.uuid4().hex}")
    set_registry_resolver(reg)
    yield reg
    set_registry_resolver(None)


def test_framing_swaps_the_header_and_keeps_the_avro_body(registry):
    single = codec.encode(codec.Schema.USAGE_EVENT, usage())
    framed, schema_id = to_confluent(registry, TOPIC, single)
    assert framed[:1] == b"\x00" and int.from_bytes(framed[1:5], "big") == schema_id
    assert framed[5:] == single[codec.HEADER_SIZE:]
    # registered under the TopicNameStrategy subject, as the file's schema (with its logical types)
    latest = registry.client.get_latest_version(subject(TOPIC))
    assert latest.schema_id == schema_id
    assert json.loads(latest.schema.schema_str)["fields"][5]["type"]["logicalType"] == "timestamp-micros"
    # the same schema again: the same id
    assert to_confluent(registry, TOPIC, codec.encode(codec.Schema.USAGE_EVENT, usage(2)))[1] == schema_id


def test_readers_accept_both_formats_by_first_byte(registry):
    single = codec.encode(codec.Schema.USAGE_EVENT, usage())
    framed, _ = to_confluent(registry, TOPIC, single)
    assert codec.decode(codec.Schema.USAGE_EVENT, framed) == codec.decode(codec.Schema.USAGE_EVENT, single) == usage()
    assert codec.decode_many(codec.Schema.USAGE_EVENT, [framed, single]) == [usage(), usage()]
    assert codec.decode_any(framed) == (codec.Schema.USAGE_EVENT, usage())


def test_a_confluent_message_of_the_wrong_record_type_is_refused(registry):
    framed, _ = to_confluent(registry, "t", codec.encode(codec.Schema.USAGE_EVENT, usage()))
    with pytest.raises(codec.MalformedMessageError, match="expected billing.v1.InvoiceRequest"):
        codec.decode(codec.Schema.INVOICE_REQUEST, framed)


def test_unknown_schema_id_is_a_codec_error(registry):
    with pytest.raises(codec.UnknownSchemaError, match="schema id 4242"):
        codec.decode(codec.Schema.USAGE_EVENT, b"\x00" + (4242).to_bytes(4, "big") + b"\x02a")


def test_without_registry_the_confluent_format_is_refused_naming_the_setting():
    set_registry_resolver(None)
    with pytest.raises(codec.MalformedMessageError, match="BILLING_SCHEMA_REGISTRY_URL"):
        codec.decode(codec.Schema.USAGE_EVENT, b"\x00\x00\x00\x00\x01\x02a")


def test_a_newer_writer_schema_from_the_registry_resolves_to_the_current_one(registry):
    """A producer registered a version this reader never saw (a field added with a default):
    fetched by id, kept as a history version, resolved to the current schema."""
    raw = json.loads(codec.schema_json(codec.Schema.USAGE_EVENT))
    raw["fields"].append({"name": "source_region", "type": "string", "default": ""})
    ser = AvroSerializer(registry.client, json.dumps(raw), conf={"auto.register.schemas": True})
    value = ser({**usage(3), "source_region": "eu"}, SerializationContext(TOPIC, MessageField.VALUE))
    assert codec.decode(codec.Schema.USAGE_EVENT, value) == usage(3)


def test_registry_aware_clients_interoperate_both_ways(registry):
    """confluent-kafka's AvroDeserializer reads what we frame; we read its AvroSerializer's."""
    ctx = SerializationContext(TOPIC, MessageField.VALUE)
    framed, _ = to_confluent(registry, TOPIC, codec.encode(codec.Schema.USAGE_EVENT, usage(4)))
    read = AvroDeserializer(registry.client)(framed, ctx)
    assert read["occurred_at_us"].timestamp() * 1_000_000 == pytest.approx(T0 + 4)  # timestamp-micros: a datetime
    ser = AvroSerializer(registry.client, codec.schema_json(codec.Schema.USAGE_EVENT))
    assert codec.decode(codec.Schema.USAGE_EVENT, ser(read, ctx)) == usage(4)


def test_the_usage_consumer_decodes_confluent_values(registry):
    framed, _ = to_confluent(registry, TOPIC, codec.encode(codec.Schema.USAGE_EVENT, usage(5)))
    batch = [Message(TOPIC, 0, i, b"sub-1", v, {}, None) for i, v in
             enumerate([framed, b"\x00\x00\x00\x10\x00\x02", codec.encode(codec.Schema.USAGE_EVENT, usage(6))])]
    events, positions, dead = decode_batch(batch)
    assert [as_event(e).event_id for e in events] == ["e-5", "e-6"] and positions == [0, 2]
    assert [d.reason for d in dead] == ["undecodable"] and "schema id 4096" in dead[0].detail


def test_an_unreachable_registry_is_retried_not_dead_lettered():
    # a port nothing listens on; RegistryUnavailable is an OSError: the runner's retriable kind
    reg = Registry(SchemaRegistryClient({"url": "http://127.0.0.1:9", "timeout": 1, "max.retries": 0}), "http://127.0.0.1:9")
    set_registry_resolver(reg)
    try:
        with pytest.raises(RegistryUnavailable) as err:
            decode_batch([Message(TOPIC, 0, 0, None, b"\x00\x00\x00\x00\x07\x02a", {}, None)])
        assert isinstance(err.value, OSError)
        with pytest.raises(RegistryUnavailable):
            reg.id_for("x-value", codec.schema_json(codec.Schema.USAGE_EVENT))
    finally:
        set_registry_resolver(None)


def test_only_avro_is_framed(registry):
    with pytest.raises(codec.MalformedMessageError, match="not a single-object"):
        to_confluent(registry, "t", b'{"specversion": "1.0"}')
    framed, schema_id = to_confluent(registry, "t", codec.encode(codec.Schema.USAGE_EVENT, usage()))
    assert to_confluent(registry, "t", framed) == (framed, schema_id)  # already framed: as is
