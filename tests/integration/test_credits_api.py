"""Credit grants over gRPC: create, list with balances, void; idempotency, bad input and
tenant isolation (docs/api.md, docs/billing.md "Credits")."""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from billing.v1 import billing_pb2 as pb
from tests.integration.test_subscriptions_api import make_plan, make_sub, rid, ts


def _now() -> datetime:
    return datetime.now(timezone.utc)


async def _refused(call, request, md) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    """(code, ErrorInfo reason, {field: description} of the BadRequest) of a refused call."""
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call(request, metadata=md)
    status = rpc_status.from_call(err.value)
    reason, fields = "", {}
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields = {v.field: v.description for v in bad.field_violations}
    return err.value.code(), reason, fields


async def test_create_list_void_with_balances_and_replays(stub, tenant, admin_conn):
    plan = await make_plan(stub, tenant)
    sub = await make_sub(stub, tenant, plan)
    expires = _now() + timedelta(days=90)
    req = pb.CreateCreditGrantRequest(request_id=rid(), subscription_id=sub.id, amount="25.00", priority=2,
                                      expires_at=ts(expires), description="welcome")
    grant = (await stub.CreateCreditGrant(req, metadata=tenant.md)).grant
    # The currency and customer come from the subscription and its plan.
    assert (grant.subscription_id, grant.customer_id, grant.currency) == (sub.id, "cust-1", "EUR")
    assert (grant.granted, grant.applied, grant.expired, grant.voided, grant.remaining) == (
        "25.00", "0", "0", "0", "25.00")
    assert (grant.priority, grant.status, grant.description) == (2, "active", "welcome")
    assert grant.expires_at.ToDatetime(timezone.utc) == expires
    # A replay returns the same grant and creates nothing.
    again = (await stub.CreateCreditGrant(req, metadata=tenant.md)).grant
    assert again.id == grant.id
    assert await admin_conn.fetchval("select count(*) from credit_grants where subscription_id = $1",
                                     uuid.UUID(sub.id)) == 1
    # The same request_id for another request is refused.
    other = pb.CreateCreditGrantRequest(request_id=req.request_id, subscription_id=sub.id, amount="26.00")
    code, reason, fields = await _refused(stub.CreateCreditGrant, other, tenant.md)
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "REQUEST_ID_REUSED") and "request_id" in fields

    customer = (await stub.CreateCreditGrant(pb.CreateCreditGrantRequest(
        request_id=rid(), customer_id="cust-1", currency="EUR", amount="3.50",
        effective_at=ts(_now() + timedelta(days=2))), metadata=tenant.md)).grant
    assert (customer.subscription_id, customer.status) == ("", "scheduled")

    listed = (await stub.ListCreditGrants(pb.ListCreditGrantsRequest(), metadata=tenant.md)).grants
    assert [g.id for g in listed] == [customer.id, grant.id]  # newest first
    by_sub = (await stub.ListCreditGrants(pb.ListCreditGrantsRequest(subscription_id=sub.id),
                                          metadata=tenant.md)).grants
    assert [g.id for g in by_sub] == [grant.id]
    first = await stub.ListCreditGrants(pb.ListCreditGrantsRequest(page_size=1, customer_id="cust-1"),
                                        metadata=tenant.md)
    rest = await stub.ListCreditGrants(pb.ListCreditGrantsRequest(page_size=1, customer_id="cust-1",
                                                                  page_token=first.next_page_token),
                                       metadata=tenant.md)
    assert ([g.id for g in first.grants], [g.id for g in rest.grants], rest.next_page_token) == (
        [customer.id], [grant.id], "")

    void = pb.VoidCreditGrantRequest(request_id=rid(), id=grant.id)
    voided = (await stub.VoidCreditGrant(void, metadata=tenant.md)).grant
    assert (voided.status, voided.voided, voided.remaining, voided.granted) == ("voided", "25.00", "0.00", "25.00")
    assert voided.voided_at.seconds
    assert (await stub.VoidCreditGrant(void, metadata=tenant.md)).grant == voided  # a replay: the same outcome
    code, reason, _ = await _refused(stub.VoidCreditGrant, pb.VoidCreditGrantRequest(request_id=rid(), id=grant.id),
                                     tenant.md)
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "CREDIT_GRANT_VOIDED")
    ledger = await admin_conn.fetch("select kind, amount from credit_entries where grant_id = $1",
                                    uuid.UUID(grant.id))
    assert [(r["kind"], str(r["amount"])) for r in ledger] == [("voided", "25.00")]
    audit = await admin_conn.fetch("select action, actor from audit_events where entity_type = 'credit_grant' "
                                   "and entity_id = $1 order by id", uuid.UUID(grant.id))
    assert [r["action"] for r in audit] == ["credit.granted", "credit.voided"]
    assert audit[0]["actor"] == f"api:{tenant.api_key_id}"
    events = await admin_conn.fetch("select headers->>'event-type' as t from outbox where tenant_id = $1 "
                                    "and stream = 'subscription_events' and headers->>'event-type' like 'credit.%' "
                                    "order by id", uuid.UUID(tenant.id))
    assert [r["t"] for r in events] == ["credit.granted", "credit.granted", "credit.voided"]


