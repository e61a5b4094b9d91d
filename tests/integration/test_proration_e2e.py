"""End to end: a mid-cycle upgrade over gRPC, then a billing run through Kafka; the invoice
request on the invoice-requests topic carries the proration lines and the right total."""
from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal as D
from fractions import Fraction

import pytest

from billing.domain.proration import prorated_amount
from billing.v1 import billing_pb2 as pb
from tests.integration.test_billing_runs import _completed, _read_invoices, _time
from tests.integration.test_plans_api import plan_request
from tests.integration.test_subscriptions_api import rid, ts
from tests.kafka_helpers import running_roles

UTC = timezone.utc


@pytest.fixture(scope="module")
async def kafka_roles(migrated):
    async with running_roles(migrated, ("billing", "relay")) as svc:
        yield svc


async def _daily(stub, tenant, fee: str) -> pb.Plan:
    req = plan_request(base_fee=fee, trial_days=0, interval=pb.INTERVAL_UNIT_DAY,
                       billing_timing=pb.BILLING_TIMING_IN_ADVANCE, usage_charges=[])
    return (await stub.CreatePlan(req, metadata=tenant.md)).plan


async def _run(stub, tenant, as_of: datetime) -> pb.BillingRun:
    run = (await stub.RunBilling(pb.RunBillingRequest(request_id=rid(), as_of=ts(as_of)), metadata=tenant.md)).run
    return await _completed(stub, tenant, run.id)


async def test_mid_cycle_upgrade_then_billing_run_invoices_the_proration(kafka_roles, migrated, stub, tenant,
                                                                        admin_conn):
    basic, pro = await _daily(stub, tenant, "864.00"), await _daily(stub, tenant, "1728.00")
    # Periods of one day; the second ends three minutes from now.
    start = datetime.now(UTC) - timedelta(days=2) + timedelta(minutes=3)
    sub = (await stub.CreateSubscription(pb.CreateSubscriptionRequest(
        request_id=rid(), customer_id="cust-e2e", plan_id=basic.id, activate=True, start_at=ts(start)),
        metadata=tenant.md)).subscription
    # Run 1 bills the first period and charges the second in advance at 864.00.
    first = await _run(stub, tenant, datetime.now(UTC))
    assert [(t.currency, t.amount) for t in first.totals] == [("EUR", "1728.00")]
    view = (await stub.GetSubscription(pb.GetSubscriptionRequest(id=sub.id), metadata=tenant.md)).subscription
    p_start, p_end = view.current_period_start.ToDatetime(UTC), view.current_period_end.ToDatetime(UTC)
    assert p_start < datetime.now(UTC) < p_end

    # The upgrade, now: unused time of basic credited, remaining time of pro charged, to the second.
    before = datetime.now(UTC)
    changed = (await stub.ChangePlan(pb.ChangePlanRequest(request_id=rid(), id=sub.id, new_plan_id=pro.id),
                                     metadata=tenant.md)).subscription
    after = datetime.now(UTC)
    assert changed.plan_id == pro.id
    t = await admin_conn.fetchval(
        "select period_start from pending_lines where subscription_id = $1 and kind = 'proration_credit'",
        uuid.UUID(sub.id))
    assert before - timedelta(seconds=1) <= t <= after
    left = Fraction((p_end - t) // timedelta(seconds=1), 86_400)
    credit, charge = -prorated_amount(D("864.00"), left, "EUR"), prorated_amount(D("1728.00"), left, "EUR")
    assert credit < 0 < charge

    # Run 2 closes the period: next day at the new price, plus the proration lines.
    second = await _run(stub, tenant, p_end + timedelta(seconds=30))
    assert (second.subscriptions_billed, second.subscriptions_failed) == (1, 0)
    total = D("1728.00") + credit + charge
    assert [(tc.currency, D(tc.amount)) for tc in second.totals] == [("EUR", total)]

    found = await asyncio.to_thread(_read_invoices, migrated, sub.id, 2)
    inv = [d for _, d in found if _time(d["period_start_us"]) == p_start]
    assert len(inv) == 1
    inv = inv[0]
    lines = [(ln["kind"], D(ln["amount"]), ln["fraction"], _time(ln["period_start_us"]), _time(ln["period_end_us"]))
             for ln in inv["lines"]]
    frac = f"{left.numerator}/{left.denominator}"
    assert ("proration_credit", credit, frac, t, p_end) in lines
    assert ("proration_charge", charge, frac, t, p_end) in lines
    assert ("base_fee", D("1728.00"), None, p_end, p_end + timedelta(days=1)) in lines
    assert len(lines) == 3
    assert D(inv["total"]) == D(inv["subtotal"]) == total == sum(line[1] for line in lines)
    # The pending lines are billed by this very request.
    billed = await admin_conn.fetch("select invoice_request_id from pending_lines where subscription_id = $1",
                                    uuid.UUID(sub.id))
    assert {str(r["invoice_request_id"]) for r in billed} == {inv["invoice_request_id"]}


async def test_immediate_cancel_sends_the_final_invoice_request(kafka_roles, migrated, stub, tenant, admin_conn):
    # In arrears, 864.00 a day, started 6 hours ago, canceled now: a quarter day used (to the second).
    req = plan_request(base_fee="864.00", trial_days=0, interval=pb.INTERVAL_UNIT_DAY,
                       billing_timing=pb.BILLING_TIMING_IN_ARREARS, usage_charges=[])
    spec = (await stub.CreatePlan(req, metadata=tenant.md)).plan
    start = datetime.now(UTC) - timedelta(hours=6)
    sub = (await stub.CreateSubscription(pb.CreateSubscriptionRequest(
        request_id=rid(), customer_id="cust-end", plan_id=spec.id, activate=True, start_at=ts(start)),
        metadata=tenant.md)).subscription
    p_start = sub.current_period_start.ToDatetime(UTC)
    await stub.CancelSubscription(pb.CancelSubscriptionRequest(
        request_id=rid(), id=sub.id, mode=pb.CANCEL_MODE_IMMEDIATELY), metadata=tenant.md)
    t = await admin_conn.fetchval("select period_end from pending_lines where subscription_id = $1",
                                  uuid.UUID(sub.id))
    used = Fraction((t - p_start) // timedelta(seconds=1), 86_400)
    assert Fraction(6 * 3600 - 5, 86_400) <= used <= Fraction(6 * 3600 + 60, 86_400)
    [(_, inv)] = await asyncio.to_thread(_read_invoices, migrated, sub.id, 1)
    assert inv["run_id"] == str(uuid.UUID(int=0)) and inv["customer_id"] == "cust-end"
    assert [(ln["kind"], D(ln["amount"]), ln["fraction"]) for ln in inv["lines"]] == [
        ("proration_charge", prorated_amount(D("864.00"), used, "EUR"), f"{used.numerator}/{used.denominator}")]
    assert D(inv["total"]) == prorated_amount(D("864.00"), used, "EUR")
