"""Issue #8 item 3, through the real broker: abusive messages on the usage topic and the
subscription-command topic are dead-lettered with a reason header (or, for a well-formed
command the rules refuse, answered with a command.rejected event), and the consumer goes
on: a good message produced after all of them takes effect.

Each abusive message has a key of its own, so its dead letter is found by key; the
expected reason is checked against the `dlq.reason` header, and the dead letter carries
the original bytes.
"""
from __future__ import annotations

import asyncio
import io
import json
import os
import time
import uuid
from datetime import timezone

import pytest
from confluent_kafka import Producer
from fastavro import parse_schema, schemaless_writer

from billing import codec
from billing.codec import Schema
from billing.kafka import producer_config
from tests.abuse.world import build_world
from tests.kafka_helpers import TopicReader, command, running_roles, wait_until

pytestmark = [pytest.mark.abuse, pytest.mark.timeout(600)]

BIG = 9 * 1024 * 1024  # the broker takes 10 MiB (message.max.bytes); the clients are configured to match
# Incompressible: librdkafka refuses a zstd batch whose compressed size passes half of
# receive.message.max.bytes before the size check sees it (tests/integration/
# test_bounded_consumption.py covers that case); this one reaches the size check.
BIG_RANDOM = 4 * 1024 * 1024


@pytest.fixture(scope="module")
async def roles(migrated):
    async with running_roles(migrated, ("usage", "commands")) as svc:
        yield svc


@pytest.fixture(scope="module")
async def world(stub, admin_conn):
    from billing.services.tenants import create_tenant
    from tests.conftest import Tenant

    t = await create_tenant(admin_conn, "topic-abuse")
    return await build_world(stub, Tenant(str(t.tenant_id), t.api_key, str(t.api_key_id)), "ta")


def produce(settings, topic: str, messages: list[tuple[bytes, bytes | None, list | None]]) -> None:
    producer = Producer(producer_config(settings, **{"message.max.bytes": 10 * 1024 * 1024}))
    for key, value, headers in messages:
        producer.produce(topic, key=key, value=value, headers=headers)
        producer.poll(0)
    assert producer.flush(60) == 0


def dead_letters(settings, topic: str, keys: set[bytes], timeout_s: float = 120) -> dict[bytes, object]:
    reader = TopicReader(settings, topic)
    try:
        reader.until(lambda ms: keys <= {m.key() for m in ms}, timeout_s)
        return {m.key(): m for m in reader.messages if m.key() in keys}
    finally:
        reader.close()


def forged(schema_name: str, fields: list[tuple[str, object]], record: dict, fingerprint: bytes) -> bytes:
    """Valid Avro of a record shaped unlike the real one, under the real one's fingerprint."""
    parsed = parse_schema({"type": "record", "name": schema_name, "namespace": "billing.v1",
                           "fields": [{"name": n, "type": t} for n, t in fields]})
    buf = io.BytesIO()
    schemaless_writer(buf, parsed, record)
    return codec.MAGIC + fingerprint + buf.getvalue()


def usage_avro(world, **over) -> bytes:
    sub = world.subs["active"]
    rec = {"event_id": str(uuid.uuid4()), "tenant_id": world.tenant.id, "subscription_id": sub.id,
           "metric_code": "calls", "quantity": "1", "occurred_at_us": (sub.start_at.seconds + 5) * 1_000_000,
           "properties": {}}
    rec.update(over)
    return codec.encode(Schema.USAGE_EVENT, rec)


def cloudevent(world, drop=(), data=None, **over) -> bytes:
    sub = world.subs["active"]
    ce = {"specversion": "1.0", "id": str(uuid.uuid4()), "source": "abuse", "type": "usage",
          "time": sub.start_at.ToDatetime(timezone.utc).isoformat().replace("+00:00", "Z"),
          "subject": sub.id, "tenantid": world.tenant.id, "data": {"metric": "calls", "quantity": "1"}}
    ce["data"].update(data or {})
    ce.update(over)
    for name in drop:
        (ce["data"] if name.startswith("data.") else ce).pop(name.removeprefix("data."))
    return json.dumps(ce).encode()


