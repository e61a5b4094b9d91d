"""Subscriptions over gRPC: create, read, list, every lifecycle action, idempotency, events, history."""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from billing import codec
from billing.v1 import billing_pb2 as pb
from tests.integration.test_plans_api import plan_request

S = pb.SubscriptionStatus


def rid() -> str:
    return str(uuid.uuid4())


def ts(dt: datetime) -> Timestamp:
    t = Timestamp()
    t.FromDatetime(dt)
    return t


async def make_plan(stub, tenant, base_fee="10.00", interval=pb.INTERVAL_UNIT_MONTH, trial_days=0,
                    currency="EUR") -> pb.Plan:
    req = plan_request(base_fee=base_fee, interval=interval, trial_days=trial_days, currency=currency,
                       usage_charges=[])
    return (await stub.CreatePlan(req, metadata=tenant.md)).plan


async def make_sub(stub, tenant, plan, activate=True, **kw) -> pb.Subscription:
    req = pb.CreateSubscriptionRequest(request_id=rid(), customer_id="cust-1", plan_id=plan.id, activate=activate,
                                       **kw)
    return (await stub.CreateSubscription(req, metadata=tenant.md)).subscription


async def sub_in_state(stub, tenant, state: str) -> tuple[pb.Subscription, pb.Plan]:
    plan = await make_plan(stub, tenant, trial_days=7 if state == "trialing" else 0)
    sub = await make_sub(stub, tenant, plan, activate=state != "pending")
    if state == "paused":
        sub = (await stub.PauseSubscription(pb.PauseSubscriptionRequest(request_id=rid(), id=sub.id),
                                            metadata=tenant.md)).subscription
    elif state == "canceled":
        sub = (await stub.CancelSubscription(pb.CancelSubscriptionRequest(
            request_id=rid(), id=sub.id, mode=pb.CANCEL_MODE_IMMEDIATELY), metadata=tenant.md)).subscription
    assert pb.SubscriptionStatus.Name(sub.status) == f"SUBSCRIPTION_STATUS_{state.upper()}"
    return sub, plan


def _actions(stub, other_plan_id):
    return {
        "activate": lambda i: (stub.ActivateSubscription, pb.ActivateSubscriptionRequest(request_id=rid(), id=i)),
        "pause": lambda i: (stub.PauseSubscription, pb.PauseSubscriptionRequest(request_id=rid(), id=i)),
        "resume": lambda i: (stub.ResumeSubscription, pb.ResumeSubscriptionRequest(request_id=rid(), id=i)),
        "cancel_now": lambda i: (stub.CancelSubscription, pb.CancelSubscriptionRequest(
            request_id=rid(), id=i, mode=pb.CANCEL_MODE_IMMEDIATELY)),
        "cancel_at_end": lambda i: (stub.CancelSubscription, pb.CancelSubscriptionRequest(
            request_id=rid(), id=i, mode=pb.CANCEL_MODE_AT_PERIOD_END)),
        "change_plan": lambda i: (stub.ChangePlan, pb.ChangePlanRequest(
            request_id=rid(), id=i, new_plan_id=other_plan_id, timing=pb.CHANGE_TIMING_IMMEDIATELY)),
    }


# state -> action -> status after, or None when refused
TABLE = {
    "pending": {"activate": "active", "pause": None, "resume": None, "cancel_now": None, "cancel_at_end": None,
                "change_plan": "pending"},
    "trialing": {"activate": "active", "pause": None, "resume": None, "cancel_now": "canceled",
                 "cancel_at_end": "trialing", "change_plan": "trialing"},
    "active": {"activate": None, "pause": "paused", "resume": None, "cancel_now": "canceled",
               "cancel_at_end": "active", "change_plan": "active"},
    "paused": {"activate": None, "pause": None, "resume": "active", "cancel_now": "canceled",
               "cancel_at_end": "paused", "change_plan": "paused"},
    "canceled": {a: None for a in ("activate", "pause", "resume", "cancel_now", "cancel_at_end", "change_plan")},
}


