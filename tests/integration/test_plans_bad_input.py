"""Every plan field refused with INVALID_ARGUMENT naming the field, and nothing written."""
from __future__ import annotations

import uuid

import grpc
import pytest

from billing.v1 import billing_pb2 as pb
from tests.integration.test_plans_api import plan_request

PER_UNIT = pb.PRICING_MODEL_PER_UNIT
GRAD = pb.PRICING_MODEL_GRADUATED


def charge(**kw) -> pb.UsageCharge:
    fields = dict(metric_code="calls", aggregation=pb.AGGREGATION_SUM, pricing_model=PER_UNIT, unit_price="1")
    fields.update(kw)
    return pb.UsageCharge(**fields)


CASES = [
    ({"request_id": ""}, "request_id"),
    ({"request_id": "x" * 300}, "request_id"),
    ({"code": ""}, "code"),
    ({"code": "Pro"}, "code"),
    ({"code": "a" * 65}, "code"),
    ({"code": "has space"}, "code"),
    ({"name": ""}, "name"),
    ({"name": "bad\x00name"}, "name"),
    ({"name": "n" * 201}, "name"),
    ({"description": "d" * 2001}, "description"),
    ({"currency": ""}, "currency"),
    ({"currency": "eur"}, "currency"),
    ({"currency": "XYZ"}, "currency"),
    ({"interval": pb.INTERVAL_UNIT_UNSPECIFIED}, "interval"),
    ({"interval": 42}, "interval"),
    ({"interval_count": 0}, "interval_count"),
    ({"interval_count": -3}, "interval_count"),
    ({"interval": pb.INTERVAL_UNIT_YEAR, "interval_count": 11}, "interval_count"),
    ({"base_fee": ""}, "base_fee"),
    ({"base_fee": "abc"}, "base_fee"),
    ({"base_fee": "-1"}, "base_fee"),
    ({"base_fee": "1e3"}, "base_fee"),
    ({"base_fee": "NaN"}, "base_fee"),
    ({"base_fee": "19.999"}, "base_fee"),
    ({"base_fee": "1" * 40}, "base_fee"),
    ({"billing_timing": pb.BILLING_TIMING_UNSPECIFIED}, "billing_timing"),
    ({"trial_days": -1}, "trial_days"),
    ({"trial_days": 10_000}, "trial_days"),
    ({"usage_charges": [charge(metric_code="")]}, "usage_charges[0].metric_code"),
    ({"usage_charges": [charge(metric_code="Bad Metric")]}, "usage_charges[0].metric_code"),
    ({"usage_charges": [charge(), charge()]}, "usage_charges[1].metric_code"),
    ({"usage_charges": [charge(aggregation=pb.AGGREGATION_UNSPECIFIED)]}, "usage_charges[0].aggregation"),
    ({"usage_charges": [charge(pricing_model=pb.PRICING_MODEL_UNSPECIFIED)]}, "usage_charges[0].pricing_model"),
    ({"usage_charges": [charge(unit_price="")]}, "usage_charges[0].unit_price"),
    ({"usage_charges": [charge(unit_price="-0.5")]}, "usage_charges[0].unit_price"),
    ({"usage_charges": [charge(unit_price="0.0000000000001")]}, "usage_charges[0].unit_price"),
    ({"usage_charges": [charge(pricing_model=pb.PRICING_MODEL_PACKAGE)]}, "usage_charges[0].package_size"),
    ({"usage_charges": [charge(pricing_model=pb.PRICING_MODEL_PACKAGE, package_size="0")]},
     "usage_charges[0].package_size"),
    ({"usage_charges": [charge(pricing_model=GRAD, unit_price="")]}, "usage_charges[0].tiers"),
    ({"usage_charges": [charge(pricing_model=GRAD, unit_price="",
                               tiers=[pb.Tier(up_to="10", unit_price="1")])]}, "usage_charges[0].tiers[0].up_to"),
    ({"usage_charges": [charge(pricing_model=GRAD, unit_price="",
                               tiers=[pb.Tier(up_to="10", unit_price="1"), pb.Tier(up_to="5", unit_price="1"),
                                      pb.Tier(up_to="", unit_price="1")])]}, "usage_charges[0].tiers[1].up_to"),
    ({"usage_charges": [charge(pricing_model=GRAD, unit_price="",
                               tiers=[pb.Tier(up_to="", unit_price="1"), pb.Tier(up_to="", unit_price="1")])]},
     "usage_charges[0].tiers[0].up_to"),
    ({"usage_charges": [charge(pricing_model=GRAD, unit_price="",
                               tiers=[pb.Tier(up_to="", unit_price="x")])]}, "usage_charges[0].tiers[0].unit_price"),
    ({"usage_charges": [charge(pricing_model=GRAD, unit_price="",
                               tiers=[pb.Tier(up_to="", unit_price="1", flat_fee="-1")])]},
     "usage_charges[0].tiers[0].flat_fee"),
    ({"usage_charges": [charge(pricing_model=GRAD, unit_price="1",
                               tiers=[pb.Tier(up_to="", unit_price="1")])]}, "usage_charges[0].unit_price"),
    ({"usage_charges": [charge(aggregation=pb.AGGREGATION_UNIQUE_COUNT)]}, "usage_charges[0].unique_property"),
    ({"usage_charges": [charge(unique_property="user_id")]}, "usage_charges[0].unique_property"),
    ({"usage_charges": [charge(metric_code=f"m{i}") for i in range(51)]}, "usage_charges"),
    ({"minimum_commitment": "1.005"}, "minimum_commitment"),
    ({"minimum_commitment": "-5"}, "minimum_commitment"),
    ({"usage_charges": [charge(max_amount="0")]}, "usage_charges[0].max_amount"),
    ({"usage_charges": [charge(max_amount="1.001")]}, "usage_charges[0].max_amount"),
]


@pytest.mark.parametrize("overrides, field", CASES, ids=[f"{f}:{list(o)[0]}" for o, f in CASES])
async def test_bad_plan_field(stub, tenant, admin_conn, overrides, field):
    overrides.setdefault("usage_charges", [])
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.CreatePlan(plan_request(**overrides), metadata=tenant.md)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().split(":")[0] == field, err.value.details()
    tid = uuid.UUID(tenant.id)
    assert await admin_conn.fetchval("select count(*) from plans where tenant_id = $1", tid) == 0
    assert await admin_conn.fetchval("select count(*) from audit_events where tenant_id = $1", tid) == 0
    assert await admin_conn.fetchval("select count(*) from idempotency_keys where tenant_id = $1", tid) == 0


async def test_refused_request_id_can_be_retried_with_good_content(stub, tenant):
    req = plan_request(base_fee="oops", usage_charges=[])
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.CreatePlan(req, metadata=tenant.md)
    fixed = plan_request(request_id=req.request_id, code=req.code, usage_charges=[])
    assert (await stub.CreatePlan(fixed, metadata=tenant.md)).plan.code == req.code
