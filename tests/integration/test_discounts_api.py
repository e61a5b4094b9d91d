"""CreateDiscount / ListDiscounts / DeleteDiscount over gRPC: validation naming every field,
idempotent replays, the audit trail, deletion, paging and tenant isolation."""
from __future__ import annotations

import uuid

import grpc
import pytest

from billing.v1 import billing_pb2 as pb
from tests.integration.test_api_contract import refused
from tests.integration.test_plans_api import plan_request
from tests.integration.test_subscriptions_api import rid

PCT, FIXED = pb.DISCOUNT_KIND_PERCENTAGE, pb.DISCOUNT_KIND_FIXED_AMOUNT


async def _sub(stub, tenant, currency="EUR") -> pb.Subscription:
    plan = (await stub.CreatePlan(plan_request(currency=currency, base_fee="20", usage_charges=[]),
                                 metadata=tenant.md)).plan
    return (await stub.CreateSubscription(pb.CreateSubscriptionRequest(
        request_id=rid(), customer_id="c-1", plan_id=plan.id, activate=True), metadata=tenant.md)).subscription


def _create(sub_id: str, **kw) -> pb.CreateDiscountRequest:
    fields = dict(request_id=rid(), subscription_id=sub_id, kind=PCT, value="20", periods=2)
    fields.update(kw)
    return pb.CreateDiscountRequest(**fields)


async def test_create_list_delete_with_audit_and_replays(stub, tenant, admin_conn):
    sub = await _sub(stub, tenant)
    req = _create(sub.id, applies_to=["base_fee", "api_calls"])
    made = (await stub.CreateDiscount(req, metadata=tenant.md)).discount
    assert (made.subscription_id, made.kind, made.value, list(made.applies_to), made.periods, made.periods_used) == (
        sub.id, PCT, "20", ["base_fee", "api_calls"], 2, 0)
    assert made.created_at.seconds and not made.HasField("deleted_at")
    again = (await stub.CreateDiscount(req, metadata=tenant.md)).discount
    assert again == made  # the replay returns the first outcome and makes nothing
    fixed = (await stub.CreateDiscount(_create(sub.id, kind=FIXED, value="5.50", periods=0),
                                       metadata=tenant.md)).discount
    listed = (await stub.ListDiscounts(pb.ListDiscountsRequest(subscription_id=sub.id), metadata=tenant.md)).discounts
    assert [d.id for d in listed] == [made.id, fixed.id]  # the order a close applies them

    gone = (await stub.DeleteDiscount(pb.DeleteDiscountRequest(request_id=rid(), id=made.id),
                                      metadata=tenant.md)).discount
    assert gone.HasField("deleted_at")
    again = (await stub.DeleteDiscount(pb.DeleteDiscountRequest(request_id=rid(), id=made.id),
                                       metadata=tenant.md)).discount
    assert again.deleted_at == gone.deleted_at  # deleting again changes nothing
    live = (await stub.ListDiscounts(pb.ListDiscountsRequest(subscription_id=sub.id), metadata=tenant.md)).discounts
    assert [d.id for d in live] == [fixed.id]
    every = (await stub.ListDiscounts(pb.ListDiscountsRequest(subscription_id=sub.id, include_deleted=True),
                                      metadata=tenant.md)).discounts
    assert [d.id for d in every] == [made.id, fixed.id]
    actions = await admin_conn.fetch(
        "select action from audit_events where tenant_id = $1 and entity_type = 'discount' order by id",
        uuid.UUID(tenant.id))
    assert [r["action"] for r in actions] == ["discount.created", "discount.created", "discount.deleted"]


async def test_list_discounts_pages(stub, tenant):
    sub = await _sub(stub, tenant)
    ids = [(await stub.CreateDiscount(_create(sub.id), metadata=tenant.md)).discount.id for _ in range(3)]
    first = await stub.ListDiscounts(pb.ListDiscountsRequest(subscription_id=sub.id, page_size=2), metadata=tenant.md)
    second = await stub.ListDiscounts(pb.ListDiscountsRequest(subscription_id=sub.id, page_size=2,
                                                              page_token=first.next_page_token), metadata=tenant.md)
    assert [d.id for d in first.discounts] + [d.id for d in second.discounts] == ids
    assert first.next_page_token and not second.next_page_token