@pytest.mark.parametrize("state, action", [(s, a) for s in TABLE for a in TABLE[s]])
async def test_lifecycle_table(stub, tenant, admin_conn, state, action):
    sub, plan = await sub_in_state(stub, tenant, state)
    other = await make_plan(stub, tenant, base_fee="20.00")
    call, req = _actions(stub, other.id)[action](sub.id)
    expected = TABLE[state][action]
    audit_before = await admin_conn.fetchval("select count(*) from audit_events where entity_id = $1",
                                             uuid.UUID(sub.id))
    outbox_before = await admin_conn.fetchval("select count(*) from outbox where tenant_id = $1",
                                              uuid.UUID(tenant.id))
    if expected is None:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call(req, metadata=tenant.md)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION, err.value.details()
        assert f"'{state}'" in err.value.details()
        after = (await stub.GetSubscription(pb.GetSubscriptionRequest(id=sub.id), metadata=tenant.md)).subscription
        assert after == sub  # nothing changed
        assert await admin_conn.fetchval("select count(*) from audit_events where entity_id = $1",
                                         uuid.UUID(sub.id)) == audit_before
        assert await admin_conn.fetchval("select count(*) from outbox where tenant_id = $1",
                                         uuid.UUID(tenant.id)) == outbox_before
    else:
        result = (await call(req, metadata=tenant.md)).subscription
        assert S.Name(result.status) == f"SUBSCRIPTION_STATUS_{expected.upper()}"
        assert await admin_conn.fetchval("select count(*) from audit_events where entity_id = $1",
                                         uuid.UUID(sub.id)) == audit_before + 1
        if action == "cancel_at_end":
            assert result.cancel_at_period_end
        if action == "change_plan":
            assert result.plan_id == other.id


async def test_create_get_and_history(stub, tenant):
    plan = await make_plan(stub, tenant, trial_days=14)
    sub = await make_sub(stub, tenant, plan, metadata={"crm": "42"})
    assert sub.status == S.SUBSCRIPTION_STATUS_TRIALING and sub.plan_code == plan.code
    trial = sub.trial_end.ToDatetime() - sub.start_at.ToDatetime()
    assert trial == timedelta(days=14)
    assert sub.current_period_start == sub.start_at and sub.current_period_end == sub.trial_end
    assert sub.billing_anchor == sub.trial_end and dict(sub.metadata) == {"crm": "42"}
    await stub.CancelSubscription(pb.CancelSubscriptionRequest(request_id=rid(), id=sub.id,
                                                               mode=pb.CANCEL_MODE_AT_PERIOD_END), metadata=tenant.md)
    got = (await stub.GetSubscription(pb.GetSubscriptionRequest(id=sub.id, include_history=True),
                                      metadata=tenant.md)).subscription
    assert [h.action for h in got.history] == ["created", "trial_started", "cancel_scheduled"]
    assert got.history[1].from_status == S.SUBSCRIPTION_STATUS_PENDING
    assert got.history[1].to_status == S.SUBSCRIPTION_STATUS_TRIALING
    assert all(h.actor == f"api_key:{tenant.api_key_id}" for h in got.history)
    plain = (await stub.GetSubscription(pb.GetSubscriptionRequest(id=sub.id), metadata=tenant.md)).subscription
    assert len(plain.history) == 0


async def test_anchor_gives_short_first_period(stub, tenant):
    plan = await make_plan(stub, tenant)
    start = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(days=1)
    anchor = start + timedelta(days=10)
    sub = await make_sub(stub, tenant, plan, start_at=ts(start), billing_anchor=ts(anchor))
    assert sub.current_period_start.ToDatetime(timezone.utc) == start
    assert sub.current_period_end.ToDatetime(timezone.utc) == anchor


async def test_archived_plan_takes_no_new_subscriptions(stub, tenant):
    plan = await make_plan(stub, tenant)
    await stub.ArchivePlan(pb.ArchivePlanRequest(request_id=rid(), id=plan.id), metadata=tenant.md)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await make_sub(stub, tenant, plan)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "archived" in err.value.details()


async def test_change_plan_defaults_and_pending_change(stub, tenant):
    cheap, mid, dear = (await make_plan(stub, tenant, base_fee="5.00"), await make_plan(stub, tenant, "10.00"),
                        await make_plan(stub, tenant, base_fee="20.00"))
    sub = await make_sub(stub, tenant, mid)
    # Downgrade by default waits for the period end, visible as a pending change.
    down = (await stub.ChangePlan(pb.ChangePlanRequest(request_id=rid(), id=sub.id, new_plan_id=cheap.id),
                                  metadata=tenant.md)).subscription
    assert down.plan_id == mid.id and down.pending_change.plan_id == cheap.id
    assert down.pending_change.effective_at == sub.current_period_end
    # Withdrawn by a change back to the current plan.
    back = (await stub.ChangePlan(pb.ChangePlanRequest(request_id=rid(), id=sub.id, new_plan_id=mid.id),
                                  metadata=tenant.md)).subscription
    assert not back.HasField("pending_change")
    # Upgrade by default applies now.
    up = (await stub.ChangePlan(pb.ChangePlanRequest(request_id=rid(), id=sub.id, new_plan_id=dear.id),
                                metadata=tenant.md)).subscription
    assert up.plan_id == dear.id and not up.HasField("pending_change")
    # Other currency refused.
    usd = await make_plan(stub, tenant, base_fee="50.00", currency="USD")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ChangePlan(pb.ChangePlanRequest(request_id=rid(), id=sub.id, new_plan_id=usd.id),
                              metadata=tenant.md)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "USD" in err.value.details()


