"""Two usage batches of one subscription in concurrent transactions (docs/billing.md,
"Progressive billing"): the second waits for the first's commit before judging its amount
thresholds, so it sees the first's usage and what its threshold invoice charged; each
threshold invoice charges only what is new."""
from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal as D

import asyncpg

from billing.services.usage import PlanCache, UsageEvent, UsageLimits, ingest, to_us
from billing.store.db import init_connection
from billing.v1 import billing_pb2 as pb
from tests.integration.test_plans_api import plan_request
from tests.integration.test_subscriptions_api import rid

UTC = timezone.utc


async def test_a_concurrent_batch_waits_and_invoices_only_the_rest(stub, tenant, migrated, admin_conn):
    plan = (await stub.CreatePlan(plan_request(trial_days=0, usage_charges=[
        pb.UsageCharge(metric_code="calls", aggregation=pb.AGGREGATION_SUM, pricing_model=pb.PRICING_MODEL_PER_UNIT,
                       unit_price="0.01"),
        pb.UsageCharge(metric_code="storage", aggregation=pb.AGGREGATION_SUM,
                       pricing_model=pb.PRICING_MODEL_PER_UNIT, unit_price="1.00")]), metadata=tenant.md)).plan
    sub = (await stub.CreateSubscription(pb.CreateSubscriptionRequest(
        request_id=rid(), customer_id="c", plan_id=plan.id, activate=True), metadata=tenant.md)).subscription
    five, eight = [(await stub.CreateThreshold(pb.CreateThresholdRequest(
        request_id=rid(), subscription_id=sub.id, measure="amount", value=v, invoice_on_cross=True),
        metadata=tenant.md)).threshold for v in ("5", "8")]
    at = to_us(sub.start_at.ToDatetime(UTC) + timedelta(seconds=1))
    now = to_us(datetime.now(UTC))

    def event(metric: str, quantity: str) -> UsageEvent:
        return UsageEvent(str(uuid.uuid4()), tenant.id, sub.id, metric, quantity, at, None)

    first, second = [await asyncpg.connect(migrated.worker_database_url) for _ in range(2)]
    try:
        for c in (first, second):
            await init_connection(c)
        t1, t2 = first.transaction(), second.transaction()
        await t1.start()
        await t2.start()
        # 6.00 of calls: crosses 5, its invoice written, T1 holds the subscription's lock
        await ingest(first, [event("calls", "600")], now_us=now, limits=UsageLimits(), plans=PlanCache())
        # 3.00 of storage (another totals row: nothing else makes T2 wait)
        waiting = asyncio.create_task(
            ingest(second, [event("storage", "3")], now_us=now, limits=UsageLimits(), plans=PlanCache()))
        await asyncio.sleep(1)
        assert not waiting.done(), "the second batch judged its thresholds before the first committed"
        await t1.commit()
        await asyncio.wait_for(waiting, 10)
        await t2.commit()
    finally:
        await first.close()
        await second.close()
    rows = await admin_conn.fetch("select threshold_id, amount from progressive_invoices where subscription_id = $1 "
                                  "order by created_at", uuid.UUID(sub.id))
    # T2 saw 9.00 (its 3.00 and T1's 6.00) and the 6.00 billed: it crossed 8 and invoiced 3.00.
    assert [(str(r["threshold_id"]), r["amount"]) for r in rows] == [(five.id, D("6.00")), (eight.id, D("3.00"))]
