"""The tenant isolation matrix (test_tenant_matrix.py): the probe tenant B calls with, and the
cases of discounts, credit grants, test clocks, entitlements and thresholds."""
from __future__ import annotations

import uuid

import grpc

from billing.v1 import billing_pb2 as pb
from tests.abuse.world import World, rid


def secrets_of(w: World) -> list[str]:
    """What B must never see: A's ids, customer ids and the tenant id itself."""
    return w.ids() + [s.customer_id for s in w.subs.values()] + [w.tenant.id]


class Probe:
    def __init__(self, stub, a: World, b: World):
        self.stub, self.a, self.b = stub, a, b
        self.outcomes: list[str] = []

    async def __call__(self, method: str, request, *, allowed=("NOT_FOUND",)):
        """B's call; returns the response (None when refused) after checking it leaks nothing of A."""
        try:
            response = await getattr(self.stub, method)(request, metadata=self.b.md)
        except grpc.aio.AioRpcError as err:
            self.outcomes.append(err.code().name)
            assert err.code().name in allowed, f"{method}: {err.code().name} {err.details()}"
            for secret in [s.customer_id for s in self.a.subs.values()]:
                assert secret not in err.details()
            return None
        self.outcomes.append("OK")
        assert "OK" in allowed, f"{method} answered OK to tenant B: {response}"
        text = str(response)
        leaked = [s for s in secrets_of(self.a) if s in text]
        assert not leaked, f"{method} showed tenant B data of tenant A: {leaked}"
        return response

    async def replay_a(self, method: str, *, allowed=("NOT_FOUND",)):
        """Each request A sent with this method, sent again as B (same request_id and body)."""
        sent = self.a.requests.get(method, [])
        assert sent, f"the world made no {method} request to replay"
        return [await self(method, req, allowed=allowed) for req in sent]


async def create_discount(p: Probe):
    await p.replay_a("CreateDiscount")
    for sub in p.a.subs.values():
        await p("CreateDiscount", pb.CreateDiscountRequest(request_id=str(uuid.uuid4()), subscription_id=sub.id,
                                                           kind=pb.DISCOUNT_KIND_PERCENTAGE, value="100"))


async def list_discounts(p: Probe):
    for sub in p.a.subs.values():
        await p("ListDiscounts", pb.ListDiscountsRequest(subscription_id=sub.id, include_deleted=True))


async def delete_discount(p: Probe):
    await p.replay_a("DeleteDiscount")
    for d in p.a.discounts.values():
        await p("DeleteDiscount", pb.DeleteDiscountRequest(request_id=str(uuid.uuid4()), id=d.id))


async def create_credit_grant(p: Probe):
    # A's request to A's subscription: not found for B, and A's outcome is not handed out;
    # A's request_id for B's own customer: B's own new grant.
    a_reqs = p.a.requests["CreateCreditGrant"]
    for req in a_reqs:
        if req.subscription_id:
            await p("CreateCreditGrant", req)
    resp = await p("CreateCreditGrant", pb.CreateCreditGrantRequest(
        request_id=a_reqs[-1].request_id, customer_id="b-own", currency="EUR", amount="7.00"), allowed=("OK",))
    assert resp.grant.id not in p.a.ids()
    for sub in p.a.subs.values():
        await p("CreateCreditGrant", pb.CreateCreditGrantRequest(request_id=rid(), subscription_id=sub.id,
                                                                 amount="1.00"))


async def list_credit_grants(p: Probe):
    mine = {g.id for g in p.b.grants.values()}
    resp = await p("ListCreditGrants", pb.ListCreditGrantsRequest(page_size=500), allowed=("OK",))
    assert mine <= {g.id for g in resp.grants}
    for sub in p.a.subs.values():
        resp = await p("ListCreditGrants", pb.ListCreditGrantsRequest(subscription_id=sub.id), allowed=("OK",))
        assert list(resp.grants) == []
        resp = await p("ListCreditGrants", pb.ListCreditGrantsRequest(customer_id=sub.customer_id), allowed=("OK",))
        assert list(resp.grants) == []


async def void_credit_grant(p: Probe):
    for grant in p.a.grants.values():
        await p("VoidCreditGrant", pb.VoidCreditGrantRequest(request_id=rid(), id=grant.id))


async def create_test_clock(p: Probe):
    # A's exact request: B gets a clock of its own, never A's stored outcome.
    for resp in await p.replay_a("CreateTestClock", allowed=("OK",)):
        assert resp.test_clock.id not in p.a.ids()


