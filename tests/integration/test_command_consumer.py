"""The command topic end to end: commands -> subscriptions -> events, through the real broker."""
from __future__ import annotations

import asyncio
import os
import uuid

import pytest

from billing import codec
from billing.v1 import billing_pb2 as pb
from tests.integration.test_subscriptions_api import make_plan
from tests.kafka_helpers import TopicReader, command, produce, running_roles, wait_until


@pytest.fixture(scope="module")
async def kafka_roles(migrated):
    """The command consumer and the outbox relay, running in this process."""
    async with running_roles(migrated, ("commands", "relay")) as svc:
        yield svc


_wait = wait_until


async def _events_for(settings, sub_id: str, wanted: int, event_type: str | None = None) -> list[dict]:
    """The events keyed by `sub_id`, once there are `wanted` of them (of `event_type`, if
    given). Read in a thread: the consumer and relay under test run on this event loop."""
    return await asyncio.to_thread(_read_events, settings, sub_id, wanted, event_type)


def _read_events(settings, sub_id: str, wanted: int, event_type: str | None) -> list[dict]:
    reader = TopicReader(settings, settings.topics.subscription_events)

    def mine(ms):
        decoded = [codec.decode(codec.Schema.SUBSCRIPTION_EVENT, m.value()) for m in ms if m.key() == sub_id.encode()]
        return [e for e in decoded if event_type is None or e["type"] == event_type]

    try:
        reader.until(lambda ms: len(mine(ms)) >= wanted)
        msgs = reader.messages
    finally:
        reader.close()
    return [codec.decode(codec.Schema.SUBSCRIPTION_EVENT, m.value()) for m in msgs if m.key() == sub_id.encode()]


async def test_commands_change_subscription_and_events_appear(kafka_roles, migrated, stub, tenant, admin_conn):
    plan = await make_plan(stub, tenant)
    sub_id = str(uuid.uuid4())
    topic = migrated.topics.subscription_commands
    create_id, pause_id = str(uuid.uuid4()), str(uuid.uuid4())
    create = command(tenant.id, sub_id, "CreateSubscription",
                     {"customer_id": "c-1", "plan_id": plan.id, "activate": True, "metadata": {}}, create_id)
    pause = command(tenant.id, sub_id, "PauseSubscription", {"resumes_at_us": None}, pause_id)
    produce(migrated, topic, [(sub_id, create), (sub_id, pause), (sub_id, create)])  # the create twice

    async def paused():
        return await admin_conn.fetchval("select status from subscriptions where id = $1", uuid.UUID(sub_id)) \
            == "paused"
    await _wait(paused)
    got = (await stub.GetSubscription(pb.GetSubscriptionRequest(id=sub_id, include_history=True),
                                      metadata=tenant.md)).subscription
    # The proto's actions and actors: the create's two entries name its command, the pause its own
    assert [h.action for h in got.history] == ["created", "activated", "paused"]
    assert [h.actor for h in got.history] == [f"command:{create_id}"] * 2 + [f"command:{pause_id}"]
    events = await _events_for(migrated, sub_id, 3)
    assert [e["type"] for e in events][:3] == ["subscription.created", "subscription.activated",
                                               "subscription.paused"]
    assert all(e["command_id"] for e in events)
    # Published rows are marked as such.
    await _wait(lambda: admin_conn.fetchval(
        "select count(*) = 0 from outbox where tenant_id = $1 and published_at is null", uuid.UUID(tenant.id)))


async def test_refused_command_becomes_a_rejection_event(kafka_roles, migrated, stub, tenant):
    plan = await make_plan(stub, tenant)
    sub_id = str(uuid.uuid4())
    topic = migrated.topics.subscription_commands
    produce(migrated, topic, [
        (sub_id, command(tenant.id, sub_id, "CreateSubscription",
                         {"customer_id": "c", "plan_id": plan.id, "activate": False, "metadata": {}})),
        (sub_id, command(tenant.id, sub_id, "PauseSubscription", {"resumes_at_us": None})),  # pending: refused
    ])
    events = await _events_for(migrated, sub_id, 1, "command.rejected")
    rejected = [e for e in events if e["type"] == "command.rejected"]
    assert len(rejected) == 1 and "pending" in rejected[0]["reason"]
    got = (await stub.GetSubscription(pb.GetSubscriptionRequest(id=sub_id), metadata=tenant.md)).subscription
    assert got.status == pb.SUBSCRIPTION_STATUS_PENDING


async def test_poison_and_unknown_tenant_go_to_dlq_and_the_stream_goes_on(kafka_roles, migrated, stub, tenant,
                                                                           admin_conn):
    plan = await make_plan(stub, tenant)
    sub_id = str(uuid.uuid4())
    topic = migrated.topics.subscription_commands
    stranger = str(uuid.uuid4())
    produce(migrated, topic, [
        (sub_id, os.urandom(40)),
        (sub_id, command(stranger, sub_id, "ActivateSubscription", {})),
        (sub_id, command(tenant.id, sub_id, "CreateSubscription",
                         {"customer_id": "c", "plan_id": plan.id, "activate": True, "metadata": {}})),
    ])
    await _wait(lambda: admin_conn.fetchval("select exists(select 1 from subscriptions where id = $1)",
                                            uuid.UUID(sub_id)))
    reader = TopicReader(migrated, migrated.topics.subscription_commands_dlq)
    try:
        msgs = await asyncio.to_thread(reader.until, lambda ms: len([m for m in ms if m.key() == sub_id.encode()]) >= 2)
    finally:
        reader.close()
    mine = [m for m in msgs if m.key() == sub_id.encode()]
    reasons = sorted(dict(m.headers())["dlq.reason"].decode() for m in mine)
    assert reasons == ["undecodable", "unknown_tenant"]
    for m in mine:
        h = dict(m.headers())
        assert h["dlq.topic"].decode() == topic and int(h["dlq.offset"]) >= 0 and h["dlq.detail"]


async def test_command_cannot_touch_another_tenants_subscription(kafka_roles, migrated, stub, new_tenant, admin_conn):
    a, b = await new_tenant(), await new_tenant()
    plan_b = await make_plan(stub, b)
    sub_b = (await stub.CreateSubscription(pb.CreateSubscriptionRequest(
        request_id=str(uuid.uuid4()), customer_id="cb", plan_id=plan_b.id, activate=True), metadata=b.md)).subscription
    topic = migrated.topics.subscription_commands
    # Tenant A's command names B's subscription: for A it does not exist.
    produce(migrated, topic, [(sub_b.id, command(a.id, sub_b.id, "CancelSubscription",
                                                 {"mode": "IMMEDIATELY", "proration": ""}))])
    events = await _events_for(migrated, sub_b.id, 1, "command.rejected")
    rejected = [e for e in events if e["type"] == "command.rejected"]
    assert rejected and rejected[0]["tenant_id"] == a.id and "not found" in rejected[0]["reason"]
    after = (await stub.GetSubscription(pb.GetSubscriptionRequest(id=sub_b.id), metadata=b.md)).subscription
    assert after.status == pb.SUBSCRIPTION_STATUS_ACTIVE