async def test_interval_change_starts_new_period(stub, tenant):
    monthly = await make_plan(stub, tenant, base_fee="10.00")
    yearly = await make_plan(stub, tenant, base_fee="200.00", interval=pb.INTERVAL_UNIT_YEAR)
    sub = await make_sub(stub, tenant, monthly)
    changed = (await stub.ChangePlan(pb.ChangePlanRequest(request_id=rid(), id=sub.id, new_plan_id=yearly.id),
                                     metadata=tenant.md)).subscription
    start, end = changed.current_period_start.ToDatetime(), changed.current_period_end.ToDatetime()
    assert start > sub.current_period_start.ToDatetime() and end.year == start.year + 1


async def test_replay_returns_first_outcome_and_conflict_is_refused(stub, tenant, admin_conn):
    plan = await make_plan(stub, tenant)
    req = pb.CreateSubscriptionRequest(request_id=rid(), customer_id="c", plan_id=plan.id, activate=True)
    first = (await stub.CreateSubscription(req, metadata=tenant.md)).subscription
    assert (await stub.CreateSubscription(req, metadata=tenant.md)).subscription == first
    pause = pb.PauseSubscriptionRequest(request_id=rid(), id=first.id)
    paused = (await stub.PauseSubscription(pause, metadata=tenant.md)).subscription
    await stub.ResumeSubscription(pb.ResumeSubscriptionRequest(request_id=rid(), id=first.id), metadata=tenant.md)
    # Replaying the pause returns its first outcome (paused) and does not pause again.
    assert (await stub.PauseSubscription(pause, metadata=tenant.md)).subscription == paused
    now = (await stub.GetSubscription(pb.GetSubscriptionRequest(id=first.id), metadata=tenant.md)).subscription
    assert now.status == S.SUBSCRIPTION_STATUS_ACTIVE
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.CreateSubscription(pb.CreateSubscriptionRequest(request_id=req.request_id, customer_id="other",
                                                                   plan_id=plan.id), metadata=tenant.md)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "request_id" in err.value.details()
    assert await admin_conn.fetchval("select count(*) from subscriptions where tenant_id = $1",
                                     uuid.UUID(tenant.id)) == 1


async def test_every_change_is_an_outbox_event(stub, tenant, admin_conn):
    plan = await make_plan(stub, tenant)
    sub = await make_sub(stub, tenant, plan)
    await stub.PauseSubscription(pb.PauseSubscriptionRequest(request_id=rid(), id=sub.id), metadata=tenant.md)
    rows = await admin_conn.fetch("select stream, key, payload, headers from outbox where tenant_id = $1 order by id",
                                  uuid.UUID(tenant.id))
    decoded = [codec.decode(codec.Schema.SUBSCRIPTION_EVENT, r["payload"]) for r in rows]
    assert [e["type"] for e in decoded] == ["subscription.created", "subscription.activated", "subscription.paused"]
    assert all(r["stream"] == "subscription_events" and r["key"] == sub.id.encode() for r in rows)
    assert decoded[2]["from_status"] == "active" and decoded[2]["to_status"] == "paused"
    assert len({e["event_id"] for e in decoded}) == 3


