"""Proration over gRPC against real PostgreSQL: where the lines go (pending_lines, an invoice
request in the outbox, nowhere), with what amounts, and that replays add nothing.

The subscriptions are back-dated, so a change "now" falls in the middle of a period; the
exact second of the call is not known in advance, so each test checks the rule on the line
it got: fraction = seconds left / seconds of the period, amount = price * fraction rounded.
"""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal as D
from fractions import Fraction

import pytest

from billing import codec
from billing.domain.proration import prorated_amount
from billing.v1 import billing_pb2 as pb
from tests.integration.test_billing_scale import _billing_metrics
from tests.integration.test_plans_api import plan_request
from tests.integration.test_subscriptions_api import rid, ts

UTC = timezone.utc


async def _plan(stub, tenant, fee: str, timing=pb.BILLING_TIMING_IN_ADVANCE, interval=pb.INTERVAL_UNIT_MONTH,
                charges=()) -> pb.Plan:
    req = plan_request(base_fee=fee, trial_days=0, billing_timing=timing, interval=interval,
                       usage_charges=list(charges))
    return (await stub.CreatePlan(req, metadata=tenant.md)).plan


async def _sub(stub, tenant, plan, days_ago: float = 10) -> pb.Subscription:
    start = datetime.now(UTC) - timedelta(days=days_ago)
    return (await stub.CreateSubscription(pb.CreateSubscriptionRequest(
        request_id=rid(), customer_id="cust-p", plan_id=plan.id, activate=True, start_at=ts(start)),
        metadata=tenant.md)).subscription


def _period(sub: pb.Subscription) -> tuple[datetime, datetime]:
    return sub.current_period_start.ToDatetime(UTC), sub.current_period_end.ToDatetime(UTC)


async def _opened_by_a_run(admin_conn, tenant, sub: pb.Subscription) -> tuple[datetime, datetime]:
    """Make the current period one a run opened (and so charged in advance): the period before
    it is recorded as billed. Returns the current period."""
    period = _period(sub)
    await admin_conn.execute(
        """insert into billed_periods (tenant_id, subscription_id, period_start, period_end, run_id)
           values ($1, $2, $3, $4, $5)""",
        uuid.UUID(tenant.id), uuid.UUID(sub.id), period[0] - timedelta(days=31), period[0], uuid.uuid4())
    return period


async def _lines(admin_conn, sub_id: str) -> list:
    return await admin_conn.fetch(
        "select * from pending_lines where subscription_id = $1 order by created_at, id", uuid.UUID(sub_id))


async def _invoices(admin_conn, tenant) -> list[dict]:
    rows = await admin_conn.fetch(
        "select key, payload from outbox where tenant_id = $1 and stream = 'invoice_requests' order by id",
        uuid.UUID(tenant.id))
    return [codec.decode(codec.Schema.INVOICE_REQUEST, bytes(r["payload"])) for r in rows]


async def _fee_from(admin_conn, sub_id: str):
    return await admin_conn.fetchval("select period_fee_from from subscriptions where id = $1", uuid.UUID(sub_id))


def _check_rule(row, price: str, period: tuple[datetime, datetime], sign: int, called: tuple[datetime, datetime]):
    """The line follows the rule: [t, end) or [start, t) with t the call's second."""
    start, end = period
    frac = Fraction(row["fraction_num"], row["fraction_den"])
    total = (end - start) // timedelta(seconds=1)
    cut = row["period_start"] if row["period_end"] == end else row["period_end"]
    assert called[0] - timedelta(seconds=1) <= cut <= called[1]
    covered = (row["period_end"] - row["period_start"]) // timedelta(seconds=1)
    assert frac == Fraction(covered, total)
    amount = prorated_amount(D(price), frac, "EUR")
    assert row["amount"] == (-amount if sign < 0 else amount)
    assert row["unit_price"] == D(price) and row["currency"] == "EUR"


async def _change(stub, tenant, sub, plan, **kw) -> tuple[pb.Subscription, tuple[datetime, datetime]]:
    before = datetime.now(UTC)
    req = pb.ChangePlanRequest(request_id=kw.pop("request_id", rid()), id=sub.id, new_plan_id=plan.id, **kw)
    got = (await stub.ChangePlan(req, metadata=tenant.md)).subscription
    return got, (before, datetime.now(UTC))


