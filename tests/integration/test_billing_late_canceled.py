"""Late usage of canceled subscriptions: a run bills it on an invoice request of its own
(the subscription never closes a period again), exactly once, per shard (real PostgreSQL;
docs/billing.md, Late usage)."""
from __future__ import annotations

import asyncio
import hashlib
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal as D

import pytest

from billing.domain.invoicing import invoice_request_id
from billing.domain.periods import to_us
from billing.services import billing_runs as billing_service
from billing.services.run_execution import execute_run
from billing.services import invoice_requests
from billing.services.context import Caller
from billing.store import billed_periods as billing_store
from billing.v1 import billing_pb2 as pb
from tests.integration.test_billing_scale import NOW, _invoices, _run, _sub, _usage, _weekly_plan
from tests.integration.test_subscriptions_api import rid


def _late_id(tid: uuid.UUID, sid: str, events: list[str]) -> str:
    digest = hashlib.sha256("\x00".join(sorted(events)).encode()).hexdigest()
    return str(invoice_requests.request_id(tid, uuid.UUID(sid), f"late:{digest}"))


async def _cancel(stub, tenant, sub_id: str, mode) -> pb.Subscription:
    return (await stub.CancelSubscription(pb.CancelSubscriptionRequest(request_id=rid(), id=sub_id, mode=mode),
                                          metadata=tenant.md)).subscription


async def _canceled_at_period_end(stub, admin_conn, tenant, plan, start) -> pb.Subscription:
    """A subscription whose first period [start, start + 7d) ended, to be canceled at its end
    by a run: cancel at period end as if asked before that end (asked now, the ended period
    would be closed first and the cancel would wait for the next one's end)."""
    sub = await _sub(stub, tenant, plan, start)
    await admin_conn.execute("update subscriptions set cancel_at_period_end = true where id = $1", uuid.UUID(sub.id))
    return sub


async def _shard(admin_conn, sub_id: str) -> int:
    """The shard of 2 a subscription belongs to (store.subscription_scans._in_shard's hash)."""
    return await admin_conn.fetchval("select (hashtext($1::uuid::text) & 2147483647) % 2", uuid.UUID(sub_id))


def _dt(t) -> datetime:
    return t.ToDatetime(timezone.utc)


async def _pending(admin_conn, tid: uuid.UUID) -> set[str]:
    """The subscriptions late_usage_pending names (migration 014): those with late usage to bill."""
    return {str(r["subscription_id"]) for r in await admin_conn.fetch(
        "select subscription_id from late_usage_pending where tenant_id = $1", tid)}


