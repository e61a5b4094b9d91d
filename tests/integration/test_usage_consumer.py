"""The usage topic end to end: Avro and CloudEvents in, totals out, every bad event dead-lettered
with its reason and original bytes, and the stream goes on."""
from __future__ import annotations

import asyncio
import json
import os
import uuid
from datetime import timedelta, timezone
from decimal import Decimal

import pytest

from billing import codec
from billing.services.usage import to_us
from tests.integration.test_usage_ingest import _setup
from tests.kafka_helpers import TopicReader, produce, running_roles


@pytest.fixture(scope="module")
async def usage_role(migrated):
    async with running_roles(migrated, ("usage",)) as svc:
        yield svc


def avro(tenant_id, sub_id, quantity, at_us, event_id=None, metric="calls") -> bytes:
    return codec.encode(codec.Schema.USAGE_EVENT, {
        "event_id": event_id or str(uuid.uuid4()), "tenant_id": tenant_id, "subscription_id": sub_id,
        "metric_code": metric, "quantity": quantity, "occurred_at_us": at_us, "properties": {}})


def cloudevent(tenant_id, sub_id, quantity, time_text, event_id=None) -> bytes:
    return json.dumps({"specversion": "1.0", "id": event_id or str(uuid.uuid4()), "source": "meter/test",
                       "type": "usage", "time": time_text, "subject": sub_id, "tenantid": tenant_id,
                       "data": {"metric": "calls", "quantity": quantity}}).encode()


async def test_good_bad_and_duplicate_events_through_kafka(usage_role, migrated, stub, tenant, admin_conn):
    _, sub = await _setup(stub, tenant)
    start = sub.start_at.ToDatetime(timezone.utc)
    at = to_us(start) + 1_000_000
    dup = avro(tenant.id, sub.id, "2.5", at, event_id="dup-1")
    bad = {
        "undecodable": os.urandom(50),
        "negative_quantity": avro(tenant.id, sub.id, "-3", at),
        "unknown_metric": avro(tenant.id, sub.id, "1", at, metric="nope"),
        "unknown_subscription": avro(tenant.id, str(uuid.uuid4()), "1", at),
        "unknown_tenant": avro(str(uuid.uuid4()), sub.id, "1", at),
        "too_far_in_future": avro(tenant.id, sub.id, "1", to_us(start + timedelta(days=2))),
        "invalid_cloudevent": json.dumps({"specversion": "1.0", "id": "x"}).encode(),
    }
    time_text = (start + timedelta(seconds=2)).isoformat().replace("+00:00", "Z")
    messages = [(sub.id, bad["undecodable"]), (sub.id, dup), (sub.id, bad["negative_quantity"]), (sub.id, dup),
                (sub.id, cloudevent(tenant.id, sub.id, "0.5", time_text))]
    messages += [(sub.id, v) for k, v in bad.items() if k not in ("undecodable", "negative_quantity")]
    messages += [(sub.id, avro(tenant.id, sub.id, "7", at + 5))]  # good, after all the bad ones
    await asyncio.to_thread(produce, migrated, migrated.topics.usage, messages)

    async def counted():
        return await admin_conn.fetchval("select quantity_sum from usage_totals where subscription_id = $1",
                                         uuid.UUID(sub.id)) == Decimal("10.0")
    for _ in range(300):
        if await counted():
            break
        await asyncio.sleep(0.1)
    row = await admin_conn.fetchrow("select quantity_sum, event_count from usage_totals where subscription_id = $1",
                                    uuid.UUID(sub.id))
    assert row["quantity_sum"] == Decimal("10.0") and row["event_count"] == 3  # 2.5 (once) + 0.5 + 7

    reader = TopicReader(migrated, migrated.topics.usage_dlq)
    try:
        msgs = await asyncio.to_thread(
            reader.until, lambda ms: len([m for m in ms if m.key() == sub.id.encode()]) >= len(bad))
    finally:
        reader.close()
    mine = {dict(m.headers())["dlq.reason"].decode(): m for m in msgs if m.key() == sub.id.encode()}
    assert set(mine) == set(bad)
    for reason, m in mine.items():
        assert m.value() == bad[reason]  # the original bytes
        h = dict(m.headers())
        assert h["dlq.topic"].decode() == migrated.topics.usage and h["dlq.detail"]
        assert int(h["dlq.partition"]) >= 0 and int(h["dlq.offset"]) >= 0


async def test_consumer_metrics_move_with_traffic(usage_role, migrated, stub, tenant, admin_conn):
    from prometheus_client import REGISTRY

    def sample(name):
        labels = {"group": "billing-usage"}
        if name == "billing_consumer_dead_letters_total":
            labels["reason"] = "undecodable"
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before_msgs, before_dead = sample("billing_consumer_messages_total"), sample("billing_consumer_dead_letters_total")
    _, sub = await _setup(stub, tenant)
    at = to_us(sub.start_at.ToDatetime(timezone.utc)) + 1
    await asyncio.to_thread(produce, migrated, migrated.topics.usage,
                            [(sub.id, avro(tenant.id, sub.id, "1", at)), (sub.id, os.urandom(20))])
    for _ in range(300):
        if sample("billing_consumer_messages_total") - before_msgs >= 2:
            break
        await asyncio.sleep(0.1)
    assert sample("billing_consumer_messages_total") - before_msgs == 2
    assert sample("billing_consumer_dead_letters_total") - before_dead == 1
    assert (REGISTRY.get_sample_value("billing_consumer_batch_duration_seconds_count", {"group": "billing-usage"})
            or 0) >= 1
