"""The charge options over gRPC: stored and returned as given, every bad option refused with
INVALID_ARGUMENT naming its field; RecordUsage takes a negative quantity only where the charge
allows corrections, and a dynamic metric's event only with its price."""
from __future__ import annotations

from datetime import timedelta, timezone
from decimal import Decimal as D

import grpc
import pytest

from billing.v1 import billing_pb2 as pb
from tests.integration.test_plans_api import plan_request
from tests.integration.test_subscriptions_api import rid
from tests.integration.test_usage_api import record

PCT = dict(metric_code="pay", aggregation=pb.AGGREGATION_SUM, pricing_model=pb.PRICING_MODEL_PERCENTAGE,
           percentage_rate="2.9")

OPTIONS = [
    pb.UsageCharge(**PCT, fixed_fee_per_event="0.30", min_fee_per_event="0.50", max_fee_per_event="15"),
    pb.UsageCharge(metric_code="llm", aggregation=pb.AGGREGATION_SUM, pricing_model=pb.PRICING_MODEL_DYNAMIC,
                   amount_property="cost", free_amount="1.00"),
    pb.UsageCharge(metric_code="calls", aggregation=pb.AGGREGATION_SUM, pricing_model=pb.PRICING_MODEL_PACKAGE,
                   unit_price="1", package_size="10", package_rounding=pb.PACKAGE_ROUNDING_DOWN, free_units="5",
                   corrections=True),
    pb.UsageCharge(metric_code="gb", aggregation=pb.AGGREGATION_MAX, pricing_model=pb.PRICING_MODEL_VOLUME,
                   tiers=[pb.Tier(up_to="", unit_price="1", flat_fee="3")], zero_usage_flat_fee=True),
    pb.UsageCharge(metric_code="seats", aggregation=pb.AGGREGATION_WEIGHTED_SUM,
                   pricing_model=pb.PRICING_MODEL_PER_UNIT, unit_price="4"),
]


async def test_options_are_stored_and_returned(stub, tenant):
    created = (await stub.CreatePlan(plan_request(usage_charges=OPTIONS, trial_days=0), metadata=tenant.md)).plan
    got = (await stub.GetPlan(pb.GetPlanRequest(id=created.id), metadata=tenant.md)).plan
    assert list(got.usage_charges) == list(created.usage_charges)
    pct, dyn, calls, gb, seats = got.usage_charges
    assert (pct.percentage_rate, pct.fixed_fee_per_event, pct.min_fee_per_event, pct.max_fee_per_event) == (
        "2.9", "0.30", "0.50", "15")
    assert (dyn.amount_property, dyn.free_amount) == ("cost", "1.00")
    assert (calls.package_rounding, calls.free_units, calls.corrections) == (pb.PACKAGE_ROUNDING_DOWN, "5", True)
    assert gb.zero_usage_flat_fee and seats.aggregation == pb.AGGREGATION_WEIGHTED_SUM


async def test_a_unit_with_its_own_decimals(stub, tenant):
    plan = (await stub.CreatePlan(plan_request(currency="credits:4", base_fee="1.2345", usage_charges=[]),
                                  metadata=tenant.md)).plan
    assert (plan.currency, plan.base_fee) == ("credits:4", "1.2345")


BAD = [
    (pb.UsageCharge(metric_code="pay", aggregation=pb.AGGREGATION_SUM, pricing_model=pb.PRICING_MODEL_PERCENTAGE),
     "usage_charges[0].percentage_rate"),
    (pb.UsageCharge(**PCT, min_fee_per_event="9", max_fee_per_event="1"), "usage_charges[0].min_fee_per_event"),
    (pb.UsageCharge(**PCT, max_fee_per_event="1", free_units="2"), "usage_charges[0].free_units"),
    (pb.UsageCharge(metric_code="llm", aggregation=pb.AGGREGATION_SUM, pricing_model=pb.PRICING_MODEL_DYNAMIC),
     "usage_charges[0].amount_property"),
    (pb.UsageCharge(metric_code="c", aggregation=pb.AGGREGATION_SUM, pricing_model=pb.PRICING_MODEL_PACKAGE,
                    unit_price="1", package_size="1", package_rounding=7), "usage_charges[0].package_rounding"),
    (pb.UsageCharge(metric_code="c", aggregation=pb.AGGREGATION_SUM, pricing_model=pb.PRICING_MODEL_PER_UNIT,
                    unit_price="1", package_rounding=pb.PACKAGE_ROUNDING_DOWN), "usage_charges[0].package_rounding"),
    (pb.UsageCharge(metric_code="c", aggregation=pb.AGGREGATION_MAX, pricing_model=pb.PRICING_MODEL_PER_UNIT,
                    unit_price="1", corrections=True), "usage_charges[0].corrections"),
    (pb.UsageCharge(metric_code="c", aggregation=pb.AGGREGATION_SUM, pricing_model=pb.PRICING_MODEL_PER_UNIT,
                    unit_price="1", zero_usage_flat_fee=True), "usage_charges[0].zero_usage_flat_fee"),
    (pb.UsageCharge(metric_code="c", aggregation=pb.AGGREGATION_SUM, pricing_model=pb.PRICING_MODEL_PER_UNIT,
                    unit_price="1", free_amount="0.001"), "usage_charges[0].free_amount"),
]


@pytest.mark.parametrize("charge, field", BAD, ids=[f for _, f in BAD])
async def test_bad_option(stub, tenant, charge, field):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.CreatePlan(plan_request(usage_charges=[charge]), metadata=tenant.md)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().split(":")[0] == field, err.value.details()


async def test_corrections_and_dynamic_prices_through_record_usage(stub, tenant):
    plan = (await stub.CreatePlan(plan_request(usage_charges=OPTIONS, trial_days=0, base_fee="0"),
                                  metadata=tenant.md)).plan
    sub = (await stub.CreateSubscription(pb.CreateSubscriptionRequest(
        request_id=rid(), customer_id="c", plan_id=plan.id, activate=True), metadata=tenant.md)).subscription
    at = sub.start_at.ToDatetime(timezone.utc) + timedelta(seconds=1)
    await record(stub, tenant, sub, "32", metric="calls", at=at)
    await record(stub, tenant, sub, "-4", metric="calls", at=at)  # a correction: 28 calls
    await record(stub, tenant, sub, "2", metric="llm", props={"cost": "2.345"}, at=at)
    refused = [("-1", "pay", {}, "quantity"), ("1", "llm", {}, "properties"),
               ("1", "llm", {"cost": "-1"}, "properties"), ("1", "llm", {"cost": "1e3"}, "properties")]
    for quantity, metric, props, field in refused:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await record(stub, tenant, sub, quantity, metric=metric, props=props, at=at)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details().split(":")[0] == field, err.value.details()
    usage = await stub.GetUsage(pb.GetUsageRequest(subscription_id=sub.id), metadata=tenant.md)
    amounts = {m.metric_code: (D(m.quantity), D(m.amount)) for m in usage.metrics}
    # calls: 28 - 5 free = 23 -> 2 complete packages of 10 = 2.00; llm: 2.345 -> 2.34 (half-even)
    # - 1.00 free = 1.34;
    # gb: no usage, tier 1's flat fee charged (zero_usage_flat_fee) = 3.00.
    assert amounts["calls"] == (D(28), D("2.00"))
    assert amounts["llm"] == (D(2), D("1.34"))
    assert amounts["gb"] == (D(0), D("3.00"))
