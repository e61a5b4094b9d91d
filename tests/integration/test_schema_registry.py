"""Interoperability through a real schema registry (Apicurio Registry, Confluent API) and the
real broker: in registry mode (BILLING_KAFKA_WIRE_FORMAT=confluent) the service's invoice
requests and subscription events are read by a registry-aware consumer written with
confluent-kafka's AvroDeserializer, with CloudEvents binary-mode headers; usage events written
by confluent-kafka's AvroSerializer are ingested by the usage consumer, beside single-object
ones on the same topic (a migration in progress).

The roles run on topics of this module's own, so the Confluent-framed messages never reach
the topics other tests read.
"""
from __future__ import annotations

import asyncio
import time
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from billing import codec
from billing.codec_confluent import set_registry_resolver, subject
from billing.config import Topics
from billing.kafka import consumer_config, ensure_topics, producer_config
from billing.services.usage import to_us
from billing.v1 import billing_pb2 as pb
from producers.usage_client import UsageProducer
from tests.integration.test_outbox_relay import app_pool, relays  # noqa: F401 - fixtures
from tests.integration.test_plans_api import plan_request
from tests.integration.test_subscriptions_api import rid, ts
from tests.integration.test_usage_ingest import _setup
from tests.kafka_helpers import running_roles

UTC = timezone.utc


@pytest.fixture(scope="module")
def registry_settings(migrated, schema_registry):
    tag = uuid.uuid4().hex[:8]
    topics = Topics(**{name: f"sr-{tag}.{value}" for name, value in Topics().model_dump().items()})
    settings = migrated.model_copy(update={"kafka_wire_format": "confluent", "schema_registry_url": schema_registry,
                                           "topics": topics})
    ensure_topics(settings)
    return settings


@pytest.fixture(scope="module")
async def registry_roles(registry_settings):
    async with running_roles(registry_settings, ("relay", "usage")) as svc:
        yield svc
    set_registry_resolver(None)  # this process's codec reads single-object only again


def read_values(settings, topic: str, done, timeout_s: float = 60) -> list:
    """(value, headers, key) of `topic` from the beginning, until `done(messages)`."""
    consumer = Consumer(consumer_config(settings, f"sr-test-{uuid.uuid4()}"))
    consumer.subscribe([topic])
    seen: list = []
    end = time.monotonic() + timeout_s
    try:
        while not done(seen):
            assert time.monotonic() < end, f"timed out on {topic}; saw {len(seen)} messages"
            for msg in consumer.consume(100, timeout=0.5):
                if msg.error() is None:
                    seen.append((msg.value(), {k: v.decode() for k, v in msg.headers() or []}, msg.key()))
    finally:
        consumer.close()
    return seen


async def test_output_topics_are_read_by_a_registry_aware_consumer(registry_roles, registry_settings,
                                                                   schema_registry, stub, tenant):
    topics = registry_settings.topics
    req = plan_request(base_fee="864.00", trial_days=0, interval=pb.INTERVAL_UNIT_DAY,
                       billing_timing=pb.BILLING_TIMING_IN_ARREARS, usage_charges=[])
    plan = (await stub.CreatePlan(req, metadata=tenant.md)).plan
    start = datetime.now(UTC) - timedelta(hours=6)
    sub = (await stub.CreateSubscription(pb.CreateSubscriptionRequest(
        request_id=rid(), customer_id="cust-sr", plan_id=plan.id, activate=True, start_at=ts(start)),
        metadata=tenant.md)).subscription
    await stub.CancelSubscription(pb.CancelSubscriptionRequest(
        request_id=rid(), id=sub.id, mode=pb.CANCEL_MODE_IMMEDIATELY), metadata=tenant.md)

    # An independent client of the registry: nothing shared with the service's.
    client = SchemaRegistryClient({"url": schema_registry})
    deserialize = AvroDeserializer(client)

    def decoded(topic: str, wanted: int) -> list[tuple[dict, dict]]:
        def mine(seen):
            read = [(deserialize(v, SerializationContext(topic, MessageField.VALUE)), h) for v, h, _ in seen]
            return [(d, h) for d, h in read if d["subscription_id"] == sub.id]

        seen = read_values(registry_settings, topic, lambda s: len(mine(s)) >= wanted)
        assert all(v[:1] == b"\x00" for v, _, _ in seen)  # the Confluent wire format, every message
        return mine(seen)

    [(invoice, h)] = await asyncio.to_thread(decoded, topics.invoice_requests, 1)
    assert invoice["subscription_id"] == sub.id and invoice["customer_id"] == "cust-sr"
    assert Decimal(invoice["total"]) > 0 and invoice["lines"][0]["kind"] == "proration_charge"
    # timestamp-micros: a registry-aware reader gets datetimes
    assert isinstance(invoice["issued_at_us"], datetime) and invoice["period_end_us"] > invoice["period_start_us"]
    assert abs(invoice["issued_at_us"] - datetime.now(UTC)) < timedelta(minutes=5)
    assert h["ce_specversion"] == "1.0" and h["ce_id"] == invoice["invoice_request_id"]
    assert h["ce_type"] == "billing.v1.InvoiceRequest" and h["ce_source"] == registry_settings.cloudevents_source
    assert h["ce_tenantid"] == tenant.id and h["content-type"].startswith("application/vnd.apache.avro+binary")
    assert abs(datetime.fromisoformat(h["ce_time"]) - datetime.now(UTC)) < timedelta(minutes=5)
    assert h["ce_dataschema"].startswith(f"{schema_registry}/schemas/ids/")

    events = await asyncio.to_thread(decoded, topics.subscription_events, 3)
    by_type = {e["type"]: (e, h) for e, h in events}
    assert {"subscription.created", "subscription.canceled"} <= set(by_type)
    event, h = by_type["subscription.canceled"]
    assert h["ce_id"] == event["event_id"] and h["ce_type"] == "billing.v1.subscription.canceled"
    assert isinstance(event["occurred_at_us"], datetime)
    # registered under TopicNameStrategy subjects
    assert {subject(topics.invoice_requests), subject(topics.subscription_events)} <= set(client.get_subjects())


