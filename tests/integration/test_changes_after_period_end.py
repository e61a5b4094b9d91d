"""A change made after a period ended but before a run closed it: the ended period is billed
first, as a run would, and the change applies to the period its time falls in.

Before this, an immediate cancel in that gap billed the ended period at its usage and
nothing after it: usage recorded between the period's end and the cancel was on time in a
period that no request would ever bill (lost revenue)."""
from __future__ import annotations

import uuid
from datetime import timedelta, timezone
from decimal import Decimal as D

import grpc
import pytest

from billing.domain.invoicing import invoice_request_id
from billing.v1 import billing_pb2 as pb
from tests.integration.test_billing_scale import NOW, _billing_metrics, _invoices, _run, _sub, _usage, _weekly_plan
from tests.integration.test_subscriptions_api import rid

NIL = "00000000-0000-0000-0000-000000000000"


def _lines(request: dict, kind: str) -> list[dict]:
    return [ln for ln in request["lines"] if ln["kind"] == kind]


async def test_immediate_cancel_after_the_period_ended_bills_it_and_then_the_gap(service, stub, tenant, admin_conn):
    plan = await _weekly_plan(stub, tenant)  # 10.00 a week in arrears + 0.0025 per call
    sub = await _sub(stub, tenant, plan, NOW() - timedelta(days=10))  # P1 [-10d, -3d) ended, P2 [-3d, +4d)
    tid, sid = uuid.UUID(tenant.id), uuid.UUID(sub.id)
    p1_start = sub.current_period_start.ToDatetime(timezone.utc)
    p1_end = sub.current_period_end.ToDatetime(timezone.utc)
    await _usage(stub, tenant, sub.id, "1000", p1_start + timedelta(days=1))  # P1: 2.50
    await _usage(stub, tenant, sub.id, "2000", NOW() - timedelta(days=1))  # P2, before the cancel: 5.00

    request = rid()
    before = _billing_metrics()
    canceled = (await stub.CancelSubscription(pb.CancelSubscriptionRequest(
        request_id=request, id=sub.id, mode=pb.CANCEL_MODE_IMMEDIATELY), metadata=tenant.md)).subscription
    moved = {k: round(v - before[k], 2) for k, v in _billing_metrics().items()}

    assert canceled.status == pb.SUBSCRIPTION_STATUS_CANCELED
    assert canceled.current_period_start.ToDatetime(timezone.utc) == p1_end  # P2 was the period cut short
    first, final = await _invoices(admin_conn, tid, sub.id)
    # P1, billed as a run would have: its id, its lines, no run
    assert first["invoice_request_id"] == str(invoice_request_id(tid, sid, p1_start))
    assert first["run_id"] == NIL
    assert (first["period_start_us"], first["total"]) == (int(p1_start.timestamp() * 1_000_000), "12.50")
    assert [(ln["kind"], ln["quantity"], ln["amount"]) for ln in first["lines"]] == [
        ("base_fee", "1", "10.00"), ("usage", "1000", "2.50")]
    # the cancel: P2's used time and P2's usage, which was lost before
    [usage] = _lines(final, "usage")
    assert (usage["quantity"], usage["amount"]) == ("2000", "5.00")
    assert usage["period_start_us"] == int(p1_end.timestamp() * 1_000_000)
    [fee] = [ln for ln in final["lines"] if ln["kind"] != "usage"]
    assert fee["period_start_us"] == usage["period_start_us"]
    assert D("4.28") <= D(fee["amount"]) <= D("4.30")  # 3 of 7 days of 10.00, to the second
    # Both invoice requests counted as written by a change, with their totals; no run moved
    assert moved == {"billed": 0, "failed": 0, "skipped": 0, "eur": float(D("12.50") + D(final["total"])),
                     "eur_credited": 0.0, "run_invoices": 0, "change_invoices": 2, "completed": 0, "durations": 0}
    # P1 is marked billed (no run), with its audit row under the cancel's request id
    mark = await admin_conn.fetchrow("select run_id, period_end from billed_periods where subscription_id = $1", sid)
    assert (str(mark["run_id"]), mark["period_end"]) == (NIL, p1_end)
    actions = await admin_conn.fetch(
        "select action, request_id from audit_events where entity_id = $1 order by id", sid)
    assert [(a["action"], a["request_id"]) for a in actions][-2:] == [
        ("subscription.period_advanced", request), ("subscription.canceled", request)]

    # A run afterwards has nothing left to bill for it; the same request again changes nothing
    done = await _run(service, tenant, NOW())
    assert done.subscriptions_due == 0
    replayed = _billing_metrics()
    again = (await stub.CancelSubscription(pb.CancelSubscriptionRequest(
        request_id=request, id=sub.id, mode=pb.CANCEL_MODE_IMMEDIATELY), metadata=tenant.md)).subscription
    assert again == canceled
    assert _billing_metrics() == replayed
    assert len(await _invoices(admin_conn, tid, sub.id)) == 2


async def test_a_refused_change_after_the_period_ended_bills_nothing(service, stub, tenant, admin_conn):
    """The catch-up is part of the change's transaction: a change refused after it (here a
    cancel of a subscription that its own cancel-at-period-end canceled when P1 ended)
    leaves the ended period to the next run, unbilled and unmarked."""
    plan = await _weekly_plan(stub, tenant)
    sub = await _sub(stub, tenant, plan, NOW() - timedelta(days=10))
    tid = uuid.UUID(tenant.id)
    # asked before P1 ended (a request now would be caught up first and cancel at P2's end)
    await admin_conn.execute("update subscriptions set cancel_at_period_end = true where id = $1", uuid.UUID(sub.id))

    before = _billing_metrics()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.PauseSubscription(pb.PauseSubscriptionRequest(request_id=rid(), id=sub.id), metadata=tenant.md)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert _billing_metrics() == before  # the close it rolled back is not counted

    assert await _invoices(admin_conn, tid, sub.id) == []
    assert await admin_conn.fetchval("select count(*) from billed_periods where subscription_id = $1",
                                     uuid.UUID(sub.id)) == 0
    done = await _run(service, tenant, NOW())  # the run bills P1 and cancels, as before
    assert (done.subscriptions_due, done.subscriptions_billed) == (1, 1)
    [p1] = await _invoices(admin_conn, tid, sub.id)
    assert p1["total"] == "10.00"
