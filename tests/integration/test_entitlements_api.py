"""Entitlements over gRPC (docs/entitlements.md): a plan with the three kinds of feature,
checks against live usage, a paused subscription denied, and a plan change that changes
the features and says so with `entitlements.changed` on the subscription events topic."""
from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta, timezone

import grpc
import pytest

from billing import codec
from billing.v1 import billing_pb2 as pb
from tests.integration.test_credits_api import _refused
from tests.integration.test_plans_api import plan_request
from tests.integration.test_subscriptions_api import rid, ts
from tests.kafka_helpers import TopicReader, running_roles

CALLS = pb.UsageCharge(metric_code="api_calls", aggregation=pb.AGGREGATION_SUM,
                       pricing_model=pb.PRICING_MODEL_PER_UNIT, unit_price="0.01")


def features(tier: str, with_sso: bool = True) -> list[pb.Feature]:
    out = [pb.Feature(code="sso", kind=pb.FEATURE_KIND_BOOLEAN)] if with_sso else []
    return out + [
        pb.Feature(code="tier", kind=pb.FEATURE_KIND_STATIC, value=tier),
        pb.Feature(code="calls", kind=pb.FEATURE_KIND_METERED, metric_code="api_calls", limit="10"),
        pb.Feature(code="calls-soft", kind=pb.FEATURE_KIND_METERED, metric_code="api_calls", limit="5",
                   limit_mode=pb.LIMIT_MODE_SOFT),
    ]


async def _plan(stub, tenant, base_fee: str, feats: list[pb.Feature]) -> pb.Plan:
    return (await stub.CreatePlan(plan_request(trial_days=0, base_fee=base_fee, usage_charges=[CALLS],
                                               features=feats), metadata=tenant.md)).plan


async def _sub(stub, tenant, plan: pb.Plan, customer: str) -> pb.Subscription:
    start = datetime.now(timezone.utc) - timedelta(days=2)
    return (await stub.CreateSubscription(pb.CreateSubscriptionRequest(
        request_id=rid(), customer_id=customer, plan_id=plan.id, activate=True, start_at=ts(start)),
        metadata=tenant.md)).subscription


async def _use(stub, tenant, sub: pb.Subscription, quantity: str) -> None:
    await stub.RecordUsage(pb.RecordUsageRequest(request_id=rid(), event_id=rid(), subscription_id=sub.id,
                                                 metric_code="api_calls", quantity=quantity,
                                                 occurred_at=ts(datetime.now(timezone.utc) - timedelta(minutes=1))),
                           metadata=tenant.md)


async def _check(stub, tenant, sub: pb.Subscription, code: str) -> pb.Entitlement:
    return (await stub.CheckEntitlement(pb.CheckEntitlementRequest(subscription_id=sub.id, feature_code=code),
                                        metadata=tenant.md)).entitlement


