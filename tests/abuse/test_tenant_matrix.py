"""Issue #8 item 4: the tenant isolation matrix over every RPC of BillingService.

Tenant B aims at tenant A with everything it could have learned: A's plan, subscription
and billing-run ids, A's exact requests (same request_id, same body: a leaky idempotency
table would hand B A's stored outcome), A's idempotency keys, event ids, plan codes and
customer ids. Every answer must be NOT_FOUND or B's own data; no response to B may contain
any of A's ids or customer ids; and A's rows must be exactly as they were.

The cases are keyed by method name and checked against the service descriptor, so an RPC
added without a case fails `test_every_rpc_has_a_case`. The probe and the cases of
discounts, credits, test clocks, entitlements and thresholds are in tenant_matrix_cases.py.

And a revoked API key is refused at once, on every RPC.
"""
from __future__ import annotations

import asyncio

import uuid

import grpc
import pytest

from billing.v1 import billing_pb2 as pb
from tests.abuse.tally import TALLY
from tests.abuse.tenant_matrix_cases import MORE_CASES, Probe
from tests.abuse.world import build_world, rid, snapshot
from tests.integration.test_plans_api import plan_request

pytestmark = pytest.mark.abuse

SERVICE = pb.DESCRIPTOR.services_by_name["BillingService"]
METHODS = [m.name for m in SERVICE.methods]


@pytest.fixture(scope="module")
async def ab(stub, admin_conn):
    from billing.services.tenants import create_tenant
    from tests.conftest import Tenant

    async def tenant(name):
        t = await create_tenant(admin_conn, name)
        return Tenant(str(t.tenant_id), t.api_key, str(t.api_key_id))

    a = await build_world(stub, await tenant("matrix-a"), "ma")
    b = await build_world(stub, await tenant("matrix-b"), "mb")
    return a, b


# -- one case per RPC ---------------------------------------------------------------------

async def create_plan(p: Probe):
    # A's exact requests: B gets plans of its own (a new id), never A's stored outcome.
    # A's codes are free for B too: codes are per tenant.
    replies = await p.replay_a("CreatePlan", allowed=("OK",))
    assert [r.plan.code for r in replies] == [q.code for q in p.a.requests["CreatePlan"]]
    assert not {r.plan.id for r in replies} & set(p.a.ids())


async def get_plan(p: Probe):
    for plan in p.a.plans.values():
        await p("GetPlan", pb.GetPlanRequest(id=plan.id))


async def list_plans(p: Probe):
    mine = {x.id for x in p.b.plans.values()}
    everything = await p("ListPlans", pb.ListPlansRequest(include_archived=True, page_size=500), allowed=("OK",))
    assert mine <= {x.id for x in everything.plans}
    for code in [x.code for x in p.a.plans.values()]:  # A's codes: nothing, or B's own plan of that code
        resp = await p("ListPlans", pb.ListPlansRequest(include_archived=True, code=code), allowed=("OK",))
        assert {x.id for x in resp.plans} <= {x.id for x in everything.plans}
    for plan in everything.plans:  # every listed plan is B's: B can read it
        assert (await p.stub.GetPlan(pb.GetPlanRequest(id=plan.id), metadata=p.b.md)).plan == plan


async def archive_plan(p: Probe):
    await p.replay_a("ArchivePlan")
    for plan in p.a.plans.values():
        await p("ArchivePlan", pb.ArchivePlanRequest(request_id=rid(), id=plan.id))


async def create_subscription(p: Probe):
    # A's requests name A's plans: not found for B, and A's stored outcome is not handed out.
    await p.replay_a("CreateSubscription")
    # A's request_id with B's own plan: B's own new subscription.
    a_req = p.a.requests["CreateSubscription"][0]
    resp = await p("CreateSubscription", pb.CreateSubscriptionRequest(
        request_id=a_req.request_id, customer_id="b-own", plan_id=p.b.plans["main"].id, activate=True),
        allowed=("OK",))
    assert resp.subscription.id not in p.a.ids()


async def get_subscription(p: Probe):
    for sub in p.a.subs.values():
        await p("GetSubscription", pb.GetSubscriptionRequest(id=sub.id, include_history=True))


