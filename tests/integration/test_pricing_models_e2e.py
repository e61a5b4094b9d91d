"""End to end: a plan with the new pricing models created over gRPC, usage through the Kafka
usage topic, a billing run; the invoice request's lines as computed by hand, and GetUsage's
preview of the same period priced by the same function (docs/pricing.md)."""
from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal as D

import pytest

from billing import codec
from billing.services.usage import to_us
from billing.v1 import billing_pb2 as pb
from tests.integration.test_billing_runs import _completed, _read_invoices
from tests.integration.test_plans_api import plan_request
from tests.integration.test_subscriptions_api import rid, ts
from tests.kafka_helpers import produce, running_roles, wait_until

UTC = timezone.utc
HOUR = 3600 * 1_000_000


@pytest.fixture(scope="module")
async def roles(migrated):
    async with running_roles(migrated, ("usage", "billing", "relay")) as svc:
        yield svc


def event(tenant_id: str, sub_id: str, metric: str, quantity: str, at_us: int, **properties: str) -> bytes:
    return codec.encode(codec.Schema.USAGE_EVENT, {
        "event_id": str(uuid.uuid4()), "tenant_id": tenant_id, "subscription_id": sub_id, "metric_code": metric,
        "quantity": quantity, "occurred_at_us": at_us, "properties": properties})


CHARGES = [
    # 2.9 % + 0.30 per payment, each payment's fee between 0.50 and 5.00.
    pb.UsageCharge(metric_code="payments", aggregation=pb.AGGREGATION_SUM, pricing_model=pb.PRICING_MODEL_PERCENTAGE,
                   percentage_rate="2.9", fixed_fee_per_event="0.30", min_fee_per_event="0.50",
                   max_fee_per_event="5.00"),
    # 24.00 per seat per (daily) period, time-weighted.
    pb.UsageCharge(metric_code="seats", aggregation=pb.AGGREGATION_WEIGHTED_SUM,
                   pricing_model=pb.PRICING_MODEL_PER_UNIT, unit_price="24.00"),
    # Each call carries its own price.
    pb.UsageCharge(metric_code="llm", aggregation=pb.AGGREGATION_COUNT, pricing_model=pb.PRICING_MODEL_DYNAMIC,
                   amount_property="cost"),
    # Complete packages of 10 at 1.00; corrections allowed.
    pb.UsageCharge(metric_code="calls", aggregation=pb.AGGREGATION_SUM, pricing_model=pb.PRICING_MODEL_PACKAGE,
                   unit_price="1.00", package_size="10", package_rounding=pb.PACKAGE_ROUNDING_DOWN, corrections=True),
]


async def test_new_models_through_kafka_and_a_billing_run(roles, migrated, stub, tenant, admin_conn):
    req = plan_request(base_fee="0", trial_days=0, interval=pb.INTERVAL_UNIT_DAY,
                       billing_timing=pb.BILLING_TIMING_IN_ARREARS, usage_charges=CHARGES)
    plan = (await stub.CreatePlan(req, metadata=tenant.md)).plan
    assert [c.pricing_model for c in plan.usage_charges] == [c.pricing_model for c in CHARGES]
    assert plan.usage_charges[3].package_rounding == pb.PACKAGE_ROUNDING_DOWN and plan.usage_charges[3].corrections
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1, hours=1)
    sub = (await stub.CreateSubscription(pb.CreateSubscriptionRequest(
        request_id=rid(), customer_id="cust-models", plan_id=plan.id, activate=True, start_at=ts(start)),
        metadata=tenant.md)).subscription
    p_start = sub.current_period_start.ToDatetime(UTC)
    assert p_start == start
    t0 = to_us(p_start)
    e = lambda metric, q, hours, **props: (sub.id, event(tenant.id, sub.id, metric, q, t0 + int(hours * HOUR), **props))  # noqa: E731
    messages = [
        e("payments", "10.00", 1), e("payments", "5.00", 2), e("payments", "200.00", 3), e("payments", "100.00", 4),
        e("seats", "4", 0), e("seats", "2", 6), e("seats", "-3", 18),
        e("llm", "1", 5, cost="0.123"), e("llm", "1", 7, cost="1.2345"),
        e("llm", "1", 8),  # no price: refused (invalid_amount), dead-lettered
        e("calls", "25", 9), e("calls", "-7", 10),
    ]
    await asyncio.to_thread(produce, migrated, migrated.topics.usage, messages)

    async def stored():
        n = await admin_conn.fetchval("select count(*) from usage_events where subscription_id = $1",
                                      uuid.UUID(sub.id))
        return n if n == 11 else None
    await wait_until(stored)

    # GetUsage's preview of the period, before it is billed.
    preview = (await stub.GetUsage(pb.GetUsageRequest(subscription_id=sub.id, period_start=ts(p_start)),
                                   metadata=tenant.md))
    by_metric = {m.metric_code: D(m.amount) for m in preview.metrics}

    run = (await stub.RunBilling(pb.RunBillingRequest(request_id=rid(), as_of=ts(datetime.now(UTC))),
                                 metadata=tenant.md)).run
    run = await _completed(stub, tenant, run.id)
    assert (run.subscriptions_billed, run.subscriptions_failed) == (1, 0)
    [(_, inv)] = await asyncio.to_thread(_read_invoices, migrated, sub.id, 1)
    lines = [(ln["metric_code"], ln["kind"], D(ln["quantity"]), D(ln["amount"])) for ln in inv["lines"]
             if ln["metric_code"]]
    assert lines == [
        # fees: 10 -> 0.59, 5 -> 0.445 -> min 0.50, 200 -> 6.10 -> max 5.00, 100 -> 3.20:
        # rate on 10 + 100 = 110 x 2.9 % = 3.19; 2 x 0.30; 1 x 0.50; 1 x 5.00.
        ("payments", "usage", D(110), D("3.19")), ("payments", "usage", D(2), D("0.60")),
        ("payments", "usage", D(1), D("0.50")), ("payments", "usage", D(1), D("5.00")),
        # 4 seats 6 h, 6 seats 12 h, 3 seats 6 h: 114 / 24 = 4.75 seats x 24.00 = 114.00.
        ("seats", "usage", D("4.75"), D("114.00")),
        # 0.123 + 1.2345 = 1.3575 -> 1.36 (one line, rounded once).
        ("llm", "usage", D(1), D("1.36")),
        # 25 - 7 = 18 calls: one complete package of 10 -> 1.00.
        ("calls", "usage", D(1), D("1.00")),
    ]
    assert D(inv["total"]) == D("125.65") == sum(a for *_, a in lines)
    assert by_metric == {"payments": D("9.29"), "seats": D("114.00"), "llm": D("1.36"), "calls": D("1.00")}


