"""Differential: a year on a test clock against a year in real time.

The same plans (in advance with usage, in arrears with a trial, in arrears with an anchor),
subscriptions and usage, in two tenants: once on a test clock advanced month by month
(AdvanceTestClock, usage by RecordUsage at clock time), once as real-time subscriptions
started a year ago, billed by runs with `as_of` at the same instants (RunBilling), their
usage recorded by the same service function with an age limit that reaches a year back.
The invoice requests on the topic are identical apart from ids, the issue time and the
test-clock mark. Both sides run at once (two tenants), so the year takes a few seconds.

Lifecycle changes are not part of it: a real-time subscription cannot change at a past
time, which is what test clocks are for (test_test_clock_billing replays a change).
"""
from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from billing import codec
from billing.domain.periods import add_interval
from billing.services.context import Caller
from billing.services.plans import PlanCache
from billing.services.usage import Usage, UsageLimits
from billing.v1 import billing_pb2 as pb
from tests.integration.test_billing_runs import _completed
from tests.integration.test_subscriptions_api import rid, ts
from tests.integration.test_test_clock_billing import advanced
from tests.integration.test_test_clocks import make_clock, monthly_plan
from tests.kafka_helpers import TopicReader, running_roles

UTC = timezone.utc
MONTHS = 12
# Fields that name the request, the tenant, the subscription and the run, when it was
# issued (the clock's time or the wall clock's) and the clock: all else must be equal.
_IGNORED = ("invoice_request_id", "tenant_id", "subscription_id", "run_id", "issued_at_us", "test_clock_id")


@pytest.fixture(scope="module")
async def kafka_roles(migrated):
    async with running_roles(migrated, ("billing", "relay")) as svc:
        yield svc


def _month(t0: datetime, k: int) -> datetime:
    return add_interval(t0, "month", 1, k)


async def _setup(stub, tenant, t0: datetime, clock_id: str = "") -> list[pb.Subscription]:
    """Three plans with the same codes in each tenant, and one subscription of each from t0."""
    p1 = await monthly_plan(stub, tenant, "20.00", code="adv")
    p2 = await monthly_plan(stub, tenant, "15.00", timing=pb.BILLING_TIMING_IN_ARREARS, code="arr",
                            trial_days=14)
    p3 = await monthly_plan(stub, tenant, "9.00", timing=pb.BILLING_TIMING_IN_ARREARS, code="anc",
                            usage=False)
    subs = []
    for customer, plan, anchor in (("c1", p1, None), ("c2", p2, None), ("c3", p3, t0 + timedelta(days=5))):
        req = pb.CreateSubscriptionRequest(request_id=rid(), customer_id=customer, plan_id=plan.id, activate=True,
                                           start_at=ts(t0), test_clock_id=clock_id, metadata={"side": "same"})
        if anchor is not None:
            req.billing_anchor.CopyFrom(ts(anchor))
        subs.append((await stub.CreateSubscription(req, metadata=tenant.md)).subscription)
    return subs


def _events(t0: datetime, k: int, subs) -> list[tuple[str, str, datetime]]:
    """The usage of month k: (subscription id, quantity, when)."""
    at = _month(t0, k) + timedelta(hours=6)
    return [(subs[0].id, str(100 * (k + 1)), at), (subs[1].id, str(7 * (k + 1)), at)]


async def _clock_year(stub, tenant, t0: datetime) -> tuple[str, list]:
    clock = await make_clock(stub, tenant, t0 + timedelta(hours=12), "a year")
    subs = await _setup(stub, tenant, t0, clock.id)
    for k in range(MONTHS):
        if k:
            await advanced(stub, tenant, clock.id, _month(t0, k) + timedelta(hours=12))
        for sub_id, quantity, at in _events(t0, k, subs):
            await stub.RecordUsage(pb.RecordUsageRequest(request_id=rid(), subscription_id=sub_id,
                                                         metric_code="api_calls", quantity=quantity,
                                                         occurred_at=ts(at)), metadata=tenant.md)
    await advanced(stub, tenant, clock.id, _month(t0, MONTHS))
    return clock.id, subs