async def test_create_discount_lists_every_violation_at_once(stub, tenant, admin_conn):
    req = pb.CreateDiscountRequest(request_id="", subscription_id="nope", value="abc", applies_to=["Bad Name"],
                                   periods=-1)
    _, details = await refused(stub.CreateDiscount, req, tenant.md)
    assert [v.field for v in details["BadRequest"].field_violations] == [
        "request_id", "subscription_id", "kind", "value", "applies_to[0]", "periods"]
    assert await admin_conn.fetchval("select count(*) from discounts where tenant_id = $1", uuid.UUID(tenant.id)) == 0


@pytest.mark.parametrize("overrides, field", [
    ({"value": "0"}, "value"),
    ({"value": "100.5"}, "value"),
    ({"value": "-5"}, "value"),
    ({"value": "12.34567"}, "value"),
    ({"kind": FIXED, "value": "1.005"}, "value"),  # EUR has 2 decimals
    ({"applies_to": ["calls", "calls"]}, "applies_to[1]"),
    ({"periods": 1201}, "periods"),
    ({"kind": 7}, "kind"),
])
async def test_a_bad_discount_field_is_named(stub, tenant, overrides, field):
    sub = await _sub(stub, tenant)
    message, details = await refused(stub.CreateDiscount, _create(sub.id, **overrides), tenant.md)
    assert message.split(":")[0] == field, message


async def test_a_fixed_amount_follows_the_plans_currency(stub, tenant):
    sub = await _sub(stub, tenant, currency="JPY")
    message, _ = await refused(stub.CreateDiscount, _create(sub.id, kind=FIXED, value="5.5"), tenant.md)
    assert message.startswith("value")
    made = (await stub.CreateDiscount(_create(sub.id, kind=FIXED, value="500"), metadata=tenant.md)).discount
    assert made.value == "500"


async def test_not_found_canceled_and_reused_request_ids(stub, tenant):
    missing = str(uuid.uuid4())
    _, details = await refused(stub.CreateDiscount, _create(missing), tenant.md, grpc.StatusCode.NOT_FOUND)
    assert details["ErrorInfo"].reason == "SUBSCRIPTION_NOT_FOUND"
    _, details = await refused(stub.DeleteDiscount, pb.DeleteDiscountRequest(request_id=rid(), id=missing),
                               tenant.md, grpc.StatusCode.NOT_FOUND)
    assert details["ErrorInfo"].reason == "DISCOUNT_NOT_FOUND"
    _, details = await refused(stub.ListDiscounts, pb.ListDiscountsRequest(subscription_id=missing), tenant.md,
                               grpc.StatusCode.NOT_FOUND)
    sub = await _sub(stub, tenant)
    req = _create(sub.id)
    await stub.CreateDiscount(req, metadata=tenant.md)
    message, details = await refused(stub.CreateDiscount, _create(sub.id, request_id=req.request_id, value="30"),
                                     tenant.md)
    assert details["ErrorInfo"].reason == "REQUEST_ID_REUSED"
    await stub.CancelSubscription(pb.CancelSubscriptionRequest(request_id=rid(), id=sub.id,
                                                               mode=pb.CANCEL_MODE_IMMEDIATELY), metadata=tenant.md)
    _, details = await refused(stub.CreateDiscount, _create(sub.id), tenant.md, grpc.StatusCode.FAILED_PRECONDITION)
    assert details["ErrorInfo"].reason == "SUBSCRIPTION_CANCELED"


async def test_another_tenant_sees_no_discount(stub, tenant, new_tenant):
    sub = await _sub(stub, tenant)
    made = (await stub.CreateDiscount(_create(sub.id), metadata=tenant.md)).discount
    other = await new_tenant()
    await refused(stub.ListDiscounts, pb.ListDiscountsRequest(subscription_id=sub.id), other.md,
                  grpc.StatusCode.NOT_FOUND)
    await refused(stub.DeleteDiscount, pb.DeleteDiscountRequest(request_id=rid(), id=made.id), other.md,
                  grpc.StatusCode.NOT_FOUND)
    await refused(stub.CreateDiscount, _create(sub.id), other.md, grpc.StatusCode.NOT_FOUND)
    # Nothing of the owner's changed: its discount is listed, not deleted, and alone.
    listed = (await stub.ListDiscounts(pb.ListDiscountsRequest(subscription_id=sub.id, include_deleted=True),
                                       metadata=tenant.md)).discounts
    assert [(d.id, d.HasField("deleted_at")) for d in listed] == [(made.id, False)]