async def test_canceled_at_period_end_late_usage_is_billed_once_by_the_next_run(
        service, stub, tenant, admin_conn, monkeypatch):
    plan = await _weekly_plan(stub, tenant)  # 10.00 a week in arrears + 0.0025 per call
    tid = uuid.UUID(tenant.id)
    sub = await _canceled_at_period_end(stub, admin_conn, tenant, plan, NOW() - timedelta(days=10))
    p1_start, p1_end = _dt(sub.current_period_start), _dt(sub.current_period_end)  # [-10d, -3d)
    await _usage(stub, tenant, sub.id, "1000", p1_start + timedelta(days=1))
    first = await _run(service, tenant, NOW())  # closes P1 and cancels at its end
    assert (first.subscriptions_billed, first.totals) == (1, (("EUR", "12.50"),))  # 10.00 + 1000 * 0.0025
    row = await admin_conn.fetchrow("select status, canceled_at from subscriptions where id = $1", uuid.UUID(sub.id))
    assert (row["status"], row["canceled_at"]) == ("canceled", p1_end)

    # Late: P1 was billed and the subscription canceled; the events are accepted (before
    # the cancel) and stored late. One is sent twice (deduplicated).
    await _usage(stub, tenant, sub.id, "400", p1_start + timedelta(days=2), event_id="cl-late-1")
    await _usage(stub, tenant, sub.id, "400", p1_start + timedelta(days=2), event_id="cl-late-1")
    await _usage(stub, tenant, sub.id, "201", p1_start + timedelta(days=3), event_id="cl-late-2")
    late = await admin_conn.fetch(
        "select event_id, late, period_start from usage_events where tenant_id = $1 and event_id like 'cl-late-%'", tid)
    assert sorted((r["event_id"], r["late"], r["period_start"]) for r in late) == [
        ("cl-late-1", True, p1_start), ("cl-late-2", True, p1_start)]
    assert await _pending(admin_conn, tid) == {sub.id}  # stored with the events

    # A crash before the commit (after every write of the pass): nothing is left behind.
    caller = Caller(tid, "test")
    second = await billing_service.run_billing(service.db, caller, rid(), "", NOW())
    real = billing_store.mark_late_billed

    async def crash(*a, **kw):
        await real(*a, **kw)
        raise ConnectionResetError("killed mid-transaction")
    monkeypatch.setattr(billing_store, "mark_late_billed", crash)
    with pytest.raises(ConnectionResetError):
        await execute_run(service.db, tid, second.id)
    monkeypatch.setattr(billing_store, "mark_late_billed", real)
    assert len(await _invoices(admin_conn, tid, sub.id)) == 1
    assert await admin_conn.fetchval("select count(*) from late_usage_billed where tenant_id = $1", tid) == 0
    assert await _pending(admin_conn, tid) == {sub.id}  # rolled back with the rest

    # The request delivered again: the run bills the late usage, once.
    done = await execute_run(service.db, tid, second.id)
    assert done.status == "completed"
    assert (done.subscriptions_due, done.subscriptions_billed, done.subscriptions_failed) == (1, 1, 0)
    assert done.totals == (("EUR", "1.50"),)
    invoices = await _invoices(admin_conn, tid, sub.id)
    assert len(invoices) == 2
    inv = invoices[1]
    assert inv["invoice_request_id"] == _late_id(tid, sub.id, ["cl-late-1", "cl-late-2"])
    assert inv["invoice_request_id"] != str(invoice_request_id(tid, uuid.UUID(sub.id), p1_end))
    assert inv["run_id"] == str(second.id)
    assert (inv["period_start_us"], inv["period_end_us"]) == (to_us(p1_start), to_us(p1_end))  # the lines' span
    [ln] = inv["lines"]
    # 601 late calls at 0.0025 = 1.5025 -> 1.50 (half-even), naming P1.
    assert (ln["kind"], ln["metric_code"], ln["quantity"], ln["unit_price"], ln["amount"]) == (
        "late_usage", "api_calls", "601", "0.0025", "1.50")
    assert ln["original_period_start_us"] == to_us(p1_start)
    assert (ln["period_start_us"], ln["period_end_us"]) == (to_us(p1_start), to_us(p1_end))
    assert (inv["subtotal"], inv["total"], inv["currency"]) == ("1.50", "1.50", "EUR")
    billed = await admin_conn.fetch(
        "select event_id, invoice_request_id, run_id from late_usage_billed where tenant_id = $1 order by event_id", tid)
    assert [(r["event_id"], str(r["invoice_request_id"]), r["run_id"]) for r in billed] == [
        ("cl-late-1", inv["invoice_request_id"], second.id), ("cl-late-2", inv["invoice_request_id"], second.id)]
    assert await _pending(admin_conn, tid) == set()  # nothing left to bill: the pass reads nothing of it again
    audit = await admin_conn.fetchval(
        """select count(*) from audit_events where tenant_id = $1 and entity_id = $2
              and action = 'subscription.late_usage_billed'""", tid, uuid.UUID(sub.id))
    assert audit == 1

    # Redelivered once more, then a new run: nothing left to bill.
    again = await execute_run(service.db, tid, second.id)
    assert again.subscriptions_billed == 1
    third = await _run(service, tenant, NOW())
    assert (third.subscriptions_due, third.subscriptions_billed, third.totals) == (0, 0, ())
    assert len(await _invoices(admin_conn, tid, sub.id)) == 2

    # A new late event later is billed alone, priced as the increase of P1's price.
    await _usage(stub, tenant, sub.id, "3", p1_start + timedelta(days=4), event_id="cl-late-3")
    assert await _pending(admin_conn, tid) == {sub.id}
    fourth = await _run(service, tenant, NOW())
    assert (fourth.subscriptions_billed, fourth.totals) == (1, (("EUR", "0.01"),))  # 1604 - 1601 calls: 0.0075
    last = (await _invoices(admin_conn, tid, sub.id))[-1]
    assert last["invoice_request_id"] == _late_id(tid, sub.id, ["cl-late-3"])
    assert [(x["quantity"], x["amount"]) for x in last["lines"]] == [("3", "0.01")]
    assert await _pending(admin_conn, tid) == set()


