"""Discounts, a minimum commitment, a capped charge and exact late usage, end to end: plans
and discounts over gRPC, three periods closed by three billing runs, the invoice requests
read from Kafka; every line and total worked out by hand."""
from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from decimal import Decimal as D

import pytest

from billing.v1 import billing_pb2 as pb
from tests.integration.test_billing_runs import _completed, _read_invoices, _time
from tests.integration.test_plans_api import plan_request
from tests.integration.test_subscriptions_api import rid, ts
from tests.kafka_helpers import running_roles


@pytest.fixture(scope="module")
async def kafka_roles(migrated):
    async with running_roles(migrated, ("billing", "relay")) as svc:
        yield svc


async def _plan(stub, tenant) -> pb.Plan:
    return (await stub.CreatePlan(plan_request(
        interval=pb.INTERVAL_UNIT_DAY, interval_count=1, base_fee="10.00", trial_days=0,
        billing_timing=pb.BILLING_TIMING_IN_ARREARS, minimum_commitment="30.00", usage_charges=[
            pb.UsageCharge(metric_code="api_calls", aggregation=pb.AGGREGATION_SUM,
                           pricing_model=pb.PRICING_MODEL_GRADUATED,
                           tiers=[pb.Tier(up_to="1000", unit_price="0.01"), pb.Tier(up_to="", unit_price="0.005")]),
            pb.UsageCharge(metric_code="storage", aggregation=pb.AGGREGATION_SUM,
                           pricing_model=pb.PRICING_MODEL_PER_UNIT, unit_price="1.00", max_amount="5.00"),
        ]), metadata=tenant.md)).plan


async def _use(stub, tenant, sub, metric: str, quantity: str, at: datetime) -> None:
    await stub.RecordUsage(pb.RecordUsageRequest(request_id=rid(), subscription_id=sub.id, metric_code=metric,
                                                 quantity=quantity, occurred_at=ts(at)), metadata=tenant.md)


async def _run(stub, tenant, as_of: datetime) -> pb.BillingRun:
    run = (await stub.RunBilling(pb.RunBillingRequest(request_id=rid(), idempotency_key=rid(), as_of=ts(as_of)),
                                 metadata=tenant.md)).run
    return await _completed(stub, tenant, run.id)