async def list_subscriptions(p: Probe):
    mine = {s.id for s in p.b.subs.values()}
    resp = await p("ListSubscriptions", pb.ListSubscriptionsRequest(page_size=500), allowed=("OK",))
    assert not {s.id for s in resp.subscriptions} & set(p.a.ids()) and mine <= {s.id for s in resp.subscriptions}
    for plan in p.a.plans.values():  # filtering by A's plan finds nothing (or is refused)
        resp = await p("ListSubscriptions", pb.ListSubscriptionsRequest(plan_id=plan.id), allowed=("OK", "NOT_FOUND"))
        assert resp is None or list(resp.subscriptions) == []
    for sub in p.a.subs.values():
        resp = await p("ListSubscriptions", pb.ListSubscriptionsRequest(customer_id=sub.customer_id), allowed=("OK",))
        assert list(resp.subscriptions) == []


def _lifecycle(method: str, request_type, **extra):
    async def case(p: Probe):
        await p.replay_a(method)
        for sub in p.a.subs.values():
            await p(method, request_type(request_id=rid(), id=sub.id, **extra))
    case.__name__ = method
    return case


async def change_plan(p: Probe):
    await p.replay_a("ChangePlan")
    for sub in p.a.subs.values():  # A's subscription to B's plan
        await p("ChangePlan", pb.ChangePlanRequest(request_id=rid(), id=sub.id, new_plan_id=p.b.plans["upgrade"].id))
    for plan in p.a.plans.values():  # B's own subscription to A's plan
        await p("ChangePlan", pb.ChangePlanRequest(request_id=rid(), id=p.b.subs["active"].id, new_plan_id=plan.id,
                                                   timing=pb.CHANGE_TIMING_IMMEDIATELY))
    assert (await p.stub.GetSubscription(pb.GetSubscriptionRequest(id=p.b.subs["active"].id),
                                         metadata=p.b.md)).subscription.plan_id == p.b.subs["active"].plan_id


async def record_usage(p: Probe):
    await p.replay_a("RecordUsage")
    # A's event ids on B's own subscription: B's own events, not duplicates of A's.
    sub = p.b.subs["active"]
    for event_id in p.a.event_ids:
        req = pb.RecordUsageRequest(request_id=rid(), event_id=event_id, subscription_id=sub.id, metric_code="calls",
                                    quantity="1")
        req.occurred_at.CopyFrom(sub.start_at)
        req.occurred_at.seconds += 5
        resp = await p("RecordUsage", req, allowed=("OK",))
        assert resp.duplicate is False


async def record_usage_batch(p: Probe):
    # A batch of events for A's subscriptions: each refused as unknown, nothing stored; the
    # answer names only what B sent (so it is read here, not through the leak check).
    subs = list(p.a.subs.values())
    events = []
    for i, sub in enumerate(subs):
        e = pb.UsageEventInput(event_id=f"b-probe-{rid()}", subscription_id=sub.id, metric_code="calls", quantity="1")
        e.occurred_at.CopyFrom(sub.start_at)
        e.occurred_at.seconds += 5 + i
        events.append(e)
    resp = await p.stub.RecordUsageBatch(pb.RecordUsageBatchRequest(request_id=rid(), events=events),
                                         metadata=p.b.md)
    p.outcomes.append("OK")
    assert (resp.recorded, resp.rejected) == (0, len(events))
    assert {o.error.code for o in resp.outcomes} == {5}  # NOT_FOUND, as RecordUsage answers
    for o in resp.outcomes:
        assert not {s.customer_id for s in subs} & set(str(o).split()), "a customer of A in B's answer"


async def preview_invoice(p: Probe):
    for sub in p.a.subs.values():
        await p("PreviewInvoice", pb.PreviewInvoiceRequest(subscription_id=sub.id))


async def get_usage(p: Probe):
    for sub in p.a.subs.values():
        await p("GetUsage", pb.GetUsageRequest(subscription_id=sub.id, series=pb.SERIES_GRANULARITY_HOUR))


async def run_billing(p: Probe):
    # A's request: same request_id and idempotency key; B gets a run of its own.
    for resp in await p.replay_a("RunBilling", allowed=("OK",)):
        assert resp.run.id != p.a.runs["first"].id and resp.run.id not in p.a.ids()


async def get_billing_run(p: Probe):
    for run in p.a.runs.values():
        await p("GetBillingRun", pb.GetBillingRunRequest(id=run.id))