async def test_upgrade_now_puts_credit_and_charge_on_the_next_invoice(stub, tenant, admin_conn):
    basic, pro = await _plan(stub, tenant, "10.00"), await _plan(stub, tenant, "20.00")
    sub = await _sub(stub, tenant, basic, days_ago=10)
    period = await _opened_by_a_run(admin_conn, tenant, sub)
    request_id = rid()
    changed, called = await _change(stub, tenant, sub, pro, request_id=request_id)  # default: upgrade now
    assert changed.plan_id == pro.id and not changed.HasField("pending_change")
    rows = await _lines(admin_conn, sub.id)
    assert [r["kind"] for r in rows] == ["proration_credit", "proration_charge"]
    _check_rule(rows[0], "10.00", period, -1, called)
    _check_rule(rows[1], "20.00", period, 1, called)
    assert all(r["invoice_request_id"] is None for r in rows)  # waiting for the next invoice
    assert rows[0]["source"] == f"change_plan:{request_id}"
    assert await _fee_from(admin_conn, sub.id) == period[1]
    assert await _invoices(admin_conn, tenant) == []
    # A replay returns the first outcome and adds nothing.
    again, _ = await _change(stub, tenant, sub, pro, request_id=request_id)
    assert again == changed and len(await _lines(admin_conn, sub.id)) == 2
    # History tells what was prorated.
    view = (await stub.GetSubscription(pb.GetSubscriptionRequest(id=sub.id, include_history=True),
                                       metadata=tenant.md)).subscription
    details = dict(view.history[-1].details)
    assert details["proration_lines"] == "2" and details["proration_behavior"] == "next_invoice"
    assert D(details["proration_total"]) == rows[0]["amount"] + rows[1]["amount"]


async def test_first_period_not_charged_yet_settles_used_time(stub, tenant, admin_conn):
    # No run opened the first period (it is charged at its close): the old plan's used part is
    # charged, the new plan's rest too, and the close charges nothing more for the period.
    basic, pro = await _plan(stub, tenant, "10.00"), await _plan(stub, tenant, "20.00")
    sub = await _sub(stub, tenant, basic, days_ago=10)
    period = _period(sub)
    _, called = await _change(stub, tenant, sub, pro)
    rows = await _lines(admin_conn, sub.id)
    assert [r["kind"] for r in rows] == ["proration_charge", "proration_charge"]
    assert (rows[0]["period_start"], rows[1]["period_end"]) == (period[0], period[1])
    _check_rule(rows[0], "10.00", period, 1, called)
    _check_rule(rows[1], "20.00", period, 1, called)


async def test_invoice_now_writes_an_invoice_request_at_once(stub, tenant, admin_conn):
    basic, pro = await _plan(stub, tenant, "10.00"), await _plan(stub, tenant, "20.00")
    sub = await _sub(stub, tenant, basic, days_ago=10)
    request_id = rid()
    await _change(stub, tenant, sub, pro, request_id=request_id,
                  proration_behavior=pb.PRORATION_BEHAVIOR_INVOICE_NOW)
    rows = await _lines(admin_conn, sub.id)
    invoices = await _invoices(admin_conn, tenant)
    assert len(invoices) == 1
    inv = invoices[0]
    assert {r["invoice_request_id"] for r in rows} == {uuid.UUID(inv["invoice_request_id"])}
    assert [(ln["kind"], D(ln["amount"])) for ln in inv["lines"]] == [(r["kind"], r["amount"]) for r in rows]
    assert [ln["fraction"] for ln in inv["lines"]] == [f"{r['fraction_num']}/{r['fraction_den']}" for r in rows]
    assert D(inv["total"]) == sum(r["amount"] for r in rows)
    assert inv["run_id"] == str(uuid.UUID(int=0)) and inv["customer_id"] == "cust-p"
    # A change after it goes to the next invoice again; the request ids are deterministic.
    basic2 = await _plan(stub, tenant, "30.00")
    await _change(stub, tenant, sub, basic2, timing=pb.CHANGE_TIMING_IMMEDIATELY)
    assert len(await _invoices(admin_conn, tenant)) == 1
    assert sum(r["invoice_request_id"] is None for r in await _lines(admin_conn, sub.id)) == 2


