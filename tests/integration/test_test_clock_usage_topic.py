"""Usage of a test clock's subscription on the usage topic: accepted at the clock's time,
dead-lettered (too_far_in_future) at the wall clock's, like RecordUsage."""
from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from billing.domain.periods import to_us
from tests.integration.test_test_clocks import APRIL, clock_sub, make_clock, monthly_plan
from tests.integration.test_usage_consumer import avro
from tests.kafka_helpers import TopicReader, produce, running_roles, wait_until

UTC = timezone.utc


@pytest.fixture(scope="module")
async def usage_role(migrated):
    async with running_roles(migrated, ("usage",)) as svc:
        yield svc


async def test_clock_time_usage_on_the_topic(usage_role, migrated, stub, tenant, admin_conn):
    clock = await make_clock(stub, tenant, APRIL + timedelta(days=3))
    plan = await monthly_plan(stub, tenant, "30.00")
    sub = await clock_sub(stub, tenant, plan, clock.id, start=APRIL)
    on_clock = avro(tenant.id, sub.id, "4", to_us(APRIL + timedelta(days=2)), metric="api_calls")
    wall_now = avro(tenant.id, sub.id, "9", to_us(datetime.now(UTC)), metric="api_calls")
    await asyncio.to_thread(produce, migrated, migrated.topics.usage, [(sub.id, wall_now), (sub.id, on_clock)])

    async def counted():
        return await admin_conn.fetchrow(
            "select period_start, quantity_sum, event_count from usage_totals where subscription_id = $1",
            uuid.UUID(sub.id))
    row = await wait_until(counted)
    assert (row["period_start"], row["quantity_sum"], row["event_count"]) == (APRIL, Decimal("4"), 1)

    reader = TopicReader(migrated, migrated.topics.usage_dlq)
    try:
        msgs = await asyncio.to_thread(reader.until, lambda ms: any(m.key() == sub.id.encode() for m in ms))
    finally:
        reader.close()
    [dead] = [m for m in msgs if m.key() == sub.id.encode()]
    headers = dict(dead.headers())
    assert headers["dlq.reason"].decode() == "too_far_in_future" and dead.value() == wall_now
    assert b"test clock" in headers["dlq.detail"]