LATE_CHARGES = [
    pb.UsageCharge(metric_code="seats", aggregation=pb.AGGREGATION_WEIGHTED_SUM,
                   pricing_model=pb.PRICING_MODEL_PER_UNIT, unit_price="24.00"),
    pb.UsageCharge(metric_code="llm", aggregation=pb.AGGREGATION_COUNT, pricing_model=pb.PRICING_MODEL_DYNAMIC,
                   amount_property="cost"),
    pb.UsageCharge(metric_code="pay", aggregation=pb.AGGREGATION_SUM, pricing_model=pb.PRICING_MODEL_PERCENTAGE,
                   percentage_rate="2", fixed_fee_per_event="0.10", max_fee_per_event="20"),
]


async def test_late_events_of_event_priced_charges(roles, migrated, stub, tenant):
    from tests.integration.test_usage_api import record

    req = plan_request(base_fee="0", trial_days=0, interval=pb.INTERVAL_UNIT_DAY,
                       billing_timing=pb.BILLING_TIMING_IN_ARREARS, usage_charges=LATE_CHARGES)
    plan = (await stub.CreatePlan(req, metadata=tenant.md)).plan
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=2, hours=1)
    sub = (await stub.CreateSubscription(pb.CreateSubscriptionRequest(
        request_id=rid(), customer_id="cust-late", plan_id=plan.id, activate=True, start_at=ts(start)),
        metadata=tenant.md)).subscription
    p1_end = start + timedelta(days=1)
    await record(stub, tenant, sub, "4", metric="seats", at=start)
    await record(stub, tenant, sub, "1", metric="llm", props={"cost": "1.00"}, at=start + timedelta(hours=1))
    await record(stub, tenant, sub, "100", metric="pay", at=start + timedelta(hours=2))
    first = await _completed(stub, tenant, (await stub.RunBilling(pb.RunBillingRequest(
        request_id=rid(), as_of=ts(p1_end + timedelta(seconds=1))), metadata=tenant.md)).run.id)
    assert first.subscriptions_billed == 1
    # Period 1: 4 seats all day = 96.00; llm 1.00; 100 at 2 % + 0.10 = 2.10.
    assert [(tc.currency, D(tc.amount)) for tc in first.totals] == [("EUR", D("99.10"))]

    # Late events of period 1, then period 2 is billed with their late lines.
    await record(stub, tenant, sub, "2", metric="seats", at=start + timedelta(hours=12))
    await record(stub, tenant, sub, "1", metric="llm", props={"cost": "0.505"}, at=start + timedelta(hours=13))
    await record(stub, tenant, sub, "5000", metric="pay", at=start + timedelta(hours=14))
    second = await _completed(stub, tenant, (await stub.RunBilling(pb.RunBillingRequest(
        request_id=rid(), as_of=ts(datetime.now(UTC))), metadata=tenant.md)).run.id)
    assert second.subscriptions_billed == 1
    invoices = await asyncio.to_thread(_read_invoices, migrated, sub.id, 2)
    inv = max((d for _, d in invoices), key=lambda d: d["period_start_us"])
    lines = sorted((ln["kind"], ln["metric_code"], D(ln["amount"])) for ln in inv["lines"] if ln["metric_code"])
    assert lines == sorted([
        # seats: period 1 re-priced, 4 x 24 h + 2 x 12 h = 5 seats: 120.00 - 96.00 billed = 24.00;
        # period 2: 6 seats carried all day = 144.00.
        ("late_usage", "seats", D("24.00")), ("usage", "seats", D("144.00")),
        # llm: 1.505 - 1.00 = 0.505 -> 0.50 (half-even); period 2: no events.
        ("late_usage", "llm", D("0.50")), ("usage", "llm", D("0.00")),
        # pay: 5000 x 2 % + 0.10 = 100.10, capped at 20.00 per event; period 2: nothing (the rate
        # line and the fixed-fee line, both 0).
        ("late_usage", "pay", D("20.00")), ("usage", "pay", D("0.00")), ("usage", "pay", D("0.00")),
    ])
    assert D(inv["total"]) == D("188.50")