async def test_proration_none_and_scheduled_downgrades_make_no_lines(stub, tenant, admin_conn):
    basic, pro = await _plan(stub, tenant, "10.00"), await _plan(stub, tenant, "20.00")
    sub = await _sub(stub, tenant, basic, days_ago=10)
    await _change(stub, tenant, sub, pro, proration_behavior=pb.PRORATION_BEHAVIOR_NONE)
    assert await _lines(admin_conn, sub.id) == []
    down, _ = await _change(stub, tenant, sub, basic)  # a downgrade: at period end by default
    assert down.pending_change.plan_id == basic.id and await _lines(admin_conn, sub.id) == []


async def test_cancel_now_in_advance_invoices_the_credit_and_what_was_pending(stub, tenant, admin_conn):
    basic, pro = await _plan(stub, tenant, "10.00"), await _plan(stub, tenant, "20.00")
    sub = await _sub(stub, tenant, basic, days_ago=10)
    period = await _opened_by_a_run(admin_conn, tenant, sub)
    await _change(stub, tenant, sub, pro)  # credit + charge, pending
    before = datetime.now(UTC)
    request_id = rid()
    counted = _billing_metrics()
    canceled = (await stub.CancelSubscription(pb.CancelSubscriptionRequest(
        request_id=request_id, id=sub.id, mode=pb.CANCEL_MODE_IMMEDIATELY), metadata=tenant.md)).subscription
    called = (before, datetime.now(UTC))
    moved = {k: round(v - counted[k], 2) for k, v in _billing_metrics().items()}
    assert canceled.status == pb.SUBSCRIPTION_STATUS_CANCELED
    rows = await _lines(admin_conn, sub.id)
    assert [r["kind"] for r in rows] == ["proration_credit", "proration_charge", "proration_credit"]
    _check_rule(rows[2], "20.00", period, -1, called)  # the new plan's remaining time, credited
    [inv] = await _invoices(admin_conn, tenant)
    assert [D(ln["amount"]) for ln in inv["lines"]] == [r["amount"] for r in rows]
    assert {r["invoice_request_id"] for r in rows} == {uuid.UUID(inv["invoice_request_id"])}
    assert D(inv["total"]) == sum(r["amount"] for r in rows)
    # A negative total (the credits outweigh the charge): counted as credited, not billed
    assert D(inv["total"]) < 0
    assert (moved["change_invoices"], moved["eur"], moved["eur_credited"]) == (1, 0.0, float(-D(inv["total"])))
    # Replay: same outcome, no second request.
    await stub.CancelSubscription(pb.CancelSubscriptionRequest(
        request_id=request_id, id=sub.id, mode=pb.CANCEL_MODE_IMMEDIATELY), metadata=tenant.md)
    assert len(await _invoices(admin_conn, tenant)) == 1


async def test_cancel_now_in_arrears_charges_used_time_and_usage(stub, tenant, admin_conn):
    charge = pb.UsageCharge(metric_code="api_calls", aggregation=pb.AGGREGATION_SUM,
                            pricing_model=pb.PRICING_MODEL_PER_UNIT, unit_price="0.01")
    spec = await _plan(stub, tenant, "30.00", timing=pb.BILLING_TIMING_IN_ARREARS, charges=[charge])
    sub = await _sub(stub, tenant, spec, days_ago=10)
    period = _period(sub)
    await stub.RecordUsage(pb.RecordUsageRequest(
        request_id=rid(), event_id=rid(), subscription_id=sub.id, metric_code="api_calls", quantity="150",
        occurred_at=ts(datetime.now(UTC) - timedelta(days=1))), metadata=tenant.md)
    before = datetime.now(UTC)
    await stub.CancelSubscription(pb.CancelSubscriptionRequest(
        request_id=rid(), id=sub.id, mode=pb.CANCEL_MODE_IMMEDIATELY), metadata=tenant.md)
    called = (before, datetime.now(UTC))
    rows = await _lines(admin_conn, sub.id)
    assert [r["kind"] for r in rows] == ["proration_charge", "usage"]
    _check_rule(rows[0], "30.00", period, 1, called)
    assert rows[1]["amount"] == D("1.50")  # 150 * 0.01
    [inv] = await _invoices(admin_conn, tenant)
    assert [(ln["kind"], D(ln["amount"])) for ln in inv["lines"]] == [(r["kind"], r["amount"]) for r in rows]