async def test_three_kinds_against_live_usage_and_a_hard_limit(stub, tenant):
    plan = await _plan(stub, tenant, "10.00", features("gold"))
    assert [(f.code, f.kind) for f in plan.features] == [
        ("sso", pb.FEATURE_KIND_BOOLEAN), ("tier", pb.FEATURE_KIND_STATIC), ("calls", pb.FEATURE_KIND_METERED),
        ("calls-soft", pb.FEATURE_KIND_METERED)]
    assert plan.features[3].limit_mode == pb.LIMIT_MODE_SOFT and plan.features[2].limit == "10"
    got = (await stub.GetPlan(pb.GetPlanRequest(id=plan.id), metadata=tenant.md)).plan
    assert list(got.features) == list(plan.features)
    sub = await _sub(stub, tenant, plan, "ent-usage")

    assert (await _check(stub, tenant, sub, "sso")).allowed
    tier = await _check(stub, tenant, sub, "tier")
    assert tier.allowed and tier.value == "gold" and tier.kind == pb.FEATURE_KIND_STATIC
    calls = await _check(stub, tenant, sub, "calls")
    assert calls.allowed and (calls.used, calls.remaining, calls.limit) == ("0", "10", "10")
    assert calls.period_start == sub.current_period_start

    await _use(stub, tenant, sub, "6")
    await _use(stub, tenant, sub, "3")
    calls = await _check(stub, tenant, sub, "calls")
    assert calls.allowed and (calls.used, calls.remaining) == ("9", "1") and not calls.over_limit
    soft = await _check(stub, tenant, sub, "calls-soft")
    assert soft.allowed and soft.over_limit and soft.reason == "over_soft_limit" and soft.remaining == "0"

    await _use(stub, tenant, sub, "1")  # crosses the hard limit: used == limit
    calls = await _check(stub, tenant, sub, "calls")
    assert not calls.allowed and calls.reason == "limit_reached" and (calls.used, calls.remaining) == ("10", "0")

    listed = (await stub.ListEntitlements(pb.ListEntitlementsRequest(subscription_id=sub.id),
                                          metadata=tenant.md)).entitlements
    assert [(e.feature_code, e.allowed) for e in listed] == [
        ("sso", True), ("tier", True), ("calls", False), ("calls-soft", True)]
    missing = await _check(stub, tenant, sub, "nope")
    assert not missing.allowed and missing.reason == "feature_not_in_plan"

    # A check is a few reads: time it (generous bound for a shared machine; the bench measures it).
    began = time.perf_counter()
    for _ in range(20):
        await _check(stub, tenant, sub, "calls")
    assert (time.perf_counter() - began) / 20 < 0.1


async def test_a_paused_subscription_is_denied_and_a_resume_gives_back(stub, tenant):
    plan = await _plan(stub, tenant, "10.00", features("gold"))
    sub = await _sub(stub, tenant, plan, "ent-pause")
    await stub.PauseSubscription(pb.PauseSubscriptionRequest(request_id=rid(), id=sub.id), metadata=tenant.md)
    for code in ("sso", "tier", "calls"):
        e = await _check(stub, tenant, sub, code)
        assert not e.allowed and e.reason == "subscription_paused" and e.value == "" and e.used == ""
    await stub.ResumeSubscription(pb.ResumeSubscriptionRequest(request_id=rid(), id=sub.id), metadata=tenant.md)
    assert (await _check(stub, tenant, sub, "sso")).allowed


async def test_bad_requests_name_their_fields(stub, tenant):
    plan = await _plan(stub, tenant, "10.00", features("gold"))
    sub = await _sub(stub, tenant, plan, "ent-bad")
    code, _, fields = await _refused(stub.CheckEntitlement, pb.CheckEntitlementRequest(
        subscription_id="not-a-uuid", feature_code=""), tenant.md)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "subscription_id" in fields
    code, _, fields = await _refused(stub.CheckEntitlement, pb.CheckEntitlementRequest(
        subscription_id=sub.id, feature_code=""), tenant.md)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and set(fields) == {"feature_code"}
    code, _, fields = await _refused(stub.ListEntitlements, pb.ListEntitlementsRequest(
        subscription_id=sub.id, page_size=-1, page_token="x"), tenant.md)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and set(fields) == {"page_size", "page_token"}
    code, reason, _ = await _refused(stub.CheckEntitlement, pb.CheckEntitlementRequest(
        subscription_id=rid(), feature_code="sso"), tenant.md)
    assert code == grpc.StatusCode.NOT_FOUND and reason == "SUBSCRIPTION_NOT_FOUND"
    code, _, fields = await _refused(stub.CreatePlan, plan_request(usage_charges=[CALLS], features=[
        pb.Feature(code="q", kind=pb.FEATURE_KIND_METERED, metric_code="other", limit="1"),
        pb.Feature(code="s", kind=pb.FEATURE_KIND_STATIC),
        pb.Feature(code="k", kind=7)]), tenant.md)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert set(fields) == {"features[0].metric_code", "features[1].value", "features[2].kind"}


@pytest.fixture(scope="module")
async def relay(migrated):
    async with running_roles(migrated, ("billing", "relay")) as svc:
        yield svc