async def test_immediate_cancel_late_usage_before_the_cancel_is_billed_by_the_next_run(
        service, stub, tenant, admin_conn):
    plan = await _weekly_plan(stub, tenant)
    tid = uuid.UUID(tenant.id)
    sub = await _sub(stub, tenant, plan, NOW() - timedelta(days=2))
    p_start, p_end = _dt(sub.current_period_start), _dt(sub.current_period_end)  # [-2d, +5d)
    await _usage(stub, tenant, sub.id, "100", NOW() - timedelta(days=1), event_id="im-on-time")
    canceled = await _cancel(stub, tenant, sub.id, pb.CANCEL_MODE_IMMEDIATELY)
    canceled_at = _dt(canceled.canceled_at)
    [final] = await _invoices(admin_conn, tid, sub.id)  # the cancel's final request: the 100 calls
    assert [(ln["kind"], ln["amount"]) for ln in final["lines"] if ln["kind"] == "usage"] == [("usage", "0.25")]

    # An event from before the cancel arrives after it: accepted, late (the final request
    # billed the period). One after the cancel is refused.
    await _usage(stub, tenant, sub.id, "400", canceled_at - timedelta(hours=1), event_id="im-late-1")
    row = await admin_conn.fetchrow("select late, period_start from usage_events where tenant_id = $1 and event_id = $2",
                                    tid, "im-late-1")
    assert (row["late"], row["period_start"]) == (True, p_start)
    assert await _pending(admin_conn, tid) == {sub.id}

    done = await _run(service, tenant, NOW())
    assert (done.subscriptions_due, done.subscriptions_billed, done.totals) == (1, 1, (("EUR", "1.00"),))
    invoices = await _invoices(admin_conn, tid, sub.id)
    assert len(invoices) == 2
    inv = invoices[1]
    assert inv["invoice_request_id"] == _late_id(tid, sub.id, ["im-late-1"])
    assert inv["run_id"] == str(done.id)
    [ln] = inv["lines"]
    # 400 calls at 0.0025 = 1.00: the increase of the cut-short period's price (100 -> 500
    # calls); the line names that period, which ended at the cancel.
    assert (ln["kind"], ln["quantity"], ln["unit_price"], ln["amount"]) == ("late_usage", "400", "0.0025", "1.00")
    assert ln["original_period_start_us"] == to_us(p_start)
    assert (ln["period_start_us"], ln["period_end_us"]) == (to_us(p_start), to_us(canceled_at))
    assert (inv["period_start_us"], inv["period_end_us"]) == (to_us(p_start), to_us(canceled_at))
    assert canceled_at < p_end and inv["total"] == "1.00"
    assert await _pending(admin_conn, tid) == set()

    again = await _run(service, tenant, NOW())
    assert (again.subscriptions_due, again.subscriptions_billed) == (0, 0)
    assert len(await _invoices(admin_conn, tid, sub.id)) == 2


async def test_an_active_subscriptions_late_usage_still_goes_into_its_next_invoice(service, stub, tenant, admin_conn):
    plan = await _weekly_plan(stub, tenant)
    tid = uuid.UUID(tenant.id)
    active = await _sub(stub, tenant, plan, NOW() - timedelta(days=16))  # P1 [-16d, -9d), P2 [-9d, -2d)
    p1_start, p1_end = _dt(active.current_period_start), _dt(active.current_period_end)
    first = await _run(service, tenant, p1_end + timedelta(hours=1))  # bills P1 only
    assert first.subscriptions_billed == 1
    await _usage(stub, tenant, active.id, "400", p1_start + timedelta(days=1), event_id="ac-late-1")

    # A run whose as_of closes nothing: the active subscription's late usage waits for its
    # next period (the canceled-subscription pass leaves it alone).
    idle = await _run(service, tenant, p1_end + timedelta(hours=2))
    assert (idle.subscriptions_due, idle.subscriptions_billed) == (0, 0)
    assert len(await _invoices(admin_conn, tid, active.id)) == 1
    assert await admin_conn.fetchval("select count(*) from late_usage_billed where tenant_id = $1", tid) == 0
    assert await _pending(admin_conn, tid) == {active.id}  # still to bill

    second = await _run(service, tenant, NOW())  # closes P2, with P1's late usage
    assert (second.subscriptions_due, second.subscriptions_billed) == (1, 1)
    invoices = await _invoices(admin_conn, tid, active.id)
    assert len(invoices) == 2
    p2 = invoices[1]
    assert p2["invoice_request_id"] == str(invoice_request_id(tid, uuid.UUID(active.id), p1_end))
    kinds = {ln["kind"]: ln for ln in p2["lines"]}
    assert (kinds["late_usage"]["amount"], kinds["late_usage"]["original_period_start_us"]) == ("1.00", to_us(p1_start))
    assert p2["total"] == "11.00"  # 10.00 + 0.00 usage + 1.00 late
    billed = await admin_conn.fetch("select event_id, invoice_request_id from late_usage_billed where tenant_id = $1",
                                    tid)
    assert [(r["event_id"], str(r["invoice_request_id"])) for r in billed] == [("ac-late-1", p2["invoice_request_id"])]
    assert await _pending(admin_conn, tid) == set()