async def test_cancel_now_with_proration_none_keeps_the_full_fee(stub, tenant, admin_conn):
    spec = await _plan(stub, tenant, "10.00")
    sub = await _sub(stub, tenant, spec, days_ago=10)
    await _opened_by_a_run(admin_conn, tenant, sub)
    await stub.CancelSubscription(pb.CancelSubscriptionRequest(
        request_id=rid(), id=sub.id, mode=pb.CANCEL_MODE_IMMEDIATELY, proration=pb.PRORATION_BEHAVIOR_NONE),
        metadata=tenant.md)
    assert await _lines(admin_conn, sub.id) == [] and await _invoices(admin_conn, tenant) == []


async def test_pause_credits_the_rest_and_resume_reopens_it(stub, tenant, admin_conn):
    spec = await _plan(stub, tenant, "10.00")
    sub = await _sub(stub, tenant, spec, days_ago=10)
    period = await _opened_by_a_run(admin_conn, tenant, sub)
    before = datetime.now(UTC)
    await stub.PauseSubscription(pb.PauseSubscriptionRequest(request_id=rid(), id=sub.id), metadata=tenant.md)
    called = (before, datetime.now(UTC))
    rows = await _lines(admin_conn, sub.id)
    assert [r["kind"] for r in rows] == ["proration_credit"]
    _check_rule(rows[0], "10.00", period, -1, called)
    assert await _fee_from(admin_conn, sub.id) == period[1]
    before = datetime.now(UTC)
    await stub.ResumeSubscription(pb.ResumeSubscriptionRequest(request_id=rid(), id=sub.id), metadata=tenant.md)
    fee_from = await _fee_from(admin_conn, sub.id)
    assert before - timedelta(seconds=1) <= fee_from <= datetime.now(UTC)
    assert len(await _lines(admin_conn, sub.id)) == 1  # the rest is charged when the period closes


async def test_bad_proration_values_are_refused(stub, tenant):
    import grpc

    spec = await _plan(stub, tenant, "10.00")
    sub = await _sub(stub, tenant, spec)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ChangePlan(pb.ChangePlanRequest(request_id=rid(), id=sub.id, new_plan_id=spec.id,
                                                   proration_behavior=99), metadata=tenant.md)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_usage_while_paused_is_refused_even_after_the_resume(stub, tenant, admin_conn):
    import grpc

    charge = pb.UsageCharge(metric_code="api_calls", aggregation=pb.AGGREGATION_SUM,
                            pricing_model=pb.PRICING_MODEL_PER_UNIT, unit_price="0.01")
    spec = await _plan(stub, tenant, "10.00", charges=[charge])
    sub = await _sub(stub, tenant, spec, days_ago=10)

    async def record(at: datetime):
        return await stub.RecordUsage(pb.RecordUsageRequest(
            request_id=rid(), event_id=rid(), subscription_id=sub.id, metric_code="api_calls", quantity="1",
            occurred_at=ts(at)), metadata=tenant.md)

    await record(datetime.now(UTC) - timedelta(days=1))
    await stub.PauseSubscription(pb.PauseSubscriptionRequest(request_id=rid(), id=sub.id), metadata=tenant.md)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await record(datetime.now(UTC))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "paused" in err.value.details()
    await record(datetime.now(UTC) - timedelta(hours=1))  # before the pause: billed
    await stub.ResumeSubscription(pb.ResumeSubscriptionRequest(request_id=rid(), id=sub.id), metadata=tenant.md)
    window = await admin_conn.fetchrow("select paused_at, resumed_at from pause_windows where subscription_id = $1",
                                       uuid.UUID(sub.id))
    assert window["paused_at"] < window["resumed_at"]
    with pytest.raises(grpc.aio.AioRpcError) as err:  # arrives after the resume, happened in the pause
        await record(window["paused_at"] + (window["resumed_at"] - window["paused_at"]) / 2)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    await record(window["resumed_at"])  # from the resume on: billed again
    assert await admin_conn.fetchval("select quantity_sum from usage_totals where subscription_id = $1",
                                     uuid.UUID(sub.id)) == D(3)