def _entitlement_events(settings, key: str, wanted: int) -> list[dict]:
    """The subscription's `entitlements.changed` events, once `wanted` of them are on the topic."""
    reader = TopicReader(settings, settings.topics.subscription_events)

    def mine(ms):
        return [e for e in (codec.decode(codec.Schema.SUBSCRIPTION_EVENT, m.value()) for m in ms
                            if m.key() == key.encode()) if e["type"] == "entitlements.changed"]
    try:
        reader.until(lambda ms: len(mine(ms)) >= wanted)
        return mine(reader.messages)
    finally:
        reader.close()


async def test_a_plan_change_changes_the_features_and_says_so(relay, migrated, stub, tenant):
    basic = await _plan(stub, tenant, "10.00", features("silver", with_sso=False))
    pro = await _plan(stub, tenant, "50.00", features("gold"))
    sub = await _sub(stub, tenant, basic, "ent-change")
    before = await _check(stub, tenant, sub, "sso")
    assert not before.allowed and before.reason == "feature_not_in_plan"
    assert (await _check(stub, tenant, sub, "tier")).value == "silver"

    changed = (await stub.ChangePlan(pb.ChangePlanRequest(request_id=rid(), id=sub.id, new_plan_id=pro.id,
                                                          timing=pb.CHANGE_TIMING_IMMEDIATELY),
                                     metadata=tenant.md)).subscription
    assert changed.plan_id == pro.id
    assert (await _check(stub, tenant, sub, "sso")).allowed
    assert (await _check(stub, tenant, sub, "tier")).value == "gold"
    await stub.PauseSubscription(pb.PauseSubscriptionRequest(request_id=rid(), id=sub.id), metadata=tenant.md)

    # activation, plan change, pause: three changes of what it is entitled to, one event each.
    # The relay runs on this event loop: the blocking reader waits in a thread.
    events = await asyncio.to_thread(_entitlement_events, migrated, sub.id, 3)
    assert len(events) == 3
    activated, plan_changed, paused = sorted(events, key=lambda e: e["occurred_at_us"])
    assert activated["data"] == {"cause_event": "subscription.activated", "entitled": "true", "plan_id": basic.id}
    assert plan_changed["data"] == {"cause_event": "subscription.plan_changed", "entitled": "true",
                                    "plan_id": pro.id, "old_plan_id": basic.id}
    assert paused["data"]["entitled"] == "false" and paused["to_status"] == "paused"
    assert len({e["event_id"] for e in events}) == 3


async def test_a_cancel_at_period_end_taking_effect_in_a_run_says_so(relay, migrated, stub, tenant):
    from tests.integration.test_test_clock_billing import advanced
    from tests.integration.test_test_clocks import APRIL, clock_sub, make_clock

    plan = await _plan(stub, tenant, "10.00", features("gold"))
    clock = await make_clock(stub, tenant, APRIL, name="entitlements")
    sub = await clock_sub(stub, tenant, plan, clock.id, customer_id="ent-run-cancel")
    await stub.CancelSubscription(pb.CancelSubscriptionRequest(request_id=rid(), id=sub.id,
                                                               mode=pb.CANCEL_MODE_AT_PERIOD_END),
                                  metadata=tenant.md)
    assert (await _check(stub, tenant, sub, "sso")).allowed  # scheduled: still entitled
    await advanced(stub, tenant, clock.id, datetime(2026, 5, 1, 0, 0, 1, tzinfo=timezone.utc))
    denied = await _check(stub, tenant, sub, "sso")
    assert not denied.allowed and denied.reason == "subscription_canceled"
    events = await asyncio.to_thread(_entitlement_events, migrated, sub.id, 2)
    assert [e["data"]["cause_event"] for e in sorted(events, key=lambda e: e["occurred_at_us"])] == [
        "subscription.activated", "subscription.canceled"]
    canceled = max(events, key=lambda e: e["occurred_at_us"])
    assert canceled["data"]["entitled"] == "false"
    assert canceled["occurred_at_us"] == int(datetime(2026, 5, 1, tzinfo=timezone.utc).timestamp()) * 1_000_000