async def test_bad_input_names_every_field(stub, tenant):
    plan = await make_plan(stub, tenant)
    sub = await make_sub(stub, tenant, plan)
    bad = pb.CreateCreditGrantRequest(request_id=rid(), subscription_id=sub.id, amount="-5", priority=-1,
                                      effective_at=ts(_now() + timedelta(days=10)),
                                      expires_at=ts(_now() + timedelta(days=5)))
    code, reason, fields = await _refused(stub.CreateCreditGrant, bad, tenant.md)
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD")
    assert set(fields) == {"amount", "priority", "expires_at"}
    assert "negative" in fields["amount"] and "after effective_at" in fields["expires_at"]

    cases = [
        (dict(subscription_id=sub.id, amount="0"), "amount"),
        (dict(subscription_id=sub.id, amount="1.001"), "amount"),  # EUR has 2 decimals
        (dict(subscription_id=sub.id, amount="10", currency="USD"), "currency"),  # not the plan's currency
        (dict(subscription_id=sub.id, amount="10", customer_id="someone-else"), "customer_id"),
        (dict(subscription_id=sub.id, amount="10", expires_at=ts(_now() - timedelta(days=1))), "expires_at"),
        (dict(customer_id="cust-1", amount="10"), "currency"),  # a customer's grant names its currency
        (dict(amount="10", currency="EUR"), "customer_id"),  # neither a subscription nor a customer
        (dict(subscription_id="not-a-uuid", amount="10"), "subscription_id"),
        (dict(subscription_id=sub.id, amount="10", description="a\x00b"), "description"),
    ]
    for kw, field in cases:
        code, reason, fields = await _refused(stub.CreateCreditGrant,
                                              pb.CreateCreditGrantRequest(request_id=rid(), **kw), tenant.md)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and field in fields, (kw, fields)

    code, reason, _ = await _refused(stub.CreateCreditGrant, pb.CreateCreditGrantRequest(
        request_id=rid(), subscription_id=str(uuid.uuid4()), amount="10"), tenant.md)
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "SUBSCRIPTION_NOT_FOUND")
    code, reason, _ = await _refused(stub.VoidCreditGrant, pb.VoidCreditGrantRequest(
        request_id=rid(), id=str(uuid.uuid4())), tenant.md)
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "CREDIT_GRANT_NOT_FOUND")
    code, _, fields = await _refused(stub.VoidCreditGrant, pb.VoidCreditGrantRequest(id=str(uuid.uuid4())),
                                     tenant.md)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "request_id" in fields
    code, _, fields = await _refused(stub.ListCreditGrants, pb.ListCreditGrantsRequest(page_token="junk"), tenant.md)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "page_token" in fields
    canceled = await make_sub(stub, tenant, plan)
    await stub.CancelSubscription(pb.CancelSubscriptionRequest(request_id=rid(), id=canceled.id,
                                                               mode=pb.CANCEL_MODE_IMMEDIATELY), metadata=tenant.md)
    code, reason, _ = await _refused(stub.CreateCreditGrant, pb.CreateCreditGrantRequest(
        request_id=rid(), subscription_id=canceled.id, amount="10"), tenant.md)
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "SUBSCRIPTION_CANCELED")
    listed = (await stub.ListCreditGrants(pb.ListCreditGrantsRequest(), metadata=tenant.md)).grants
    assert list(listed) == []  # nothing refused left a grant behind


async def test_another_tenant_cannot_see_or_void_a_grant(stub, new_tenant, admin_conn):
    a, b = await new_tenant(), await new_tenant()
    plan = await make_plan(stub, a)
    sub = await make_sub(stub, a, plan)
    grant = (await stub.CreateCreditGrant(pb.CreateCreditGrantRequest(
        request_id=rid(), subscription_id=sub.id, amount="9.00"), metadata=a.md)).grant
    for md in (b.md,):
        assert list((await stub.ListCreditGrants(pb.ListCreditGrantsRequest(), metadata=md)).grants) == []
        assert list((await stub.ListCreditGrants(pb.ListCreditGrantsRequest(subscription_id=sub.id),
                                                 metadata=md)).grants) == []
        code, reason, _ = await _refused(stub.VoidCreditGrant, pb.VoidCreditGrantRequest(request_id=rid(),
                                                                                         id=grant.id), md)
        assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "CREDIT_GRANT_NOT_FOUND")
        code, reason, _ = await _refused(stub.CreateCreditGrant, pb.CreateCreditGrantRequest(
            request_id=rid(), subscription_id=sub.id, amount="1.00"), md)
        assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "SUBSCRIPTION_NOT_FOUND")
    row = await admin_conn.fetchrow("select remaining, voided_at from credit_grants where id = $1",
                                    uuid.UUID(grant.id))
    assert (str(row["remaining"]), row["voided_at"]) == ("9.00", None)
    mine = (await stub.ListCreditGrants(pb.ListCreditGrantsRequest(), metadata=a.md)).grants
    assert [g.id for g in mine] == [grant.id]