async def test_two_shards_bill_each_canceled_subscriptions_late_usage_once(service, stub, tenant, admin_conn):
    plan = await _weekly_plan(stub, tenant)
    tid = uuid.UUID(tenant.id)
    subs = [await _canceled_at_period_end(stub, admin_conn, tenant, plan, NOW() - timedelta(days=10)) for _ in range(8)]
    while len({await _shard(admin_conn, sub.id) for sub in subs}) < 2:  # both shards hold some (random ids)
        subs.append(await _canceled_at_period_end(stub, admin_conn, tenant, plan, NOW() - timedelta(days=10)))
    n = len(subs)
    first = await _run(service, tenant, NOW())  # closes P1 of each and cancels them
    assert first.subscriptions_billed == n
    for i, sub in enumerate(subs):
        start = _dt(sub.current_period_start)
        await _usage(stub, tenant, sub.id, str(100 * (i + 1)), start + timedelta(days=1), event_id=f"sh-late-{i}")
    shard_of = {r["id"]: r["shard"] for r in await admin_conn.fetch(
        "select id, (hashtext(id::text) & 2147483647) % 2 as shard from subscriptions where tenant_id = $1", tid)}
    expected = {s: sum(1 for sub in subs if shard_of[uuid.UUID(sub.id)] == s) for s in (0, 1)}

    caller = Caller(tid, "test")
    run = await billing_service.run_billing(service.db, caller, rid(), "", NOW(), shards=2)
    # Each shard executed twice at once (a redelivery during a rebalance), then again.
    await asyncio.gather(*(execute_run(service.db, tid, run.id, shard=s) for s in (0, 1, 0, 1)))
    await asyncio.gather(*(execute_run(service.db, tid, run.id, shard=s) for s in (0, 1)))
    done = await billing_service.get_billing_run(service.db, caller, str(run.id))
    assert done.status == "completed"
    assert (done.subscriptions_due, done.subscriptions_billed, done.subscriptions_failed) == (n, n, 0)
    # 100 + 200 + ... calls at 0.0025 (0.25 per 100)
    assert done.totals == (("EUR", f"{D('0.25') * n * (n + 1) / 2:.2f}"),)
    shards = await admin_conn.fetch(
        "select shard, status, subscriptions_billed from billing_run_shards where run_id = $1 order by shard", run.id)
    assert [(r["shard"], r["status"], r["subscriptions_billed"]) for r in shards] == [
        (0, "completed", expected[0]), (1, "completed", expected[1])]
    for i, sub in enumerate(subs):
        invoices = await _invoices(admin_conn, tid, sub.id)
        assert len(invoices) == 2, sub.id
        late = invoices[1]
        assert late["invoice_request_id"] == _late_id(tid, sub.id, [f"sh-late-{i}"])
        assert [(ln["kind"], ln["quantity"]) for ln in late["lines"]] == [("late_usage", str(100 * (i + 1)))]
    assert await admin_conn.fetchval("select count(*) from late_usage_billed where tenant_id = $1", tid) == n
    assert await _pending(admin_conn, tid) == set()
    assert (await _run(service, tenant, NOW())).subscriptions_billed == 0


async def test_a_pending_row_with_nothing_left_to_bill_is_dropped_by_the_next_run(service, stub, tenant, admin_conn):
    """late_usage_pending names a canceled subscription whose late events are all billed (an
    operator's hand, a row left by a bug): the pass bills nothing for it and drops the row,
    so later runs do not look at it again."""
    plan = await _weekly_plan(stub, tenant)
    tid = uuid.UUID(tenant.id)
    sub = await _canceled_at_period_end(stub, admin_conn, tenant, plan, NOW() - timedelta(days=10))
    await _run(service, tenant, NOW())  # closes P1 and cancels at its end
    await _usage(stub, tenant, sub.id, "400", _dt(sub.current_period_start) + timedelta(days=1), event_id="st-late-1")
    billed = await _run(service, tenant, NOW())
    assert (billed.subscriptions_billed, billed.totals) == (1, (("EUR", "1.00"),))
    await admin_conn.execute("insert into late_usage_pending (tenant_id, subscription_id) values ($1, $2)",
                             tid, uuid.UUID(sub.id))

    done = await _run(service, tenant, NOW())
    assert (done.subscriptions_due, done.subscriptions_billed, done.totals) == (0, 0, ())
    assert await _pending(admin_conn, tid) == set()
    assert len(await _invoices(admin_conn, tid, sub.id)) == 2  # P1 and the late request, nothing more