async def test_usage_from_a_registry_aware_producer_is_ingested(registry_roles, registry_settings, schema_registry,
                                                               stub, tenant, admin_conn):
    _, sub = await _setup(stub, tenant)
    at = sub.start_at.ToDatetime(UTC) + timedelta(seconds=1)
    topic = registry_settings.topics.usage
    client = SchemaRegistryClient({"url": schema_registry})
    serialize = AvroSerializer(client, codec.schema_json(codec.Schema.USAGE_EVENT))  # auto-registers
    ctx = SerializationContext(topic, MessageField.VALUE)

    def event(quantity: str, when) -> dict:
        return {"event_id": str(uuid.uuid4()), "tenant_id": tenant.id, "subscription_id": sub.id,
                "metric_code": "calls", "quantity": quantity, "occurred_at_us": when, "properties": {}}

    values = [serialize(event("2", at), ctx),  # a datetime: the schema's timestamp-micros
              serialize(event("3", to_us(at) + 5), ctx),  # or microseconds
              codec.encode(codec.Schema.USAGE_EVENT, event("0.5", to_us(at) + 9))]  # single-object, same topic
    assert [v[:1] for v in values] == [b"\x00", b"\x00", b"\xc3"]

    def produce() -> None:
        producer = Producer(producer_config(registry_settings))
        for v in values:
            producer.produce(topic, key=sub.id, value=v)
        assert producer.flush(30) == 0

    def produce_with_our_client() -> None:  # UsageProducer in confluent mode frames the same way
        ours = UsageProducer(registry_settings)
        ours.send(str(uuid.uuid4()), tenant.id, sub.id, "calls", "1", to_us(at) + 11)
        ours.flush(30)

    await asyncio.to_thread(produce)
    await asyncio.to_thread(produce_with_our_client)
    row = None
    for _ in range(300):
        row = await admin_conn.fetchrow("select quantity_sum, event_count from usage_totals where subscription_id = $1",
                                        uuid.UUID(sub.id))
        if row is not None and row["event_count"] == 4:
            break
        await asyncio.sleep(0.1)
    assert row is not None and (row["quantity_sum"], row["event_count"]) == (Decimal("6.5"), 4)
    assert subject(topic) in client.get_subjects()


async def test_the_relay_holds_rows_while_the_registry_is_down(migrated, schema_registry, admin_conn, new_tenant,
                                                               relays):  # noqa: F811 - the imported fixture
    """Registry unreachable: rows wait (neither published nor parked); with the registry
    back they go out framed. A payload that is not Avro cannot be framed: parked."""
    from billing.devstack import free_port
    from tests.integration.test_outbox_relay import create_topics, insert, published, two_tenants, unique

    tenant, _ = await two_tenants(new_tenant, relays)
    avro_stream, json_stream, topic = unique("sr-avro"), unique("sr-json"), unique("t.sr")
    create_topics(migrated, topic)
    payload = codec.encode(codec.Schema.USAGE_EVENT, {
        "event_id": "e-held", "tenant_id": tenant, "subscription_id": "s", "metric_code": "calls", "quantity": "1",
        "occurred_at_us": 1})
    held = await insert(admin_conn, tenant, avro_stream, b"k", payload)
    down = migrated.model_copy(update={"kafka_wire_format": "confluent",
                                       "schema_registry_url": f"http://127.0.0.1:{free_port()}/apis/ccompat/v6"})
    relay = relays.start(settings=down, topics={avro_stream: topic})
    await asyncio.sleep(4)
    assert relay.is_leader
    assert (await published(admin_conn, [held]))[held] is None
    assert await admin_conn.fetchval("select parked_at from outbox where id = $1", held) is None
    await relays.stop(relay)

    up = migrated.model_copy(update={"kafka_wire_format": "confluent", "schema_registry_url": schema_registry})
    not_avro = await insert(admin_conn, tenant, json_stream, b"k", b'{"not": "avro"}')
    relays.start(settings=up, topics={avro_stream: topic, json_stream: topic})
    for _ in range(200):
        marks = await published(admin_conn, [held])
        parked = await admin_conn.fetchval("select park_reason from outbox where id = $1", not_avro)
        if marks[held] is not None and parked:
            break
        await asyncio.sleep(0.1)
    assert marks[held] is not None and parked == "invalid_record"
    [(value, headers, _)] = await asyncio.to_thread(read_values, migrated, topic, lambda seen: len(seen) >= 1)
    ctx = SerializationContext(topic, MessageField.VALUE)
    assert AvroDeserializer(SchemaRegistryClient({"url": schema_registry}))(value, ctx)["event_id"] == "e-held"
    assert headers["outbox-id"] == str(held) and headers["ce_id"] == f"{avro_stream}/{held}"
