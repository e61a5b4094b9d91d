"""A tenant with one of everything the API knows, built through the API itself: plans
(active, archived, another currency, with a trial), subscriptions in every state, usage,
a billing run. The fuzzers and the isolation matrix aim at these ids."""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import timedelta, timezone

import asyncpg

from billing.v1 import billing_pb2 as pb
from tests.integration.test_plans_api import plan_request

TABLES = ("plans", "subscriptions", "audit_events", "idempotency_keys", "outbox", "usage_events", "usage_totals",
          "billing_runs", "billed_periods", "discounts", "credit_grants", "credit_entries", "test_clocks",
          "usage_thresholds", "usage_threshold_crossings", "progressive_invoices")


def rid() -> str:
    return str(uuid.uuid4())


def charges() -> list[pb.UsageCharge]:
    return [
        pb.UsageCharge(metric_code="calls", aggregation=pb.AGGREGATION_SUM, pricing_model=pb.PRICING_MODEL_PER_UNIT,
                       unit_price="0.01"),
        pb.UsageCharge(metric_code="seats", aggregation=pb.AGGREGATION_UNIQUE_COUNT,
                       pricing_model=pb.PRICING_MODEL_PER_UNIT, unit_price="5", unique_property="user"),
        pb.UsageCharge(metric_code="storage", aggregation=pb.AGGREGATION_MAX, pricing_model=pb.PRICING_MODEL_GRADUATED,
                       tiers=[pb.Tier(up_to="10", unit_price="0"), pb.Tier(up_to="", unit_price="0.5",
                                                                          flat_fee="1.00")]),
    ]


@dataclass(repr=False)
class World:
    tenant: object  # tests.conftest.Tenant
    plans: dict[str, pb.Plan] = field(default_factory=dict)
    subs: dict[str, pb.Subscription] = field(default_factory=dict)
    runs: dict[str, pb.BillingRun] = field(default_factory=dict)
    discounts: dict[str, pb.Discount] = field(default_factory=dict)
    grants: dict[str, pb.CreditGrant] = field(default_factory=dict)
    clocks: dict[str, pb.TestClock] = field(default_factory=dict)
    thresholds: dict[str, pb.Threshold] = field(default_factory=dict)
    request_ids: list[str] = field(default_factory=list)  # ids of requests that succeeded
    event_ids: list[str] = field(default_factory=list)
    requests: dict[str, list] = field(default_factory=dict)  # method name -> requests sent, in order

    def __repr__(self) -> str:
        return f"World(tenant={self.tenant.id})"

    @property
    def md(self):
        return self.tenant.md

    def ids(self) -> list[str]:
        return ([p.id for p in self.plans.values()] + [s.id for s in self.subs.values()]
                + [r.id for r in self.runs.values()] + [d.id for d in self.discounts.values()]
                + [g.id for g in self.grants.values()] + [c.id for c in self.clocks.values()]
                + [t.id for t in self.thresholds.values()])

    def codes(self) -> list[str]:
        return [p.code for p in self.plans.values()]


