"""The API keeps the contract its proto states, tried as a client would: page tokens bound
to their method, filters and tenant; GetUsage periods; RecordUsage codes and replays;
google.rpc.Status details on errors; the auth scheme in any case."""
from __future__ import annotations

import base64
import json
import uuid
from datetime import datetime, timedelta, timezone

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from billing.v1 import billing_pb2 as pb
from tests.integration.test_plans_api import plan_request
from tests.integration.test_subscriptions_api import make_plan, make_sub, rid, ts
from tests.integration.test_usage_ingest import _setup

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def rich(err: grpc.aio.AioRpcError) -> tuple[status_pb2.Status, dict]:
    """The google.rpc.Status of a failed call, and its details by type name."""
    raw = dict(err.trailing_metadata() or ()).get("grpc-status-details-bin")
    assert raw is not None, f"no status details on {err.code()}: {err.details()}"
    status = status_pb2.Status.FromString(raw)
    assert status.code == err.code().value[0] and status.message == err.details()
    details: dict = {}
    for any_ in status.details:
        for kind in (error_details_pb2.ErrorInfo, error_details_pb2.BadRequest, error_details_pb2.ResourceInfo):
            if any_.Is(kind.DESCRIPTOR):
                msg = kind()
                any_.Unpack(msg)
                details[kind.DESCRIPTOR.name] = msg
    assert details["ErrorInfo"].domain == "billing.v1" and details["ErrorInfo"].reason
    return status, details


async def refused(call, request, md, code=INVALID) -> tuple[str, dict]:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call(request, metadata=md)
    assert err.value.code() == code, err.value.details()
    return err.value.details(), rich(err.value)[1]


async def refused_page_token(call, request, md) -> None:
    message, details = await refused(call, request, md)
    assert message.startswith("page_token")
    assert details["ErrorInfo"].reason == "PAGE_TOKEN_INVALID"
    assert [v.field for v in details["BadRequest"].field_violations] == ["page_token"]


# -- page tokens ---------------------------------------------------------------------------

async def test_a_token_pages_on_through_its_own_method(stub, tenant):
    plan = await make_plan(stub, tenant)
    subs = [await make_sub(stub, tenant, plan) for _ in range(3)]
    first = await stub.ListSubscriptions(pb.ListSubscriptionsRequest(page_size=2), metadata=tenant.md)
    assert len(first.subscriptions) == 2 and first.next_page_token
    # page_size may change between pages
    rest = await stub.ListSubscriptions(pb.ListSubscriptionsRequest(page_size=5, page_token=first.next_page_token),
                                        metadata=tenant.md)
    assert {s.id for s in [*first.subscriptions, *rest.subscriptions]} == {s.id for s in subs}
    assert rest.next_page_token == ""


async def test_a_list_plans_token_is_refused_by_other_methods(stub, tenant):
    plan = await make_plan(stub, tenant)
    await make_plan(stub, tenant)
    for _ in range(3):
        await make_sub(stub, tenant, plan)
    token = (await stub.ListPlans(pb.ListPlansRequest(page_size=1), metadata=tenant.md)).next_page_token
    assert token
    await refused_page_token(stub.ListSubscriptions, pb.ListSubscriptionsRequest(page_token=token), tenant.md)
    await refused_page_token(stub.ListBillingRuns, pb.ListBillingRunsRequest(page_token=token), tenant.md)


async def test_a_token_with_other_filters_is_refused(stub, tenant):
    plans = [await make_plan(stub, tenant) for _ in range(2)]
    token = (await stub.ListPlans(pb.ListPlansRequest(page_size=1), metadata=tenant.md)).next_page_token
    await refused_page_token(stub.ListPlans, pb.ListPlansRequest(page_token=token, include_archived=True), tenant.md)
    await refused_page_token(stub.ListPlans, pb.ListPlansRequest(page_token=token, code=plans[0].code), tenant.md)
    for _ in range(2):
        await make_sub(stub, tenant, plans[0])
    token = (await stub.ListSubscriptions(pb.ListSubscriptionsRequest(page_size=1, customer_id="cust-1"),
                                          metadata=tenant.md)).next_page_token
    assert token
    for other in (dict(customer_id="cust-2"), dict(customer_id=""), dict(customer_id="cust-1", plan_id=plans[1].id),
                  dict(customer_id="cust-1", status=pb.SUBSCRIPTION_STATUS_ACTIVE)):
        await refused_page_token(stub.ListSubscriptions, pb.ListSubscriptionsRequest(page_token=token, **other),
                                 tenant.md)
    # the same filters: accepted
    await stub.ListSubscriptions(pb.ListSubscriptionsRequest(page_token=token, customer_id="cust-1"),
                                 metadata=tenant.md)