async def test_list_filters_and_pages(stub, tenant):
    p1, p2 = await make_plan(stub, tenant), await make_plan(stub, tenant)
    made = []
    for i in range(5):
        req = pb.CreateSubscriptionRequest(request_id=rid(), customer_id=f"c{i % 2}", plan_id=(p1, p2)[i % 2].id,
                                           activate=i != 4)
        made.append((await stub.CreateSubscription(req, metadata=tenant.md)).subscription)
    seen, token = [], ""
    while True:
        page = await stub.ListSubscriptions(pb.ListSubscriptionsRequest(page_size=2, page_token=token),
                                            metadata=tenant.md)
        seen += [s.id for s in page.subscriptions]
        token = page.next_page_token
        if not token:
            break
    assert sorted(seen) == sorted(s.id for s in made) and len(seen) == 5
    pending = await stub.ListSubscriptions(pb.ListSubscriptionsRequest(status=S.SUBSCRIPTION_STATUS_PENDING),
                                           metadata=tenant.md)
    assert [s.id for s in pending.subscriptions] == [made[4].id]
    by_customer = await stub.ListSubscriptions(pb.ListSubscriptionsRequest(customer_id="c1"), metadata=tenant.md)
    assert {s.id for s in by_customer.subscriptions} == {made[1].id, made[3].id}
    by_plan = await stub.ListSubscriptions(pb.ListSubscriptionsRequest(plan_id=p1.id), metadata=tenant.md)
    assert {s.id for s in by_plan.subscriptions} == {made[0].id, made[2].id, made[4].id}


@pytest.mark.parametrize("mutate, field", [
    (lambda r: r.ClearField("customer_id"), "customer_id"),
    (lambda r: setattr(r, "customer_id", "x" * 256), "customer_id"),
    (lambda r: setattr(r, "plan_id", "not-a-uuid"), "plan_id"),
    (lambda r: setattr(r, "trial_days", -1), "trial_days"),
    (lambda r: setattr(r, "trial_days", 5000), "trial_days"),
    (lambda r: r.start_at.CopyFrom(Timestamp(seconds=1)), "start_at"),
    (lambda r: r.billing_anchor.CopyFrom(Timestamp(seconds=1)), "billing_anchor"),
    (lambda r: r.start_at.CopyFrom(Timestamp(seconds=253402300800 * 10)), "start_at"),
    (lambda r: r.metadata.update({f"k{i}": "v" for i in range(51)}), "metadata"),
    (lambda r: r.ClearField("request_id"), "request_id"),
])
async def test_bad_create_input(stub, tenant, admin_conn, mutate, field):
    plan = await make_plan(stub, tenant)
    req = pb.CreateSubscriptionRequest(request_id=rid(), customer_id="c", plan_id=plan.id, activate=True)
    mutate(req)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.CreateSubscription(req, metadata=tenant.md)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(field), err.value.details()
    assert await admin_conn.fetchval("select count(*) from subscriptions where tenant_id = $1",
                                     uuid.UUID(tenant.id)) == 0


async def test_unknown_plan_or_subscription_is_not_found(stub, tenant):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.CreateSubscription(pb.CreateSubscriptionRequest(request_id=rid(), customer_id="c",
                                                                   plan_id=str(uuid.uuid4())), metadata=tenant.md)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.PauseSubscription(pb.PauseSubscriptionRequest(request_id=rid(), id=str(uuid.uuid4())),
                                     metadata=tenant.md)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_tenant_b_cannot_read_or_change_tenant_a_subscription(stub, new_tenant, admin_conn):
    a, b = await new_tenant(), await new_tenant()
    plan = await make_plan(stub, a)
    sub = await make_sub(stub, a, plan)
    b_plan = await make_plan(stub, b)
    for call, req in [
        (stub.GetSubscription, pb.GetSubscriptionRequest(id=sub.id)),
        (stub.PauseSubscription, pb.PauseSubscriptionRequest(request_id=rid(), id=sub.id)),
        (stub.CancelSubscription, pb.CancelSubscriptionRequest(request_id=rid(), id=sub.id,
                                                               mode=pb.CANCEL_MODE_IMMEDIATELY)),
        (stub.ChangePlan, pb.ChangePlanRequest(request_id=rid(), id=sub.id, new_plan_id=b_plan.id)),
        (stub.ActivateSubscription, pb.ActivateSubscriptionRequest(request_id=rid(), id=sub.id)),
        (stub.ResumeSubscription, pb.ResumeSubscriptionRequest(request_id=rid(), id=sub.id)),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call(req, metadata=b.md)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND, call
    # B cannot subscribe to A's plan either.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await make_sub(stub, b, plan)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert list((await stub.ListSubscriptions(pb.ListSubscriptionsRequest(), metadata=b.md)).subscriptions) == []
    after = (await stub.GetSubscription(pb.GetSubscriptionRequest(id=sub.id), metadata=a.md)).subscription
    assert after == sub