async def get_test_clock(p: Probe):
    for clock in p.a.clocks.values():
        await p("GetTestClock", pb.GetTestClockRequest(id=clock.id))


async def list_test_clocks(p: Probe):
    resp = await p("ListTestClocks", pb.ListTestClocksRequest(page_size=500), allowed=("OK",))
    assert {c.id for c in p.b.clocks.values()} <= {c.id for c in resp.test_clocks}


async def advance_test_clock(p: Probe):
    await p.replay_a("AdvanceTestClock")
    for clock in p.a.clocks.values():
        req = pb.AdvanceTestClockRequest(request_id=rid(), id=clock.id)
        req.frozen_time.CopyFrom(clock.advance_to)
        req.frozen_time.seconds += 86_400
        await p("AdvanceTestClock", req)


async def delete_test_clock(p: Probe):
    for clock in p.a.clocks.values():
        await p("DeleteTestClock", pb.DeleteTestClockRequest(request_id=rid(), id=clock.id))


async def check_entitlement(p: Probe):
    # A's subscriptions, with a feature code of A's plan: not found for B.
    for sub in p.a.subs.values():
        await p("CheckEntitlement", pb.CheckEntitlementRequest(subscription_id=sub.id, feature_code="sso"))
    own = p.b.subs["active"]
    resp = await p("CheckEntitlement", pb.CheckEntitlementRequest(subscription_id=own.id, feature_code="sso"),
                   allowed=("OK",))
    assert resp.entitlement.feature_code == "sso" and resp.entitlement.allowed


async def list_entitlements(p: Probe):
    for sub in p.a.subs.values():
        await p("ListEntitlements", pb.ListEntitlementsRequest(subscription_id=sub.id))
    resp = await p("ListEntitlements", pb.ListEntitlementsRequest(subscription_id=p.b.subs["active"].id),
                   allowed=("OK",))
    assert [e.feature_code for e in resp.entitlements] == ["sso", "calls-quota"]


async def create_threshold(p: Probe):
    await p.replay_a("CreateThreshold")
    for sub in p.a.subs.values():
        await p("CreateThreshold", pb.CreateThresholdRequest(request_id=rid(), subscription_id=sub.id,
                                                             metric_code="calls", value="1"))
        await p("CreateThreshold", pb.CreateThresholdRequest(request_id=rid(), subscription_id=sub.id,
                                                             measure="amount", value="1", invoice_on_cross=True))
    for plan in p.a.plans.values():  # a plan-level threshold on A's plan
        await p("CreateThreshold", pb.CreateThresholdRequest(request_id=rid(), plan_id=plan.id,
                                                             metric_code="calls", value="1"))


async def list_thresholds(p: Probe):
    for sub in p.a.subs.values():
        await p("ListThresholds", pb.ListThresholdsRequest(subscription_id=sub.id, include_deleted=True))
    resp = await p("ListThresholds", pb.ListThresholdsRequest(subscription_id=p.b.subs["active"].id),
                   allowed=("OK",))
    assert [t.id for t in resp.thresholds] == [p.b.thresholds["active"].id]
    for plan in p.a.plans.values():
        await p("ListThresholds", pb.ListThresholdsRequest(plan_id=plan.id, include_deleted=True))
    resp = await p("ListThresholds", pb.ListThresholdsRequest(plan_id=p.b.plans["main"].id), allowed=("OK",))
    assert [t.id for t in resp.thresholds] == [p.b.thresholds["plan"].id]


async def delete_threshold(p: Probe):
    await p.replay_a("DeleteThreshold")
    for t in p.a.thresholds.values():
        await p("DeleteThreshold", pb.DeleteThresholdRequest(request_id=rid(), id=t.id))


MORE_CASES = {
    "CreateDiscount": create_discount, "ListDiscounts": list_discounts, "DeleteDiscount": delete_discount,
    "CreateCreditGrant": create_credit_grant, "ListCreditGrants": list_credit_grants,
    "VoidCreditGrant": void_credit_grant,
    "CreateTestClock": create_test_clock, "GetTestClock": get_test_clock, "ListTestClocks": list_test_clocks,
    "AdvanceTestClock": advance_test_clock, "DeleteTestClock": delete_test_clock,
    "CheckEntitlement": check_entitlement, "ListEntitlements": list_entitlements,
    "CreateThreshold": create_threshold, "ListThresholds": list_thresholds, "DeleteThreshold": delete_threshold,
}
