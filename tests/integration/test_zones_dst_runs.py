"""Billing runs at every hour around DST changes never bill a period twice, and usage lands
in the period that contains its instant (docs/time.md).

Daily plans (the shortest periods: 23 and 25 hour days) in Europe/Dublin (DST at 01:00
UTC), America/Havana (a midnight that does not exist in March) and America/Santiago (falls
back at local midnight in April), with one usage event every hour, billed by a run every
hour from before each change to after it. The rules are the pinned tzdata package's
(2026f: Cuba keeps summer time from 2026, so no Havana fall-back is used).
"""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal

from billing.domain.periods import to_us
from billing.domain.zones import zone_info
from billing.services import subscriptions
from billing.services.context import Caller
from billing.services.usage import PlanCache, UsageEvent, UsageLimits, ingest
from billing.v1 import billing_pb2 as pb
from tests.integration.test_billing_scale import _invoices, _run
from tests.integration.test_plans_api import plan_request

UTC = timezone.utc
# (zone, a UTC instant a day before the change); the windows are in the past, within a year.
CHANGES = [("Europe/Dublin", datetime(2026, 3, 28, 6, tzinfo=UTC)),
           ("Europe/Dublin", datetime(2026, 10, 24, 6, tzinfo=UTC)),
           ("America/Havana", datetime(2026, 3, 7, 12, tzinfo=UTC)),
           ("America/Santiago", datetime(2026, 4, 3, 12, tzinfo=UTC))]
HOURS = 60


async def test_hourly_runs_across_dst_changes_bill_each_period_once(service, stub, tenant, admin_conn):
    tid = uuid.UUID(tenant.id)
    caller = Caller(tid, "dst")
    plan = (await stub.CreatePlan(plan_request(
        interval=pb.INTERVAL_UNIT_DAY, base_fee="1.00", trial_days=0, billing_timing=pb.BILLING_TIMING_IN_ARREARS,
        usage_charges=[pb.UsageCharge(metric_code="api_calls", aggregation=pb.AGGREGATION_SUM,
                                      pricing_model=pb.PRICING_MODEL_PER_UNIT, unit_price="1")]),
        metadata=tenant.md)).plan
    for zone, start in CHANGES:
        sub = (await subscriptions.create_subscription(
            service.db, caller, str(uuid.uuid4()), customer_id="dst", plan_id=plan.id, start_at=start,
            billing_anchor=None, trial_days=0, activate=True, metadata={}, time_zone=zone)).subscription
        hours = [start + timedelta(hours=h, minutes=30) for h in range(HOURS)]
        events = [UsageEvent(f"{sub.id}-{h}", str(tid), str(sub.id), "api_calls", "1", to_us(t))
                  for h, t in enumerate(hours)]
        async with service.db.tenant_tx(tid) as conn:
            result = await ingest(conn, events, now_us=to_us(datetime.now(UTC)), plans=PlanCache(),
                                  limits=UsageLimits(max_age_us=400 * 86400 * 1_000_000))
        assert result.inserted == HOURS, result
        for h in range(HOURS + 1):
            await _run(service, tenant, start + timedelta(hours=h))
            if h % 6 == 0:
                await _run(service, tenant, start + timedelta(hours=h))  # the same hour again: nothing more

        requests = await _invoices(admin_conn, tid, str(sub.id))
        ids = [r["invoice_request_id"] for r in requests]
        assert len(ids) == len(set(ids)), f"{zone}: a period billed twice"
        tz = zone_info(zone)
        bounds = [(datetime.fromtimestamp(r["period_start_us"] / 1e6, UTC),
                   datetime.fromtimestamp(r["period_end_us"] / 1e6, UTC)) for r in requests]
        assert bounds[0][0] == start
        lengths = {e - s for s, e in bounds[1:]}  # the first period is cut short by the start
        for (_, e), nxt in zip(bounds, bounds[1:] + [None]):
            local = e.astimezone(tz)
            # each period ends where a local day starts: midnight, or 01:00 after a gap at midnight
            assert (local.minute, local.second) == (0, 0) and local.hour in (0, 1), (zone, e, local)
            if nxt is not None:
                assert nxt[0] == e, f"{zone}: gap or overlap at {e}"
        assert {timedelta(hours=23), timedelta(hours=25)} & lengths, (zone, lengths)
        # every hourly event is billed once, in the period containing its instant
        for (s, e), r in zip(bounds, requests):
            usage = sum((Decimal(ln["quantity"]) for ln in r["lines"] if ln["kind"] == "usage"), Decimal(0))
            assert usage == sum(1 for t in hours if s <= t < e), (zone, s, e)
        assert await admin_conn.fetchval(
            "select count(*) from billed_periods where subscription_id = $1", sub.id) == len(requests)