async def test_an_edited_or_forged_token_is_refused(stub, tenant):
    for _ in range(2):
        await make_plan(stub, tenant)
    token = (await stub.ListPlans(pb.ListPlansRequest(page_size=1), metadata=tenant.md)).next_page_token
    body, mac = token.split(".")
    position = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    # the position moved a year on, signature kept: would skip nothing, or everything
    position[0] = (datetime.fromisoformat(position[0]) + timedelta(days=365)).isoformat()
    moved = base64.urlsafe_b64encode(json.dumps(position).encode()).decode().rstrip("=")
    forged_old_style = base64.urlsafe_b64encode(json.dumps(position).encode()).decode()
    flipped = token[:-1] + ("A" if token[-1] != "A" else "B")
    assert len((await stub.ListPlans(pb.ListPlansRequest(page_token=token), metadata=tenant.md)).plans) == 1
    for bad in (f"{moved}.{mac}", forged_old_style, flipped, token + ".x", "not a token", "."):
        await refused_page_token(stub.ListPlans, pb.ListPlansRequest(page_token=bad), tenant.md)


async def test_another_tenants_token_is_refused(stub, new_tenant):
    a, b = await new_tenant(), await new_tenant()
    for t in (a, b):
        for _ in range(2):
            await make_plan(stub, t)
    token = (await stub.ListPlans(pb.ListPlansRequest(page_size=1), metadata=a.md)).next_page_token
    assert token and (await stub.ListPlans(pb.ListPlansRequest(page_token=token), metadata=a.md)).plans
    await refused_page_token(stub.ListPlans, pb.ListPlansRequest(page_token=token), b.md)


# -- GetUsage periods ----------------------------------------------------------------------

async def test_get_usage_refuses_a_time_that_starts_no_period(stub, tenant):
    start = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(days=3)
    _, sub = await _setup(stub, tenant, start_at=ts(start))
    current = sub.current_period_start.ToDatetime(timezone.utc)
    for bad in (current + timedelta(days=1), start - timedelta(days=365), start - timedelta(seconds=1),
                current + timedelta(microseconds=1)):
        message, details = await refused(
            stub.GetUsage, pb.GetUsageRequest(subscription_id=sub.id, period_start=ts(bad)), tenant.md)
        assert message.startswith("period_start") and details["ErrorInfo"].metadata["field"] == "period_start"
    # the current period and the next one are periods
    for good in (sub.current_period_start, sub.current_period_end):
        usage = await stub.GetUsage(pb.GetUsageRequest(subscription_id=sub.id, period_start=good), metadata=tenant.md)
        assert usage.period_start == good and usage.total_amount == "0.00"
    # a pending subscription has no period at all
    pending = (await stub.CreateSubscription(pb.CreateSubscriptionRequest(
        request_id=rid(), customer_id="c", plan_id=sub.plan_id), metadata=tenant.md)).subscription
    await refused(stub.GetUsage, pb.GetUsageRequest(subscription_id=pending.id, period_start=sub.current_period_start),
                  tenant.md)


# -- RecordUsage ---------------------------------------------------------------------------

def usage(sub, at: datetime | None, **kw) -> pb.RecordUsageRequest:
    req = pb.RecordUsageRequest(request_id=kw.pop("request_id", rid()), subscription_id=sub.id,
                                metric_code="calls", quantity=kw.pop("quantity", "1"), **kw)
    if at is not None:
        req.occurred_at.CopyFrom(ts(at))
    return req


async def test_record_usage_codes_are_the_protos(stub, tenant, admin_conn):
    now = datetime.now(timezone.utc)
    _, sub = await _setup(stub, tenant, start_at=ts(now - timedelta(days=2)))
    message, details = await refused(stub.RecordUsage, usage(sub, None), tenant.md)
    assert message.startswith("occurred_at") and details["ErrorInfo"].reason == "INVALID_FIELD"
    # before the subscription's start: the subscription's state, not the field's form
    message, details = await refused(stub.RecordUsage, usage(sub, now - timedelta(days=3)), tenant.md,
                                     grpc.StatusCode.FAILED_PRECONDITION)
    assert details["ErrorInfo"].reason == "BEFORE_SUBSCRIPTION_START"
    # the service's window (BILLING_USAGE_MAX_AGE_DAYS, BILLING_USAGE_MAX_FUTURE_SKEW_S): the field
    for at in (now - timedelta(days=40), now + timedelta(hours=1)):
        message, _ = await refused(stub.RecordUsage, usage(sub, at), tenant.md)
        assert message.startswith("occurred_at")
    assert await admin_conn.fetchval("select count(*) from usage_events where tenant_id = $1",
                                     uuid.UUID(tenant.id)) == 0