async def list_billing_runs(p: Probe):
    resp = await p("ListBillingRuns", pb.ListBillingRunsRequest(page_size=500), allowed=("OK",))
    assert {r.id for r in p.b.runs.values()} <= {r.id for r in resp.runs}


CASES = {
    "CreatePlan": create_plan, "GetPlan": get_plan, "ListPlans": list_plans, "ArchivePlan": archive_plan,
    "CreateSubscription": create_subscription, "GetSubscription": get_subscription,
    "ListSubscriptions": list_subscriptions,
    "ActivateSubscription": _lifecycle("ActivateSubscription", pb.ActivateSubscriptionRequest),
    "PauseSubscription": _lifecycle("PauseSubscription", pb.PauseSubscriptionRequest),
    "ResumeSubscription": _lifecycle("ResumeSubscription", pb.ResumeSubscriptionRequest),
    "CancelSubscription": _lifecycle("CancelSubscription", pb.CancelSubscriptionRequest,
                                     mode=pb.CANCEL_MODE_IMMEDIATELY),
    "ChangePlan": change_plan, "RecordUsage": record_usage, "RecordUsageBatch": record_usage_batch,
    "PreviewInvoice": preview_invoice, "GetUsage": get_usage, "RunBilling": run_billing,
    "GetBillingRun": get_billing_run, "ListBillingRuns": list_billing_runs,
    **MORE_CASES,
}


def test_every_rpc_has_a_case():
    assert set(CASES) == set(METHODS), "an RPC without an isolation case (or a case without an RPC)"


@pytest.mark.parametrize("method", METHODS)
async def test_tenant_b_never_reaches_tenant_a(stub, admin_conn, ab, method):
    a, b = ab
    before = await snapshot(admin_conn, a.tenant.id)
    probe = Probe(stub, a, b)
    await CASES[method](probe)
    assert probe.outcomes, "the case made no call"
    for outcome in probe.outcomes:
        TALLY[("matrix", method)][outcome] += 1
    assert await snapshot(admin_conn, a.tenant.id) == before, f"{method} by tenant B changed tenant A's rows"


def _empty_request(method: str):
    from google.protobuf import message_factory

    return message_factory.GetMessageClass(SERVICE.methods_by_name[method].input_type)()


async def test_revoked_key_is_refused_at_once_on_every_rpc(stub, admin_conn):
    """Revocation takes effect on the very next call that touches tenant data, and on every
    RPC once the process has heard of it (docs/api.md, Authentication: a malformed request is
    refused before any database access, by the key cache); the tenant's other key goes on
    working."""
    from billing.services.tenants import create_tenant, issue_key, revoke_key

    t = await create_tenant(admin_conn, "matrix-revoked")
    _, other_key = await issue_key(admin_conn, t.tenant_id)
    md = (("authorization", f"Bearer {t.api_key}"),)
    plan = (await stub.CreatePlan(plan_request(usage_charges=[]), metadata=md)).plan
    assert await revoke_key(admin_conn, t.api_key_id)
    requests = {m: _empty_request(m) for m in METHODS}
    requests["GetPlan"] = pb.GetPlanRequest(id=plan.id)
    requests["ArchivePlan"] = pb.ArchivePlanRequest(request_id=rid(), id=plan.id)
    for method in ("GetPlan", "ArchivePlan"):  # they read or write: refused at once
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await getattr(stub, method)(requests[method], metadata=md)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, method
    deadline = asyncio.get_running_loop().time() + 5  # the notification: milliseconds
    while True:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.CreatePlan(pb.CreatePlanRequest(), metadata=md)
        if err.value.code() == grpc.StatusCode.UNAUTHENTICATED:
            break
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert asyncio.get_running_loop().time() < deadline, "the revocation never reached the key cache"
        await asyncio.sleep(0.01)
    for method in METHODS:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await getattr(stub, method)(requests[method], metadata=md)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, method
    assert (await admin_conn.fetchval("select status from plans where id = $1", uuid.UUID(plan.id))) == "active"
    other = (("authorization", f"Bearer {other_key}"),)
    assert (await stub.GetPlan(pb.GetPlanRequest(id=plan.id), metadata=other)).plan.id == plan.id
