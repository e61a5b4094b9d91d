"""A proration example replayed at its calendar dates through a test clock, end to end:
AdvanceTestClock -> run request on Kafka -> billing consumer and executor -> invoice request
on its topic, marked as the clock's (field and header); and a normal run leaves the clock's
subscriptions alone."""
from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal as D

import pytest

from billing.v1 import billing_pb2 as pb
from tests.integration.test_billing_runs import _completed, _read_invoices, _time
from tests.integration.test_subscriptions_api import rid, ts
from tests.integration.test_test_clocks import APRIL, advance, clock_sub, get_clock, make_clock, monthly_plan
from tests.kafka_helpers import running_roles, wait_until

UTC = timezone.utc


@pytest.fixture(scope="module")
async def kafka_roles(migrated):
    async with running_roles(migrated, ("billing", "relay")) as svc:
        yield svc


async def advanced(stub, tenant, clock_id: str, to: datetime) -> pb.TestClock:
    """Advance and wait until the advance's run completed (the clock READY at `to`)."""
    started = await advance(stub, tenant, clock_id, to)
    assert started.status == pb.TEST_CLOCK_STATUS_ADVANCING

    async def ready():
        clock = await get_clock(stub, tenant, clock_id)
        return clock if clock.status == pb.TEST_CLOCK_STATUS_READY else None
    clock = await wait_until(ready)
    assert clock.frozen_time.ToDatetime(UTC) == to
    return clock


async def test_a_mid_period_upgrade_replayed_on_a_clock_from_2026_04_01(kafka_roles, migrated, stub, tenant,
                                                                         admin_conn):
    basic = await monthly_plan(stub, tenant, "30.00", usage=False)
    pro = await monthly_plan(stub, tenant, "60.00", usage=False)
    clock = await make_clock(stub, tenant, APRIL)
    sub = await clock_sub(stub, tenant, basic, clock.id, customer_id="cust-replay")

    # To the chosen second: April is billed, May opened (and charged in advance).
    t1 = datetime(2026, 5, 10, 8, 20, 45, tzinfo=UTC)
    await advanced(stub, tenant, clock.id, t1)
    view = (await stub.GetSubscription(pb.GetSubscriptionRequest(id=sub.id), metadata=tenant.md)).subscription
    assert view.current_period_start.ToDatetime(UTC) == datetime(2026, 5, 1, tzinfo=UTC)

    # The upgrade happens at the clock's time.
    changed = (await stub.ChangePlan(pb.ChangePlanRequest(request_id=rid(), id=sub.id, new_plan_id=pro.id),
                                     metadata=tenant.md)).subscription
    assert changed.plan_id == pro.id

    # Past the period end: the close of May carries the proration lines and June at 60.00.
    t2 = datetime(2026, 6, 1, 0, 0, 1, tzinfo=UTC)
    done = await advanced(stub, tenant, clock.id, t2)
    found = await asyncio.to_thread(_read_invoices, migrated, sub.id, 2, headers=True)
    may = [(d, h) for _, d, h in found if _time(d["period_start_us"]) == datetime(2026, 5, 1, tzinfo=UTC)]
    assert len(may) == 1
    inv, headers = may[0]
    # By hand: 2026-05-10T08:20:45 to 2026-06-01T00:00:00 is 21 d 15 h 39 min 15 s = 1,870,755 s
    # of May's 31 days = 2,678,400 s: 124717/178560 of the period. Basic's unused time credited,
    # 30.00 * 124717/178560 = 20.9537970... -> -20.95; pro's charged, 60.00 * 124717/178560 =
    # 41.9075940... -> 41.91 (half-even to the cent).
    lines = sorted((ln["kind"], D(ln["amount"]), ln["fraction"], _time(ln["period_start_us"]),
                    _time(ln["period_end_us"])) for ln in inv["lines"])
    june = datetime(2026, 6, 1, tzinfo=UTC)
    assert lines == sorted([
        ("proration_credit", D("-20.95"), "124717/178560", t1, june),
        ("proration_charge", D("41.91"), "124717/178560", t1, june),
        ("base_fee", D("60.00"), None, june, datetime(2026, 7, 1, tzinfo=UTC)),
    ])
    assert D(inv["total"]) == D("80.96")
    # Marked as the clock's, in the field and the header; issued at the clock's time.
    assert inv["test_clock_id"] == clock.id and headers["billing-test-clock"] == clock.id
    assert _time(inv["issued_at_us"]) == t2
    run = (await stub.GetBillingRun(pb.GetBillingRunRequest(id=inv["run_id"]), metadata=tenant.md)).run
    assert run.test_clock_id == clock.id and run.as_of.ToDatetime(UTC) == t2 == done.frozen_time.ToDatetime(UTC)

    # A normal run as of the wall clock's now: the clock's subscription (its period ended
    # long ago in real time) is not touched; a real-time one due is billed.
    real = (await stub.CreateSubscription(pb.CreateSubscriptionRequest(
        request_id=rid(), customer_id="cust-real", plan_id=basic.id, activate=True,
        start_at=ts(datetime.now(UTC) - timedelta(days=40))), metadata=tenant.md)).subscription
    before = await admin_conn.fetchval("select count(*) from billed_periods where subscription_id = $1",
                                       uuid.UUID(sub.id))
    normal = (await stub.RunBilling(pb.RunBillingRequest(request_id=rid()), metadata=tenant.md)).run
    normal = await _completed(stub, tenant, normal.id)
    assert normal.test_clock_id == "" and normal.subscriptions_billed == 1
    assert await admin_conn.fetchval("select count(*) from billed_periods where subscription_id = $1",
                                     uuid.UUID(sub.id)) == before
    assert await admin_conn.fetchval("select count(*) from billed_periods where subscription_id = $1",
                                     uuid.UUID(real.id)) == 1
    [(_, real_inv, real_headers)] = await asyncio.to_thread(_read_invoices, migrated, real.id, 1, headers=True)
    assert real_inv["test_clock_id"] is None and "billing-test-clock" not in real_headers