async def test_a_replayed_record_usage_returns_the_first_answer(stub, tenant):
    _, sub = await _setup(stub, tenant)
    req = usage(sub, datetime.now(timezone.utc), event_id=f"e-{rid()}")
    first = await stub.RecordUsage(req, metadata=tenant.md)
    assert first.duplicate is False
    assert await stub.RecordUsage(req, metadata=tenant.md) == first
    # another request with the same event: a duplicate
    other = pb.RecordUsageRequest()
    other.CopyFrom(req)
    other.request_id = rid()
    assert (await stub.RecordUsage(other, metadata=tenant.md)).duplicate is True
    # the same request_id for another payload: refused, naming request_id
    changed = pb.RecordUsageRequest()
    changed.CopyFrom(req)
    changed.quantity = "2"
    message, details = await refused(stub.RecordUsage, changed, tenant.md)
    assert message.startswith("request_id") and details["ErrorInfo"].reason == "REQUEST_ID_REUSED"
    got = await stub.GetUsage(pb.GetUsageRequest(subscription_id=sub.id), metadata=tenant.md)
    assert {m.metric_code: m.quantity for m in got.metrics}["calls"] == "1"


# -- plans, error details, auth -------------------------------------------------------------

async def test_a_taken_plan_code_is_already_exists_with_its_reason(stub, tenant):
    plan = await make_plan(stub, tenant)
    _, details = await refused(stub.CreatePlan, plan_request(code=plan.code), tenant.md,
                               grpc.StatusCode.ALREADY_EXISTS)
    assert details["ErrorInfo"].reason == "PLAN_CODE_TAKEN"


async def test_create_plan_lists_every_violation_at_once(stub, tenant):
    req = plan_request(code="", currency="eur", interval_count=0, base_fee="abc", trial_days=-1)
    req.usage_charges[1].tiers[0].up_to = ""
    message, details = await refused(stub.CreatePlan, req, tenant.md)
    fields = [v.field for v in details["BadRequest"].field_violations]
    assert fields == ["code", "currency", "interval_count", "base_fee", "trial_days", "usage_charges[1].tiers[0].up_to"]
    assert all(v.description for v in details["BadRequest"].field_violations)
    assert message.startswith("code: ") and "trial_days" in message


async def test_create_subscription_lists_every_violation_at_once(stub, tenant):
    req = pb.CreateSubscriptionRequest(request_id="", customer_id="", plan_id="not-a-uuid", trial_days=-1,
                                       start_at=ts(datetime.now(timezone.utc) + timedelta(days=800)))
    _, details = await refused(stub.CreateSubscription, req, tenant.md)
    assert [v.field for v in details["BadRequest"].field_violations] == [
        "request_id", "plan_id", "customer_id", "start_at", "trial_days"]


async def test_not_found_names_the_resource(stub, tenant):
    missing = str(uuid.uuid4())
    _, details = await refused(stub.GetPlan, pb.GetPlanRequest(id=missing), tenant.md, grpc.StatusCode.NOT_FOUND)
    assert details["ErrorInfo"].reason == "PLAN_NOT_FOUND"
    info = details["ResourceInfo"]
    assert (info.resource_type, info.resource_name) == ("plan", missing)
    _, details = await refused(stub.GetSubscription, pb.GetSubscriptionRequest(id=missing), tenant.md,
                               grpc.StatusCode.NOT_FOUND)
    assert details["ErrorInfo"].reason == "SUBSCRIPTION_NOT_FOUND"


@pytest.mark.parametrize("scheme", ["bearer", "Bearer", "BEARER", "bEaReR"])
async def test_the_auth_scheme_is_case_insensitive(stub, tenant, scheme):
    plan = await make_plan(stub, tenant)
    listed = await stub.ListPlans(pb.ListPlansRequest(), metadata=(("authorization", f"{scheme} {tenant.api_key}"),))
    assert [p.id for p in listed.plans] == [plan.id]


async def test_unauthenticated_carries_its_reason(stub, tenant):
    for md, reason in (((("authorization", f"Basic {tenant.api_key}"),), "API_KEY_MISSING"),
                       ((("authorization", "bearer nope"),), "API_KEY_INVALID")):
        _, details = await refused(stub.ListPlans, pb.ListPlansRequest(), md, grpc.StatusCode.UNAUTHENTICATED)
        assert details["ErrorInfo"].reason == reason


async def test_unknown_enum_numbers_are_refused_with_the_protos_names(stub, tenant):
    req = plan_request(interval=99, code="")
    req.usage_charges[0].pricing_model = 42
    _, details = await refused(stub.CreatePlan, req, tenant.md)
    violations = {v.field: v.description for v in details["BadRequest"].field_violations}
    assert list(violations) == ["code", "interval", "usage_charges[0].pricing_model"]
    assert violations["interval"] == ("must be one of INTERVAL_UNIT_DAY, INTERVAL_UNIT_WEEK, INTERVAL_UNIT_MONTH, "
                                      "INTERVAL_UNIT_YEAR, got 99")
    assert "PRICING_MODEL_PER_UNIT" in violations["usage_charges[0].pricing_model"]
    message, _ = await refused(stub.ListSubscriptions, pb.ListSubscriptionsRequest(status=77), tenant.md)
    assert message.startswith("status: must be one of SUBSCRIPTION_STATUS_PENDING")