async def _real_year(service, stub, tenant, t0: datetime) -> list:
    subs = await _setup(stub, tenant, t0)
    # RecordUsage's own function, with an age limit reaching back a year (the default is 35 days).
    usage = Usage(UsageLimits(max_age_us=400 * 86_400 * 1_000_000), PlanCache())
    caller = Caller(uuid.UUID(tenant.id), "test")
    for k in range(MONTHS):
        for sub_id, quantity, at in _events(t0, k, subs):
            await usage.record(service.db, caller, request_id=rid(), event_id="", subscription_id=sub_id,
                               metric_code="api_calls", quantity=quantity, occurred_at=at, properties={})
    for k in range(1, MONTHS + 1):
        as_of = _month(t0, k) + (timedelta(hours=12) if k < MONTHS else timedelta(0))
        run = (await stub.RunBilling(pb.RunBillingRequest(request_id=rid(), as_of=ts(as_of)),
                                     metadata=tenant.md)).run
        await _completed(stub, tenant, run.id)
    return subs


def _read(settings, wanted: dict[str, int]) -> dict[str, list[tuple[dict, dict]]]:
    """The invoice requests of each subscription id in `wanted`, once that many arrived."""
    reader = TopicReader(settings, settings.topics.invoice_requests)
    found: dict[str, list] = {s: [] for s in wanted}
    seen = 0

    def enough(messages) -> bool:
        nonlocal seen
        for m in messages[seen:]:
            d = codec.decode(codec.Schema.INVOICE_REQUEST, m.value())
            if d["subscription_id"] in found:
                found[d["subscription_id"]].append((d, {k: v.decode() for k, v in m.headers() or []}))
        seen = len(messages)
        return all(len(found[s]) >= n for s, n in wanted.items())
    try:
        reader.until(enough)
    finally:
        reader.close()
    return found


async def test_a_year_on_a_clock_equals_a_year_billed_by_runs(kafka_roles, migrated, service, stub, new_tenant,
                                                             admin_conn):
    on_clock, in_real_time = await new_tenant(), await new_tenant()
    # A year ago and a little, so that the last run's as_of (twelve months on) is not in the future.
    t0 = (datetime.now(UTC) - timedelta(days=366) + timedelta(minutes=3)).replace(microsecond=0)
    (clock_id, clock_subs), real_subs = await asyncio.gather(
        _clock_year(stub, on_clock, t0), _real_year(service, stub, in_real_time, t0))

    wanted = {}
    for sub in clock_subs + real_subs:
        wanted[sub.id] = await admin_conn.fetchval(
            "select count(*) from billed_periods where subscription_id = $1 and invoice_request_id is not null",
            uuid.UUID(sub.id))
    # Twelve closes of the in-advance plan; eleven paid months after the trial; a short first
    # period and eleven full ones of the anchored plan.
    assert [wanted[s.id] for s in clock_subs] == [12, 11, 12]
    found = await asyncio.to_thread(_read, migrated, wanted)

    def normal(subs) -> list[dict]:
        return sorted(({k: v for k, v in d.items() if k not in _IGNORED} for s in subs for d, _ in found[s.id]),
                      key=lambda d: (d["customer_id"], d["period_start_us"]))
    clock_requests, real_requests = normal(clock_subs), normal(real_subs)
    assert len(clock_requests) == 35
    assert clock_requests == real_requests
    usage_lines = [ln for d in clock_requests for ln in d["lines"] if ln["kind"] == "usage"]
    assert len(usage_lines) >= 20  # the usage of every paid month was billed, on both sides alike
    for s in clock_subs:
        assert all(d["test_clock_id"] == clock_id and h["billing-test-clock"] == clock_id for d, h in found[s.id])
    for s in real_subs:
        assert all(d["test_clock_id"] is None and "billing-test-clock" not in h for d, h in found[s.id])