async def test_three_periods_with_a_commitment_a_capped_charge_a_discount_for_two_and_late_usage(
        kafka_roles, migrated, stub, tenant):
    plan = await _plan(stub, tenant)
    assert plan.minimum_commitment == "30.00" and plan.usage_charges[1].max_amount == "5.00"
    start = (datetime.now(timezone.utc) - timedelta(days=3, hours=2)).replace(microsecond=0)
    day = timedelta(days=1)
    p = [(start + i * day, start + (i + 1) * day) for i in range(3)]
    sub = (await stub.CreateSubscription(pb.CreateSubscriptionRequest(
        request_id=rid(), customer_id="cust-money", plan_id=plan.id, activate=True, start_at=ts(start)),
        metadata=tenant.md)).subscription
    discount = (await stub.CreateDiscount(pb.CreateDiscountRequest(
        request_id=rid(), subscription_id=sub.id, kind=pb.DISCOUNT_KIND_PERCENTAGE, value="20", periods=2),
        metadata=tenant.md)).discount
    for (a, _), calls, storage in zip(p, ("1500", "3000", "5000"), ("7", "0", "3")):
        await _use(stub, tenant, sub, "api_calls", calls, a + timedelta(hours=12))
        if storage != "0":
            await _use(stub, tenant, sub, "storage", storage, a + timedelta(hours=12))

    await _run(stub, tenant, p[0][1] + timedelta(minutes=1))
    # 100 calls of the first period arrive after it was billed: a late line on the next invoice
    await _use(stub, tenant, sub, "api_calls", "100", p[0][0] + timedelta(hours=13))
    await _run(stub, tenant, p[1][1] + timedelta(minutes=1))
    await _run(stub, tenant, p[2][1] + timedelta(minutes=1))

    found = await asyncio.to_thread(_read_invoices, migrated, sub.id, 3)
    invoices = sorted((inv for _, inv in found), key=lambda inv: inv["period_start_us"])
    assert [(_time(i["period_start_us"]), _time(i["period_end_us"])) for i in invoices] == p

    def lines(inv):
        return [(ln["kind"], ln["metric_code"], ln["amount"]) for ln in inv["lines"]]

    # Period 1: base 10.00; api 1000 * 0.01 = 10.00 and 500 * 0.005 = 2.50; storage 7 * 1.00 =
    # 7.00 capped at 5.00 (-2.00). Charges 27.50; 20% off: -5.50 -> 22.00; commitment 30.00: +8.00.
    assert lines(invoices[0]) == [
        ("base_fee", None, "10.00"), ("usage", "api_calls", "10.00"), ("usage", "api_calls", "2.50"),
        ("usage", "storage", "7.00"), ("usage_cap", "storage", "-2.00"),
        ("discount", None, "-5.50"), ("commitment_true_up", None, "8.00")]
    assert invoices[0]["total"] == invoices[0]["subtotal"] == "30.00"
    # Period 2: base 10.00; api 10.00 + 2000 * 0.005 = 10.00; storage 0.00; the late 100 calls of
    # period 1: 1600 calls cost 13.00, 12.50 charged: +0.50. Charges 30.50; 20% = 6.10 -> 24.40;
    # commitment: +5.60.
    assert lines(invoices[1]) == [
        ("base_fee", None, "10.00"), ("usage", "api_calls", "10.00"), ("usage", "api_calls", "10.00"),
        ("usage", "storage", "0.00"), ("late_usage", "api_calls", "0.50"),
        ("discount", None, "-6.10"), ("commitment_true_up", None, "5.60")]
    assert invoices[1]["total"] == "30.00"
    late = invoices[1]["lines"][4]
    assert (late["quantity"], _time(late["original_period_start_us"])) == ("100", p[0][0])
    # Period 3: the discount is used up; 10.00 + 10.00 + 4000 * 0.005 = 20.00 + storage 3.00 =
    # 43.00, above the commitment: no true-up.
    assert lines(invoices[2]) == [
        ("base_fee", None, "10.00"), ("usage", "api_calls", "10.00"), ("usage", "api_calls", "20.00"),
        ("usage", "storage", "3.00")]
    assert invoices[2]["total"] == "43.00"
    for inv in invoices:
        assert sum(D(ln["amount"]) for ln in inv["lines"]) == D(inv["total"])

    listed = (await stub.ListDiscounts(pb.ListDiscountsRequest(subscription_id=sub.id), metadata=tenant.md)).discounts
    assert [(d.id, d.periods, d.periods_used) for d in listed] == [(discount.id, 2, 2)]


async def test_333_on_time_and_333_late_units_at_0_001_charge_0_67_in_total(kafka_roles, migrated, stub, tenant):
    plan = (await stub.CreatePlan(plan_request(
        interval=pb.INTERVAL_UNIT_DAY, interval_count=1, base_fee="0", trial_days=0,
        billing_timing=pb.BILLING_TIMING_IN_ARREARS, usage_charges=[
            pb.UsageCharge(metric_code="api_calls", aggregation=pb.AGGREGATION_SUM,
                           pricing_model=pb.PRICING_MODEL_PER_UNIT, unit_price="0.001")]), metadata=tenant.md)).plan
    start = (datetime.now(timezone.utc) - timedelta(days=2, hours=2)).replace(microsecond=0)
    p1_end = start + timedelta(days=1)
    sub = (await stub.CreateSubscription(pb.CreateSubscriptionRequest(
        request_id=rid(), customer_id="cust-late", plan_id=plan.id, activate=True, start_at=ts(start)),
        metadata=tenant.md)).subscription
    await _use(stub, tenant, sub, "api_calls", "333", start + timedelta(hours=1))
    await _run(stub, tenant, p1_end + timedelta(minutes=1))
    await _use(stub, tenant, sub, "api_calls", "333", start + timedelta(hours=2))  # late: period 1 is billed
    await _run(stub, tenant, p1_end + timedelta(days=1, minutes=1))

    found = await asyncio.to_thread(_read_invoices, migrated, sub.id, 2)
    first, second = sorted((inv for _, inv in found), key=lambda inv: inv["period_start_us"])
    assert [(ln["kind"], ln["amount"]) for ln in first["lines"]] == [("usage", "0.33")]  # 0.333 -> 0.33
    # 666 units cost 0.666 -> 0.67; 0.33 charged: the late line is 0.34 (not 0.33 + 0.33 = 0.66)
    assert [(ln["kind"], ln["amount"]) for ln in second["lines"]] == [("usage", "0.00"), ("late_usage", "0.34")]