async def build_world(stub, tenant, tag: str = "w") -> World:
    w = World(tenant)

    async def call(method, req):
        if hasattr(req, "request_id"):
            w.request_ids.append(req.request_id)
        w.requests.setdefault(type(req).__name__.removesuffix("Request"), []).append(req)
        return await method(req, metadata=tenant.md)

    async def plan(key, **kw):
        kw.setdefault("usage_charges", charges())
        kw.setdefault("trial_days", 0)
        req = plan_request(code=f"{tag}-{key}-{uuid.uuid4().hex[:6]}", **kw)
        w.plans[key] = (await call(stub.CreatePlan, req)).plan

    await plan("main", base_fee="10.00", features=[
        pb.Feature(code="sso", kind=pb.FEATURE_KIND_BOOLEAN),
        pb.Feature(code="calls-quota", kind=pb.FEATURE_KIND_METERED, metric_code="calls", limit="1000")])
    await plan("upgrade", base_fee="99.00")
    await plan("usd", currency="USD")
    await plan("trial", trial_days=14)
    await plan("weekly", interval=pb.INTERVAL_UNIT_WEEK, base_fee="5.00")
    await plan("archived")
    w.plans["archived"] = (await call(stub.ArchivePlan, pb.ArchivePlanRequest(
        request_id=rid(), id=w.plans["archived"].id))).plan

    async def sub(key, plan_key="main", activate=True, **kw):
        req = pb.CreateSubscriptionRequest(request_id=rid(), customer_id=f"cust-{tag}-{key}",
                                           plan_id=w.plans[plan_key].id, activate=activate, **kw)
        w.subs[key] = (await call(stub.CreateSubscription, req)).subscription

    await sub("pending", activate=False)
    await sub("trialing", plan_key="trial")
    await sub("active")
    await sub("active2")
    await sub("paused")
    w.subs["paused"] = (await call(stub.PauseSubscription, pb.PauseSubscriptionRequest(
        request_id=rid(), id=w.subs["paused"].id))).subscription
    await sub("activated", activate=False)
    w.subs["activated"] = (await call(stub.ActivateSubscription, pb.ActivateSubscriptionRequest(
        request_id=rid(), id=w.subs["activated"].id))).subscription
    await sub("resumed")
    await call(stub.PauseSubscription, pb.PauseSubscriptionRequest(request_id=rid(), id=w.subs["resumed"].id))
    w.subs["resumed"] = (await call(stub.ResumeSubscription, pb.ResumeSubscriptionRequest(
        request_id=rid(), id=w.subs["resumed"].id))).subscription
    await sub("canceled")
    w.subs["canceled"] = (await call(stub.CancelSubscription, pb.CancelSubscriptionRequest(
        request_id=rid(), id=w.subs["canceled"].id, mode=pb.CANCEL_MODE_IMMEDIATELY))).subscription
    await sub("pending_change", plan_key="upgrade")
    w.subs["pending_change"] = (await call(stub.ChangePlan, pb.ChangePlanRequest(
        request_id=rid(), id=w.subs["pending_change"].id, new_plan_id=w.plans["main"].id,
        timing=pb.CHANGE_TIMING_AT_PERIOD_END))).subscription

    w.discounts["active"] = (await call(stub.CreateDiscount, pb.CreateDiscountRequest(
        request_id=rid(), subscription_id=w.subs["active"].id, kind=pb.DISCOUNT_KIND_PERCENTAGE, value="10",
        periods=2))).discount
    w.discounts["deleted"] = (await call(stub.CreateDiscount, pb.CreateDiscountRequest(
        request_id=rid(), subscription_id=w.subs["active2"].id, kind=pb.DISCOUNT_KIND_FIXED_AMOUNT, value="1.00",
        applies_to=["base_fee"]))).discount
    w.discounts["deleted"] = (await call(stub.DeleteDiscount, pb.DeleteDiscountRequest(
        request_id=rid(), id=w.discounts["deleted"].id))).discount

    # Crossed by the usage below (1 + 2 + 3 calls): A has crossings, alerts in its outbox and
    # (the plan's amount threshold, 0.06 at 0.01 a call) a threshold invoice.
    w.thresholds["active"] = (await call(stub.CreateThreshold, pb.CreateThresholdRequest(
        request_id=rid(), subscription_id=w.subs["active"].id, metric_code="calls", value="5"))).threshold
    w.thresholds["plan"] = (await call(stub.CreateThreshold, pb.CreateThresholdRequest(
        request_id=rid(), plan_id=w.plans["main"].id, measure="amount", value="0.05",
        invoice_on_cross=True))).threshold
    w.thresholds["deleted"] = (await call(stub.CreateThreshold, pb.CreateThresholdRequest(
        request_id=rid(), subscription_id=w.subs["active2"].id, metric_code="calls", value="1", once=True))).threshold
    w.thresholds["deleted"] = (await call(stub.DeleteThreshold, pb.DeleteThresholdRequest(
        request_id=rid(), id=w.thresholds["deleted"].id))).threshold

    start = w.subs["active"].start_at.ToDatetime(timezone.utc)
    for i in range(3):
        req = pb.RecordUsageRequest(request_id=rid(), subscription_id=w.subs["active"].id, metric_code="calls",
                                    quantity=str(i + 1), properties={"user": f"u{i}"})
        req.occurred_at.FromDatetime(start + timedelta(microseconds=i))
        w.event_ids.append((await call(stub.RecordUsage, req)).event_id)

    w.grants["subscription"] = (await call(stub.CreateCreditGrant, pb.CreateCreditGrantRequest(
        request_id=rid(), subscription_id=w.subs["active"].id, amount="5.00", priority=1))).grant
    w.grants["customer"] = (await call(stub.CreateCreditGrant, pb.CreateCreditGrantRequest(
        request_id=rid(), customer_id=w.subs["active2"].customer_id, currency="EUR", amount="7.00"))).grant

    req = pb.RunBillingRequest(request_id=rid(), idempotency_key=f"{tag}-run-{uuid.uuid4().hex[:6]}")
    w.runs["first"] = (await call(stub.RunBilling, req)).run

    # A test clock with a subscription on it, and an advance (it stays ADVANCING unless a
    # billing role runs: either way it is the tenant's).
    clock_at = start - timedelta(days=400)
    req = pb.CreateTestClockRequest(request_id=rid(), name=f"{tag}-clock")
    req.frozen_time.FromDatetime(clock_at)
    w.clocks["clock"] = (await call(stub.CreateTestClock, req)).test_clock
    await sub("on_clock", test_clock_id=w.clocks["clock"].id)
    req = pb.AdvanceTestClockRequest(request_id=rid(), id=w.clocks["clock"].id)
    req.frozen_time.FromDatetime(clock_at + timedelta(days=40))
    w.clocks["clock"] = (await call(stub.AdvanceTestClock, req)).test_clock
    return w


# Rows are only ever appended to these (a refused request rolls back, so a count is enough);
# the others can be updated in place, so their rows are digested too.
APPEND_ONLY = {"audit_events", "idempotency_keys", "outbox", "usage_events", "billed_periods", "credit_entries"}


async def snapshot(admin: asyncpg.Connection, tenant_id: str) -> dict[str, tuple]:
    """Row count (and for updatable tables a digest of the rows) of every tenant table, for one tenant."""
    parts = ", ".join(
        (f"(select count(*)::text from {table} t where t.tenant_id = $1) as {table}" if table in APPEND_ONLY else
         f"(select row(count(*), coalesce(md5(string_agg(t::text, '|' order by t::text)), ''))::text "
         f"from {table} t where t.tenant_id = $1) as {table}") for table in TABLES)
    row = await admin.fetchrow(f"select {parts}", uuid.UUID(tenant_id))
    return dict(row)