async def test_usage_topic_abuse(roles, migrated, world, admin_conn):
    valid = codec.encode(Schema.USAGE_EVENT, {"event_id": "e", "tenant_id": world.tenant.id,
                                               "subscription_id": world.subs["active"].id, "metric_code": "calls",
                                               "quantity": "1", "occurred_at_us": 1, "properties": {}})
    cases = {
        "random-bytes": (os.urandom(200), "undecodable"),
        "empty": (b"", "undecodable"),
        "tombstone": (None, "undecodable"),
        "truncated-avro": (valid[:len(valid) // 2], "undecodable"),
        "avro-header-only": (valid[:10], "undecodable"),
        "avro-trailing-junk": (valid + b"\x00\x01", "undecodable"),
        "wrong-fingerprint": (codec.MAGIC + b"\x01" * 8 + valid[10:], "undecodable"),
        "command-avro-on-usage": (command(world.tenant.id, world.subs["active"].id, "ActivateSubscription", {}),
                                  "undecodable"),
        "wrong-types": (forged("UsageEvent", [("event_id", "long"), ("tenant_id", "double"),
                                              ("occurred_at_us", "string")],
                               {"event_id": 7, "tenant_id": 1.5, "occurred_at_us": "yesterday"},
                               codec.fingerprint(Schema.USAGE_EVENT)), "undecodable"),
        "ce-missing-time": (cloudevent(world, drop=("time",)), "invalid_cloudevent"),
        "ce-missing-id": (cloudevent(world, drop=("id",)), "invalid_cloudevent"),
        "ce-missing-quantity": (cloudevent(world, drop=("data.quantity",)), "invalid_cloudevent"),
        "ce-missing-data": (cloudevent(world, drop=("data",)), "invalid_cloudevent"),
        "ce-quantity-object": (cloudevent(world, data={"quantity": {"v": 1}}), "invalid_cloudevent"),
        "ce-id-number": (cloudevent(world, id=12), "invalid_cloudevent"),
        "ce-time-garbage": (cloudevent(world, time="yesterday"), "invalid_cloudevent"),
        "ce-specversion-0.3": (cloudevent(world, specversion="0.3"), "invalid_cloudevent"),
        "ce-nul-escape": (cloudevent(world, data={"metric": "@"}).replace(b"@", b"\\u0000"), "invalid_cloudevent"),
        "ce-batch-array": (b"[" + cloudevent(world) + b"]", "undecodable"),
        "ce-truncated-json": (cloudevent(world)[:40], "undecodable"),
        "ce-quantity-1e999999": (cloudevent(world, data={"quantity": "1e999999"}), "invalid_quantity"),
        "ce-quantity-nan": (cloudevent(world, data={"quantity": "NaN"}), "invalid_quantity"),
        "avro-quantity-negative": (usage_avro(world, quantity="-0.5"), "negative_quantity"),
        "avro-quantity-fullwidth": (usage_avro(world, quantity="１２"), "invalid_quantity"),
        "ce-quantity-arabic-indic": (cloudevent(world, data={"quantity": "١٢"}), "invalid_quantity"),
        "avro-time-max": (usage_avro(world, occurred_at_us=2**63 - 1), "too_far_in_future"),
        "avro-time-min": (usage_avro(world, occurred_at_us=-(2**63)), "too_old"),
        "avro-event-id-nul": (usage_avro(world, event_id="a\x00b"), "invalid_event_id"),
        "avro-properties-nul": (usage_avro(world, properties={"k": "\x00"}), "invalid_properties"),
        # Above BILLING_KAFKA_MAX_MESSAGE_BYTES (1 MiB): refused for their size, never parsed.
        "huge-random": (os.urandom(BIG_RANDOM), "too_large"),
        "huge-cloudevent-unknown-metric": (cloudevent(world, data={"metric": "nope", "properties": {"b": "x" * BIG}}),
                                           "too_large"),
        "huge-avro-event-id": (usage_avro(world, event_id="e" * BIG), "too_large"),
        "huge-cloudevent-property": (cloudevent(world, data={"properties": {"b": "x" * BIG}}), "too_large"),
        "huge-cloudevent-junk": (cloudevent(world, data={"junk": "j" * BIG}), "too_large"),
        "property-value-1001": (usage_avro(world, properties={"user": "u" * 1001}), "invalid_properties"),
    }
    run = uuid.uuid4().hex[:8]
    keys = {f"abuse-{run}-{name}".encode(): (name, value, reason) for name, (value, reason) in cases.items()}
    messages = [(k, v, None) for k, (_, v, _) in keys.items()]
    good_id = str(uuid.uuid4())
    messages.append((b"good-" + run.encode(), usage_avro(world, event_id=good_id), None))
    await asyncio.to_thread(produce, migrated, migrated.topics.usage, messages)

    # The consumer went on: the good event after all of them is counted.
    await wait_until(lambda: admin_conn.fetchval(
        "select exists(select 1 from usage_events where tenant_id = $1 and event_id = $2)",
        uuid.UUID(world.tenant.id), good_id), timeout_s=120)
    got = await asyncio.to_thread(dead_letters, migrated, migrated.topics.usage_dlq, set(keys))
    for key, (name, value, reason) in keys.items():
        h = {k: v for k, v in got[key].headers()}
        assert h["dlq.reason"].decode() == reason, (name, h["dlq.reason"], h["dlq.detail"][:200])
        assert h["dlq.detail"] and h["dlq.topic"].decode() == migrated.topics.usage
        assert got[key].value() == value, f"{name}: the dead letter must carry the original bytes"
    # Nothing of the abusive events was stored.
    assert await admin_conn.fetchval("select count(*) from usage_events where tenant_id = $1 and event_id = $2",
                                     uuid.UUID(world.tenant.id), "e" * 10) == 0


def _cmd(world, branch, body, **over) -> bytes:
    rec = {"command_id": str(uuid.uuid4()), "tenant_id": world.tenant.id, "subscription_id": str(uuid.uuid4()),
           "issued_at_us": int(time.time() * 1_000_000), "actor": "abuse", "command": (f"billing.v1.{branch}", body)}
    rec.update(over)
    return codec.encode(Schema.SUBSCRIPTION_COMMAND, rec)


def _create_body(world, **over) -> dict:
    body = {"customer_id": "c-abuse", "plan_id": world.plans["main"].id, "activate": True, "metadata": {}}
    body.update(over)
    return body


async def test_command_topic_abuse(roles, migrated, world, admin_conn):
    valid = _cmd(world, "ActivateSubscription", {})
    dead_cases = {
        "random-bytes": (os.urandom(200), "undecodable"),
        "empty": (b"", "undecodable"),
        "tombstone": (None, "undecodable"),
        "truncated-avro": (valid[:len(valid) - 5], "undecodable"),
        "avro-trailing-junk": (valid + b"\x07", "undecodable"),
        "wrong-fingerprint": (codec.MAGIC + b"\xfe" * 8 + valid[10:], "undecodable"),
        "usage-avro-on-commands": (usage_avro(world), "undecodable"),
        "cloudevent-json": (cloudevent(world), "undecodable"),
        "wrong-types": (forged("SubscriptionCommand", [("command_id", "long"), ("tenant_id", "boolean")],
                               {"command_id": 1, "tenant_id": True}, codec.fingerprint(Schema.SUBSCRIPTION_COMMAND)),
                        "undecodable"),
        "empty-command-id": (_cmd(world, "ActivateSubscription", {}, command_id=""), "invalid_command"),
        "tenant-not-a-uuid": (_cmd(world, "ActivateSubscription", {}, tenant_id="x\x00y"), "unknown_tenant"),
        "tenant-unknown": (_cmd(world, "ActivateSubscription", {}, tenant_id=str(uuid.uuid4())), "unknown_tenant"),
        "command-id-nul": (_cmd(world, "ActivateSubscription", {}, command_id="c\x00"), "invalid_command"),
        "command-id-256": (_cmd(world, "ActivateSubscription", {}, command_id="c" * 256), "invalid_command"),
        "huge-command-id": (_cmd(world, "ActivateSubscription", {}, command_id="c" * BIG), "too_large"),
        "subscription-id-garbage": (_cmd(world, "ActivateSubscription", {}, subscription_id="sub\x00"),
                                    "invalid_command"),
        "huge-subscription-id": (_cmd(world, "CreateSubscription", _create_body(world), subscription_id="s" * BIG),
                                 "too_large"),
        "huge-random": (os.urandom(BIG_RANDOM), "too_large"),
        "huge-customer-id": (_cmd(world, "CreateSubscription", _create_body(world, customer_id="c" * BIG)),
                             "too_large"),
    }
    # Well-formed commands the rules refuse: a command.rejected event each, nothing applied.
    refused = {
        "start-at-max": ("CreateSubscription", _create_body(world, start_at_us=2**63 - 1)),
        "start-at-min": ("CreateSubscription", _create_body(world, start_at_us=-(2**63))),
        "anchor-max": ("CreateSubscription", _create_body(world, billing_anchor_us=2**63 - 1)),
        "resume-at-max": ("PauseSubscription", {"resumes_at_us": 2**63 - 1}),
        "resume-at-min": ("PauseSubscription", {"resumes_at_us": -(2**63)}),
        "customer-nul": ("CreateSubscription", _create_body(world, customer_id="a\x00b")),
        "metadata-nul": ("CreateSubscription", _create_body(world, metadata={"k": "\x00"})),
        "plan-not-a-uuid": ("CreateSubscription", _create_body(world, plan_id="pro\x00")),
        "trial-days-max": ("CreateSubscription", _create_body(world, trial_days=2**31 - 1)),
        "proration-unknown": ("CancelSubscription", {"mode": "IMMEDIATELY", "proration": "sometimes"}),
    }
    run = uuid.uuid4().hex[:8]
    messages, dead_keys, refused_subs = [], {}, {}
    for name, (value, reason) in dead_cases.items():
        key = f"abuse-{run}-{name}".encode()
        dead_keys[key] = (name, value, reason)
        messages.append((key, value, None))
    for name, (branch, body) in refused.items():
        sub_id = world.subs["active"].id if branch != "CreateSubscription" else str(uuid.uuid4())
        refused_subs[name] = sub_id
        messages.append((sub_id.encode(), _cmd(world, branch, body, subscription_id=sub_id), None))
    good_sub = str(uuid.uuid4())
    messages.append((good_sub.encode(), _cmd(world, "CreateSubscription", _create_body(world),
                                             subscription_id=good_sub), None))
    await asyncio.to_thread(produce, migrated, migrated.topics.subscription_commands, messages)

    await wait_until(lambda: admin_conn.fetchval("select exists(select 1 from subscriptions where id = $1)",
                                                 uuid.UUID(good_sub)), timeout_s=120)
    got = await asyncio.to_thread(dead_letters, migrated, migrated.topics.subscription_commands_dlq, set(dead_keys))
    for key, (name, value, reason) in dead_keys.items():
        h = {k: v for k, v in got[key].headers()}
        assert h["dlq.reason"].decode() == reason, (name, h["dlq.reason"], h["dlq.detail"][:200])
        assert got[key].value() == value and h["dlq.detail"]
    tid = uuid.UUID(world.tenant.id)
    rejected = {bytes(r["key"]).decode() for r in await admin_conn.fetch(
        "select key from outbox where tenant_id = $1 and headers->>'event-type' = 'command.rejected'", tid)}
    for name, sub_id in refused_subs.items():
        assert sub_id in rejected, f"{name}: no command.rejected event"
        if sub_id != world.subs["active"].id:
            assert not await admin_conn.fetchval("select exists(select 1 from subscriptions where id = $1)",
                                                 uuid.UUID(sub_id)), name
    active = await admin_conn.fetchrow("select status, pause_resumes_at from subscriptions where id = $1",
                                       uuid.UUID(world.subs["active"].id))
    assert active["status"] == "active"


@pytest.mark.parametrize("size, why", [
    (10 * 1024 * 1024 - 100, "fits the source topic, not the DLQ once the dlq.* headers are added: the broker refuses"),
    (17 * 1024 * 1024, "over the DLQ producer's own limit: refused before it leaves the process"),
])
async def test_a_dead_letter_too_large_for_the_dlq_goes_out_cut(migrated, size, why):
    import hashlib

    from consumers.dlq import TRUNCATED_VALUE_BYTES, DeadLetterProducer
    from consumers.runner import DeadLetter, Message

    value = os.urandom(size)
    key = f"too-large-{uuid.uuid4()}".encode()
    message = Message(migrated.topics.usage, 0, 42, key, value, {"x": b"1"}, None, (("x", b"1"),))
    producer = DeadLetterProducer(producer_config(migrated), migrated.topics.usage_dlq, "test-group")
    try:
        await asyncio.to_thread(producer.send, [DeadLetter(message, "undecodable", why)])
    finally:
        producer.close()
    got = (await asyncio.to_thread(dead_letters, migrated, migrated.topics.usage_dlq, {key}))[key]
    h = {k: v for k, v in got.headers()}
    assert got.value() == value[:TRUNCATED_VALUE_BYTES]
    assert h["dlq.value_truncated"] == b"true" and int(h["dlq.value_bytes"]) == size
    assert h["dlq.value_sha256"].decode() == hashlib.sha256(value).hexdigest()
    assert h["dlq.reason"] == b"undecodable" and h["dlq.offset"] == b"42" and h["x"] == b"1"
