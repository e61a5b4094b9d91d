"""Every money stage on one subscription, end to end (issue 22): a plan with a minimum
commitment and a graduated charge with free units, a 20% discount for two periods and a
prepaid credit grant; three daily periods closed by three billing runs through Kafka; each
invoice request's lines and total worked out by hand, in the documented order
charges -> discounts -> commitment true-up -> credits (docs/billing.md)."""
from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from decimal import Decimal as D

import pytest

from billing.v1 import billing_pb2 as pb
from tests.integration.test_billing_money import _run, _use
from tests.integration.test_billing_runs import _read_invoices, _time
from tests.integration.test_plans_api import plan_request
from tests.integration.test_subscriptions_api import rid, ts
from tests.kafka_helpers import running_roles


@pytest.fixture(scope="module")
async def kafka_roles(migrated):
    async with running_roles(migrated, ("billing", "relay")) as svc:
        yield svc


def _by_kind(inv) -> dict[str, D]:
    out: dict[str, D] = {}
    for ln in inv["lines"]:
        if not D(ln["amount"]):
            continue  # a free-units line, an empty tier: zero, shown for the record
        out[ln["kind"]] = out.get(ln["kind"], D(0)) + D(ln["amount"])
    return out


async def test_charges_discount_commitment_and_credits_over_three_periods(kafka_roles, migrated, stub, tenant):
    plan = (await stub.CreatePlan(plan_request(
        interval=pb.INTERVAL_UNIT_DAY, interval_count=1, base_fee="10.00", trial_days=0,
        billing_timing=pb.BILLING_TIMING_IN_ARREARS, minimum_commitment="30.00", usage_charges=[
            pb.UsageCharge(metric_code="api_calls", aggregation=pb.AGGREGATION_SUM,
                           pricing_model=pb.PRICING_MODEL_GRADUATED, free_units="200",
                           tiers=[pb.Tier(up_to="1000", unit_price="0.01"), pb.Tier(up_to="", unit_price="0.005")]),
        ]), metadata=tenant.md)).plan
    start = (datetime.now(timezone.utc) - timedelta(days=3, hours=2)).replace(microsecond=0)
    day = timedelta(days=1)
    p = [(start + i * day, start + (i + 1) * day) for i in range(3)]
    sub = (await stub.CreateSubscription(pb.CreateSubscriptionRequest(
        request_id=rid(), customer_id="cust-order", plan_id=plan.id, activate=True, start_at=ts(start)),
        metadata=tenant.md)).subscription
    await stub.CreateDiscount(pb.CreateDiscountRequest(
        request_id=rid(), subscription_id=sub.id, kind=pb.DISCOUNT_KIND_PERCENTAGE, value="20", periods=2),
        metadata=tenant.md)
    grant_req = pb.CreateCreditGrantRequest(request_id=rid(), subscription_id=sub.id, amount="40.00")
    grant_req.effective_at.CopyFrom(ts(start))  # effective before the first period's end
    grant = (await stub.CreateCreditGrant(grant_req, metadata=tenant.md)).grant
    for (a, _), calls in zip(p, ("1200", "3200", "9200")):
        await _use(stub, tenant, sub, "api_calls", calls, a + timedelta(hours=12))
    for _, end in p:
        await _run(stub, tenant, end + timedelta(minutes=1))

    found = await asyncio.to_thread(_read_invoices, migrated, sub.id, 3)
    invoices = sorted((inv for _, inv in found), key=lambda inv: inv["period_start_us"])
    assert [(_time(i["period_start_us"]), _time(i["period_end_us"])) for i in invoices] == p
    kinds = [[ln["kind"] for ln in inv["lines"] if D(ln["amount"]) or ln["kind"] == "base_fee"] for inv in invoices]
    # The order of the lines is the order of the stages.
    assert kinds[0] == ["base_fee", "usage", "discount", "commitment_true_up", "credit"]
    assert kinds[1] == ["base_fee", "usage", "usage", "discount", "commitment_true_up", "credit"]
    assert kinds[2] == ["base_fee", "usage", "usage"]

    # Period 1: 1200 calls less 200 free = 1000 at 0.01 = 10.00; base 10.00: charges 20.00;
    # 20% off: -4.00 -> 16.00; commitment 30.00: +14.00 -> 30.00; the grant burns all 30.00.
    assert _by_kind(invoices[0]) == {"base_fee": D("10.00"), "usage": D("10.00"), "discount": D("-4.00"),
                                     "commitment_true_up": D("14.00"), "credit": D("-30.00")}
    assert invoices[0]["total"] == "0.00"
    # Period 2: 3000 charged calls: 10.00 + 2000 * 0.005 = 10.00 -> usage 20.00, charges 30.00;
    # -6.00 -> 24.00; true-up +6.00 -> 30.00; the grant's last 10.00 -> 20.00.
    assert _by_kind(invoices[1]) == {"base_fee": D("10.00"), "usage": D("20.00"), "discount": D("-6.00"),
                                     "commitment_true_up": D("6.00"), "credit": D("-10.00")}
    assert invoices[1]["total"] == "20.00"
    # Period 3: 9000 charged calls: 10.00 + 8000 * 0.005 = 40.00 -> usage 50.00, charges 60.00;
    # the discount is used up, above the commitment, nothing left to burn.
    assert _by_kind(invoices[2]) == {"base_fee": D("10.00"), "usage": D("50.00")}
    assert invoices[2]["total"] == "60.00"
    for inv in invoices:
        assert sum(D(ln["amount"]) for ln in inv["lines"]) == D(inv["total"])
        assert D(inv["total"]) >= 0

    listed = (await stub.ListCreditGrants(pb.ListCreditGrantsRequest(subscription_id=sub.id),
                                          metadata=tenant.md)).grants
    assert [(g.id, D(g.applied), D(g.remaining), g.status) for g in listed] == [(grant.id, D(40), D(0), "depleted")]
