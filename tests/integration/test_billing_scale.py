"""Billing runs, second part: late usage, the ingest/billing race, pending adjustment lines,
a failing subscription inside a set-based chunk, and a run split into shards executed by
two billing consumers (real PostgreSQL; real Kafka for the shards)."""
from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal as D

import asyncpg

from billing import codec
from billing.domain.invoicing import invoice_request_id
from billing.domain.periods import add_interval, to_us
from billing.domain.plans import IntervalUnit
from billing.domain.pricing import Line
from billing.services import billing_runs as billing_service
from billing.services.run_execution import execute_run
from billing.services.context import Caller
from billing.services.usage import PlanCache, UsageEvent, UsageLimits, ingest
from billing.store import period_usage as billing_store
from billing.store import pending_lines
from billing.v1 import billing_pb2 as pb
from tests.integration.test_plans_api import plan_request
from tests.integration.test_subscriptions_api import rid, ts
from tests.kafka_helpers import running_roles, wait_until

NOW = lambda: datetime.now(timezone.utc)  # noqa: E731


async def _weekly_plan(stub, tenant) -> pb.Plan:
    """10.00 a week in arrears + 0.0025 per api call (sum)."""
    req = plan_request(base_fee="10.00", trial_days=0, interval=pb.INTERVAL_UNIT_WEEK,
                       billing_timing=pb.BILLING_TIMING_IN_ARREARS, usage_charges=[
                           pb.UsageCharge(metric_code="api_calls", aggregation=pb.AGGREGATION_SUM,
                                          pricing_model=pb.PRICING_MODEL_PER_UNIT, unit_price="0.0025")])
    return (await stub.CreatePlan(req, metadata=tenant.md)).plan


async def _sub(stub, tenant, plan, start: datetime) -> pb.Subscription:
    return (await stub.CreateSubscription(pb.CreateSubscriptionRequest(
        request_id=rid(), customer_id="cust-late", plan_id=plan.id, activate=True, start_at=ts(start)),
        metadata=tenant.md)).subscription


async def _usage(stub, tenant, sub_id: str, quantity: str, at: datetime, event_id: str | None = None):
    return await stub.RecordUsage(pb.RecordUsageRequest(
        request_id=event_id or rid(), subscription_id=sub_id, metric_code="api_calls", quantity=quantity,
        occurred_at=ts(at)), metadata=tenant.md)


async def _invoices(admin_conn, tenant_id: uuid.UUID, sub_id: str) -> list[dict]:
    rows = await admin_conn.fetch(
        "select payload from outbox where tenant_id = $1 and stream = 'invoice_requests' order by id", tenant_id)
    found = [codec.decode(codec.Schema.INVOICE_REQUEST, r["payload"]) for r in rows]
    return [f for f in found if f["subscription_id"] == sub_id]


async def _run(service, tenant, as_of: datetime, **kw) -> billing_service.BillingRun:
    caller = Caller(uuid.UUID(tenant.id), "test")
    run = await billing_service.run_billing(service.db, caller, rid(), "", as_of)
    return await execute_run(service.db, caller.tenant_id, run.id, **kw)


async def test_late_usage_is_billed_once_in_the_next_invoice_naming_its_period(service, stub, tenant, admin_conn):
    plan = await _weekly_plan(stub, tenant)
    start = NOW() - timedelta(days=16)  # weekly: P1 [-16d, -9d), P2 [-9d, -2d), P3 [-2d, +5d)
    sub = await _sub(stub, tenant, plan, start)
    tid = uuid.UUID(tenant.id)
    p1_start = sub.current_period_start.ToDatetime(timezone.utc)
    p1_end = sub.current_period_end.ToDatetime(timezone.utc)
    await _usage(stub, tenant, sub.id, "1000", p1_start + timedelta(days=1))

    first = await _run(service, tenant, p1_end + timedelta(hours=1))  # bills P1 only
    assert (first.subscriptions_billed, first.totals) == (1, (("EUR", "12.50"),))  # 10.00 + 1000 * 0.0025

    # Two late events for P1 (one twice: deduplicated), one on-time event for P2.
    await _usage(stub, tenant, sub.id, "400", p1_start + timedelta(days=2), event_id="late-1")
    await _usage(stub, tenant, sub.id, "400", p1_start + timedelta(days=2), event_id="late-1")
    await _usage(stub, tenant, sub.id, "201", p1_start + timedelta(days=3), event_id="late-2")
    await _usage(stub, tenant, sub.id, "100", p1_end + timedelta(days=1))
    late = await admin_conn.fetch("select event_id, late from usage_events where tenant_id = $1 and late", tid)
    assert sorted(r["event_id"] for r in late) == ["late-1", "late-2"]
    # GetUsage of P1 counts them in its quantity and shows them as late, none billed yet.
    assert await _late_report(stub, tenant, sub.id, p1_start) == ("1601", 2, "601", 0)
    assert await _late_report(stub, tenant, sub.id, p1_end) == ("100", 0, "0", 0)

    second = await _run(service, tenant, NOW())  # bills P2, with P1's late usage
    assert second.subscriptions_billed == 1
    invoices = await _invoices(admin_conn, tid, sub.id)
    assert len(invoices) == 2
    p2 = invoices[1]
    assert p2["invoice_request_id"] == str(invoice_request_id(tid, uuid.UUID(sub.id), p1_end))
    lines = {ln["kind"]: ln for ln in p2["lines"]}
    assert lines["usage"]["quantity"] == "100" and lines["usage"]["amount"] == "0.25"
    lt = lines["late_usage"]
    # 601 late calls at 0.0025 = 1.5025 -> 1.50 (half-even); the line names P1.
    assert (lt["metric_code"], lt["quantity"], lt["unit_price"], lt["amount"]) == ("api_calls", "601", "0.0025", "1.50")
    assert lt["original_period_start_us"] == to_us(p1_start)
    assert (lt["period_start_us"], lt["period_end_us"]) == (to_us(p1_start), to_us(p1_end))
    assert p2["total"] == "11.75"  # 10.00 + 0.25 + 1.50
    billed = await admin_conn.fetch(
        "select event_id, invoice_request_id from late_usage_billed where tenant_id = $1 order by event_id", tid)
    assert [(r["event_id"], str(r["invoice_request_id"])) for r in billed] == [
        ("late-1", p2["invoice_request_id"]), ("late-2", p2["invoice_request_id"])]
    assert await _late_report(stub, tenant, sub.id, p1_start) == ("1601", 2, "601", 2)

    # Once only: a later run (P3 has not ended: nothing due) bills no late usage again, and a
    # new late event for P1 is billed alone, priced as the increase of P1's price.
    await _usage(stub, tenant, sub.id, "3", p1_start + timedelta(days=4), event_id="late-3")
    async with service.db.tenant_tx(tid) as conn:
        rows = await billing_store.unbilled_late_usage(conn, tid, [uuid.UUID(sub.id)])
    assert [(list(r["event_ids"]), r["b_sum"], r["a_sum"]) for r in rows] == [(["late-3"], D(1601), D(1604))]
    third = await _run(service, tenant, NOW())
    assert third.subscriptions_due == 0 and len(await _invoices(admin_conn, tid, sub.id)) == 2
    # (the third late event waits for P3's invoice)
    assert await _late_report(stub, tenant, sub.id, p1_start) == ("1604", 3, "604", 2)


async def _late_report(stub, tenant, sub_id: str, period_start: datetime) -> tuple[str, int, str, int]:
    """GetUsage of one period: (quantity, late events, their quantity, late events billed)."""
    report = await stub.GetUsage(pb.GetUsageRequest(subscription_id=sub_id, period_start=ts(period_start)),
                                 metadata=tenant.md)
    (m,) = report.metrics
    return m.quantity, m.late_event_count, m.late_quantity_sum, m.late_billed_event_count


async def test_ingest_waits_for_a_billing_chunk_and_then_finds_the_event_late(service, stub, tenant, migrated):
    """The race: a usage batch reading the subscription while a billing chunk closes its
    period. The chunk holds the row FOR UPDATE (as `due_subscriptions` does); the ingest's
    FOR KEY SHARE waits for it, then sees the advanced period: the event is late."""
    plan = await _weekly_plan(stub, tenant)
    sub = await _sub(stub, tenant, plan, NOW() - timedelta(days=10))
    sid, tid = uuid.UUID(sub.id), uuid.UUID(tenant.id)
    p1_start = sub.current_period_start.ToDatetime(timezone.utc)
    p1_end = sub.current_period_end.ToDatetime(timezone.utc)
    billing = await asyncpg.connect(migrated.admin_database_url)
    try:
        tx = billing.transaction()
        await tx.start()
        await billing.execute("select 1 from subscriptions where tenant_id = $1 and id = $2 for update", tid, sid)
        await billing.execute(
            """update subscriptions set current_period_start = $3, current_period_end = $4
                where tenant_id = $1 and id = $2""", tid, sid, p1_end, p1_end + timedelta(days=7))
        await billing.execute(
            """insert into billed_periods (tenant_id, subscription_id, period_start, period_end, run_id)
               values ($1, $2, $3, $4, $5)""", tid, sid, p1_start, p1_end, uuid.uuid4())
        record = asyncio.create_task(_usage(stub, tenant, sub.id, "7", p1_start + timedelta(days=1), "racing"))
        await asyncio.sleep(1.0)
        assert not record.done()  # held by the chunk's row lock
        await tx.commit()
        await asyncio.wait_for(record, 10)
        row = await billing.fetchrow("select late, period_start from usage_events where tenant_id = $1 and event_id = $2",
                                     tid, "racing")
        assert row["late"] is True and row["period_start"] == p1_start
    finally:
        await billing.close()


async def test_a_run_skips_a_subscription_a_usage_batch_holds_then_bills_its_usage(service, stub, tenant, admin_conn):
    """The other side of the race: a usage batch holding the subscription (KEY SHARE, not
    committed yet) makes the chunk skip it (SKIP LOCKED); the run waits for it and then bills
    the period WITH the batch's event."""
    plan = await _weekly_plan(stub, tenant)
    sub = await _sub(stub, tenant, plan, NOW() - timedelta(days=10))
    sid, tid = uuid.UUID(sub.id), uuid.UUID(tenant.id)
    p1_start = sub.current_period_start.ToDatetime(timezone.utc)
    release = asyncio.Event()

    async def usage_batch():
        async with service.db.tenant_tx(tid) as conn:
            event = UsageEvent("held-1", str(tid), str(sid), "api_calls", "2000", to_us(p1_start + timedelta(days=1)))
            result = await ingest(conn, [event], now_us=to_us(NOW()), limits=UsageLimits(), plans=PlanCache())
            assert result.inserted == 1 and result.late == 0
            await release.wait()

    batch = asyncio.create_task(usage_batch())
    await asyncio.sleep(0.5)
    caller = Caller(tid, "test")
    run = await billing_service.run_billing(service.db, caller, rid(), "", NOW())
    execution = asyncio.create_task(execute_run(service.db, tid, run.id))
    await asyncio.sleep(1.5)
    assert not execution.done()  # the held subscription is still due
    assert await admin_conn.fetchval("select count(*) from billed_periods where subscription_id = $1", sid) == 0
    release.set()
    await batch
    done = await asyncio.wait_for(execution, 30)
    assert (done.status, done.subscriptions_billed) == ("completed", 1)
    [inv] = await _invoices(admin_conn, tid, sub.id)
    usage = [ln for ln in inv["lines"] if ln["kind"] == "usage"]
    assert [(u["quantity"], u["amount"]) for u in usage] == [("2000", "5.00")]


async def test_pending_lines_go_into_the_next_invoice_and_are_marked_billed(service, stub, tenant, admin_conn):
    plan = await _weekly_plan(stub, tenant)
    sub = await _sub(stub, tenant, plan, NOW() - timedelta(days=10))
    other = await _sub(stub, tenant, plan, NOW() - timedelta(days=10))
    sid, tid = uuid.UUID(sub.id), uuid.UUID(tenant.id)
    start = sub.current_period_start.ToDatetime(timezone.utc)
    mid = start + timedelta(days=3, hours=12)
    credit = Line(kind="proration_credit", description="unused time of Basic", metric_code=None, quantity=D(1),
                  unit_price=D("-5.00"), amount=D("-2.50"), period_start=mid, period_end=start + timedelta(days=7))
    charge = Line(kind="proration_charge", description="remaining time of Pro", metric_code=None, quantity=D(1),
                  unit_price=D("12.00"), amount=D("6.00"), period_start=mid, period_end=start + timedelta(days=7))
    async with service.db.tenant_tx(tid) as conn:
        ids = await pending_lines.add(conn, tid, sid, "EUR", [credit, charge], "test:change")
    done = await _run(service, tenant, NOW())
    assert (done.subscriptions_billed, done.subscriptions_failed) == (2, 0)
    [inv] = await _invoices(admin_conn, tid, sub.id)
    kinds = [(ln["kind"], ln["amount"]) for ln in inv["lines"]]
    assert ("proration_credit", "-2.50") in kinds and ("proration_charge", "6.00") in kinds
    assert inv["total"] == "13.50"  # 10.00 base + 0.00 usage - 2.50 + 6.00
    [plain] = await _invoices(admin_conn, tid, other.id)
    assert plain["total"] == "10.00" and all(ln["kind"] in ("base_fee", "usage") for ln in plain["lines"])
    marked = await admin_conn.fetch("select id, invoice_request_id from pending_lines where tenant_id = $1", tid)
    assert {r["id"]: str(r["invoice_request_id"]) for r in marked} == {i: inv["invoice_request_id"] for i in ids}
    assert dict(done.totals)["EUR"] == "23.50"


async def test_an_invoice_request_with_a_negative_total_is_billed_and_counted_as_credited(
        service, stub, tenant, admin_conn):
    """A pending credit larger than the period's charges (a downgrade's unused time, say)
    makes an invoice request with a negative total: it is billed like any other, counted in
    billing_amount_credited_total, and billed minus credited is what the run totals say.
    Before session 10 the run's amount counter was incremented by the chunk's negative
    total, which Prometheus refuses (ValueError) after the chunk had committed."""
    plan = await _weekly_plan(stub, tenant)
    sub = await _sub(stub, tenant, plan, NOW() - timedelta(days=10))
    other = await _sub(stub, tenant, plan, NOW() - timedelta(days=10))
    sid, tid = uuid.UUID(sub.id), uuid.UUID(tenant.id)
    start = sub.current_period_start.ToDatetime(timezone.utc)
    credit = Line(kind="proration_credit", description="unused time of Pro", metric_code=None, quantity=D(1),
                  unit_price=D("-25.00"), amount=D("-25.00"), period_start=start, period_end=start + timedelta(days=7))
    async with service.db.tenant_tx(tid) as conn:
        await pending_lines.add(conn, tid, sid, "EUR", [credit], "test:downgrade")
    before = _billing_metrics()
    done = await _run(service, tenant, NOW(), chunk_size=50)  # both in one chunk: net total -5.00
    moved = {k: round(v - before[k], 2) for k, v in _billing_metrics().items()}
    assert (done.status, done.subscriptions_billed, done.subscriptions_failed) == ("completed", 2, 0)
    assert done.totals == (("EUR", "-5.00"),)
    [inv] = await _invoices(admin_conn, tid, sub.id)
    assert inv["total"] == "-15.00"  # 10.00 base + 0.00 usage - 25.00
    [plain] = await _invoices(admin_conn, tid, other.id)
    assert plain["total"] == "10.00"
    assert moved == {"billed": 2, "failed": 0, "skipped": 0, "eur": 10.0, "eur_credited": 15.0, "run_invoices": 2,
                     "change_invoices": 0, "completed": 1, "durations": 1}


def _billing_metrics() -> dict[str, float]:
    from prometheus_client import REGISTRY

    def value(name: str, **labels) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0
    return {"billed": value("billing_subscriptions_total", outcome="billed"),
            "failed": value("billing_subscriptions_total", outcome="failed"),
            "skipped": value("billing_subscriptions_total", outcome="skipped"),
            "eur": value("billing_amount_billed_total", currency="EUR"),
            "eur_credited": value("billing_amount_credited_total", currency="EUR"),
            "run_invoices": value("billing_invoice_requests_total", source="run"),
            "change_invoices": value("billing_invoice_requests_total", source="change"),
            "completed": value("billing_runs_total", status="completed"),
            "durations": value("billing_run_duration_seconds_count")}


async def test_one_failing_subscription_does_not_stop_a_set_based_chunk(service, stub, tenant, admin_conn):
    plan = await _weekly_plan(stub, tenant)
    subs = [await _sub(stub, tenant, plan, NOW() - timedelta(days=10)) for _ in range(12)]
    bad = subs[5]
    # Metadata the invoice request schema cannot carry (map of strings): encoding raises
    # while the chunk is computed, before anything is written.
    await admin_conn.execute("""update subscriptions set metadata = '{"n": 1}' where id = $1""", uuid.UUID(bad.id))
    before = _billing_metrics()
    done = await _run(service, tenant, NOW(), chunk_size=50)
    after = _billing_metrics()
    # The billing metrics moved by this run (other tests in this process only add to them
    # before or after, never during: the run is awaited here).
    assert {k: round(after[k] - before[k], 2) for k in after} == {
        "billed": 11, "failed": 1, "skipped": 0, "eur": 110.0, "eur_credited": 0.0, "run_invoices": 11,
        "change_invoices": 0, "completed": 1, "durations": 1}
    assert (done.status, done.subscriptions_due, done.subscriptions_billed, done.subscriptions_failed) == (
        "completed", 12, 11, 1)
    assert [s for s, _ in done.failures] == [bad.id] and "CodecError" in done.failures[0][1]
    assert done.totals == (("EUR", "110.00"),)
    tid = uuid.UUID(tenant.id)
    billed = {str(r[0]) for r in await admin_conn.fetch(
        "select subscription_id from billed_periods where tenant_id = $1", tid)}
    assert billed == {s.id for s in subs} - {bad.id}
    audits = await admin_conn.fetchval(
        "select count(*) from audit_events where tenant_id = $1 and actor like 'billing-run:%'", tid)
    assert audits == 11
    # An audit row of a period close: the fields it changed, before and after, and the details.
    good = uuid.UUID(subs[0].id)
    row = await admin_conn.fetchrow(
        "select action, before, after from audit_events where tenant_id = $1 and entity_id = $2 "
        "and actor like 'billing-run:%'", tid, good)
    sub_row = await admin_conn.fetchrow("select start_at, current_period_start, current_period_end from subscriptions "
                                        "where id = $1", good)
    assert row["action"] == "subscription.period_advanced"
    assert row["before"] == {"status": "active", "current_period_start": sub_row["start_at"].isoformat(),
                             "current_period_end": sub_row["current_period_start"].isoformat()}
    assert {k: row["after"][k] for k in ("status", "current_period_start", "current_period_end")} == {
        "status": "active", "current_period_start": sub_row["current_period_start"].isoformat(),
        "current_period_end": sub_row["current_period_end"].isoformat()}
    assert row["after"]["details"]["total"] == "10.00" and row["after"]["details"]["run_id"] == str(done.id)
    assert (row["after"]["details"]["period_start"], row["after"]["details"]["period_end"]) == (
        sub_row["start_at"].isoformat(), sub_row["current_period_start"].isoformat())
    row = await admin_conn.fetchrow("select current_period_start, start_at from subscriptions where id = $1",
                                    uuid.UUID(bad.id))
    assert row["current_period_start"] == row["start_at"]  # not advanced


async def test_a_sharded_run_is_executed_by_two_billing_consumers(migrated, service, stub, tenant, admin_conn):
    plan = (await stub.CreatePlan(plan_request(base_fee="10.00", trial_days=0, usage_charges=[],
                                               billing_timing=pb.BILLING_TIMING_IN_ARREARS),
                                  metadata=tenant.md)).plan
    tid = uuid.UUID(tenant.id)
    start = NOW() - timedelta(days=40)
    end = add_interval(start, IntervalUnit.MONTH, 1)
    n = 300
    await admin_conn.executemany(
        """insert into subscriptions (tenant_id, id, customer_id, plan_id, status, created_at, start_at, billing_anchor,
                                      trial_days, current_period_start, current_period_end)
           values ($1, $2, 'shards', $3, 'active', $4, $4, $4, 0, $4, $5)""",
        [(tid, uuid.uuid4(), uuid.UUID(plan.id), start, end) for _ in range(n)])
    async with running_roles(migrated, ("billing",)) as a, running_roles(migrated, ("billing",)) as b, \
            running_roles(migrated, ("relay",)):
        runners = [component for svc in (a, b) for name, component, _ in svc._roles if name == "billing"]

        async def both_assigned():
            return all(r.assignment for r in runners)
        await wait_until(both_assigned)
        caller = Caller(tid, "test")
        run = await billing_service.run_billing(service.db, caller, rid(), "", NOW(), shards=16)

        async def completed():
            r = await billing_service.get_billing_run(service.db, caller, str(run.id))
            return r if r.status == "completed" else None
        done = await wait_until(completed, timeout_s=120)
    assert (done.subscriptions_due, done.subscriptions_billed, done.subscriptions_failed) == (n, n, 0)
    assert done.totals == (("EUR", f"{10 * n}.00"),)
    assert await admin_conn.fetchval("select count(*) from billed_periods where tenant_id = $1", tid) == n
    assert await admin_conn.fetchval(
        "select count(distinct invoice_request_id) from billed_periods where tenant_id = $1", tid) == n
    shards = await admin_conn.fetch(
        "select shard, status, subscriptions_due, executed_by from billing_run_shards where run_id = $1", run.id)
    assert sorted(s["shard"] for s in shards) == list(range(16))
    assert {s["status"] for s in shards} == {"completed"} and sum(s["subscriptions_due"] for s in shards) == n
    assert len({s["executed_by"] for s in shards}) == 2  # both executors executed shards


async def test_an_immediate_cancel_waits_for_a_usage_batch_and_bills_its_event(service, stub, tenant, admin_conn):
    """The race with a change mid-period, batch first: a usage batch holding the subscription
    (KEY SHARE, not committed yet) makes an immediate cancel wait, and the cancel's final
    request then bills the batch's event. Before session 4 mid-period usage took no lock:
    the cancel billed the period without the event, which then landed on time in a period
    no request bills."""
    plan = await _weekly_plan(stub, tenant)
    sub = await _sub(stub, tenant, plan, NOW() - timedelta(days=1))  # mid-period: ends in ~6 days
    sid, tid = uuid.UUID(sub.id), uuid.UUID(tenant.id)
    release = asyncio.Event()

    async def usage_batch():
        async with service.db.tenant_tx(tid) as conn:
            event = UsageEvent("mid-1", str(tid), str(sid), "api_calls", "2000", to_us(NOW() - timedelta(hours=1)))
            result = await ingest(conn, [event], now_us=to_us(NOW()), limits=UsageLimits(), plans=PlanCache())
            assert result.inserted == 1 and result.late == 0
            await release.wait()

    async def cancel_now():
        return await stub.CancelSubscription(pb.CancelSubscriptionRequest(
            request_id=rid(), id=sub.id, mode=pb.CANCEL_MODE_IMMEDIATELY), metadata=tenant.md)

    batch = asyncio.create_task(usage_batch())
    try:
        await asyncio.sleep(0.5)
        cancel = asyncio.create_task(cancel_now())
        await asyncio.sleep(1.5)
        assert not cancel.done()  # waits for the batch's commit
    finally:
        release.set()
        await batch
    assert (await asyncio.wait_for(cancel, 10)).subscription.status == pb.SUBSCRIPTION_STATUS_CANCELED
    [final] = await _invoices(admin_conn, tid, sub.id)
    usage = [ln for ln in final["lines"] if ln["kind"] == "usage"]
    assert [(u["quantity"], u["amount"]) for u in usage] == [("2000", "5.00")]


async def test_a_usage_batch_waits_for_a_change_and_then_sees_it(service, stub, tenant, migrated):
    """The race with a change mid-period, change first: a usage batch waits for a change
    holding the subscription's row (FOR UPDATE, as every change does), then reads what it
    committed: here a cancel, so an event from before the cancel is late (billed by the next
    run as late usage), not on time in the period the cancel billed."""
    plan = await _weekly_plan(stub, tenant)
    sub = await _sub(stub, tenant, plan, NOW() - timedelta(days=1))
    sid, tid = uuid.UUID(sub.id), uuid.UUID(tenant.id)
    change = await asyncpg.connect(migrated.admin_database_url)
    try:
        tx = change.transaction()
        await tx.start()
        await change.execute("select 1 from subscriptions where tenant_id = $1 and id = $2 for update", tid, sid)
        await change.execute("update subscriptions set status = 'canceled', canceled_at = now() where id = $1", sid)
        record = asyncio.create_task(_usage(stub, tenant, sub.id, "5", NOW() - timedelta(hours=1), "waits"))
        await asyncio.sleep(1.0)
        assert not record.done()  # held by the change's row lock
        await tx.commit()
        assert (await asyncio.wait_for(record, 10)).duplicate is False
        row = await change.fetchrow("select late from usage_events where tenant_id = $1 and event_id = $2",
                                    tid, "waits")
        assert row["late"] is True
    finally:
        await change.close()


async def test_a_period_billed_before_is_advanced_past_but_not_billed_again(service, stub, tenant, admin_conn):
    """billed_periods is the once-only guarantee whatever the subscription row says: a period
    marked billed already (here by hand, as a restored backup or a bug could leave it) gets
    no second invoice request; the subscription only moves on, counted as skipped, with its
    audit row. Its neighbour in the same chunk is billed as usual."""
    plan = await _weekly_plan(stub, tenant)
    billed = await _sub(stub, tenant, plan, NOW() - timedelta(days=10))
    other = await _sub(stub, tenant, plan, NOW() - timedelta(days=10))
    tid, sid = uuid.UUID(tenant.id), uuid.UUID(billed.id)
    start = billed.current_period_start.ToDatetime(timezone.utc)
    end = billed.current_period_end.ToDatetime(timezone.utc)
    earlier_run = uuid.uuid4()
    await admin_conn.execute("insert into billing_runs (tenant_id, id, idempotency_key, as_of) values ($1, $2, $3, $4)",
                             tid, earlier_run, f"earlier-{earlier_run}", end)
    await admin_conn.execute(
        "insert into billed_periods (tenant_id, subscription_id, period_start, period_end, invoice_request_id, run_id)"
        " values ($1, $2, $3, $4, $5, $6)", tid, sid, start, end, invoice_request_id(tid, sid, start), earlier_run)

    done = await _run(service, tenant, NOW())

    assert (done.subscriptions_due, done.subscriptions_billed, done.subscriptions_skipped,
            done.subscriptions_failed) == (2, 1, 1, 0)
    assert await _invoices(admin_conn, tid, billed.id) == []  # no second request for the period
    [inv] = await _invoices(admin_conn, tid, other.id)
    assert inv["total"] == "10.00"
    row = await admin_conn.fetchrow("select current_period_start from subscriptions where id = $1", sid)
    assert row["current_period_start"] == end  # moved on all the same
    marks = await admin_conn.fetch("select run_id from billed_periods where subscription_id = $1", sid)
    assert [m["run_id"] for m in marks] == [earlier_run]  # the first mark stays the only one
    audit = await admin_conn.fetchrow(
        "select action, after from audit_events where entity_id = $1 and actor like 'billing-run:%'", sid)
    assert audit["action"] == "subscription.period_advanced"
    assert audit["after"]["details"]["run_id"] == str(done.id)


async def test_unique_count_charges_are_counted_per_period_from_the_raw_events(service, stub, tenant, admin_conn):
    """A unique_count charge bills the distinct values of its property in the period, read
    from the raw events by the chunk (one query per metric for all its subscriptions):
    users a, b, a, c = 3 seats at 5.00; an event without the property counts for nothing;
    a subscription of the same chunk without events gets a zero line."""
    req = plan_request(base_fee="10.00", trial_days=0, interval=pb.INTERVAL_UNIT_WEEK,
                       billing_timing=pb.BILLING_TIMING_IN_ARREARS, usage_charges=[
                           pb.UsageCharge(metric_code="seats", aggregation=pb.AGGREGATION_UNIQUE_COUNT,
                                          pricing_model=pb.PRICING_MODEL_PER_UNIT, unit_price="5.00",
                                          unique_property="user")])
    plan = (await stub.CreatePlan(req, metadata=tenant.md)).plan
    busy = await _sub(stub, tenant, plan, NOW() - timedelta(days=10))
    idle = await _sub(stub, tenant, plan, NOW() - timedelta(days=10))
    at = busy.current_period_start.ToDatetime(timezone.utc) + timedelta(days=1)
    for i, user in enumerate(["a", "b", "a", "c", None]):
        await stub.RecordUsage(pb.RecordUsageRequest(
            request_id=rid(), subscription_id=busy.id, metric_code="seats", quantity="1",
            occurred_at=ts(at + timedelta(minutes=i)), properties={"user": user} if user else {"team": "x"}),
            metadata=tenant.md)

    done = await _run(service, tenant, NOW())

    assert (done.subscriptions_billed, done.subscriptions_failed) == (2, 0)
    tid = uuid.UUID(tenant.id)
    [inv] = await _invoices(admin_conn, tid, busy.id)
    [seats] = [ln for ln in inv["lines"] if ln["kind"] == "usage"]
    assert (seats["metric_code"], seats["quantity"], seats["amount"]) == ("seats", "3", "15.00")
    assert inv["total"] == "25.00"
    [none] = await _invoices(admin_conn, tid, idle.id)
    assert [(ln["quantity"], ln["amount"]) for ln in none["lines"] if ln["kind"] == "usage"] == [("0", "0.00")]
    assert none["total"] == "10.00"


async def test_a_run_persists_the_state_changes_of_its_closes(service, stub, tenant, admin_conn):
    """One chunk, four kinds of close, and what each leaves in the database: a trial that
    ended becomes active (trial_end kept), a cancel at period end becomes canceled, a plan
    change due at period end takes effect (pending change cleared), a plain advance only
    moves the period. The run writes only the columns its closes changed: each of these
    must land all the same, with its audit row, and the first three with their event."""
    plan = await _weekly_plan(stub, tenant)
    cheap = (await stub.CreatePlan(plan_request(
        base_fee="5.00", trial_days=0, interval=pb.INTERVAL_UNIT_WEEK, billing_timing=pb.BILLING_TIMING_IN_ARREARS,
        usage_charges=[]), metadata=tenant.md)).plan
    start = NOW() - timedelta(days=10)
    trial = (await stub.CreateSubscription(pb.CreateSubscriptionRequest(
        request_id=rid(), customer_id="c-trial", plan_id=plan.id, activate=True, start_at=ts(start), trial_days=7),
        metadata=tenant.md)).subscription
    assert trial.status == pb.SUBSCRIPTION_STATUS_TRIALING
    # The cancel and the plan change at period end as if asked before the period ended (asked
    # now, the ended period would be closed first: docs/subscriptions.md).
    leaving = await _sub(stub, tenant, plan, start)
    await admin_conn.execute("update subscriptions set cancel_at_period_end = true where id = $1",
                             uuid.UUID(leaving.id))
    moving = await _sub(stub, tenant, plan, start)
    await admin_conn.execute("update subscriptions set pending_plan_id = $2, pending_change_at = current_period_end"
                             " where id = $1", uuid.UUID(moving.id), uuid.UUID(cheap.id))
    plain = await _sub(stub, tenant, plan, start)

    done = await _run(service, tenant, NOW())

    assert (done.subscriptions_billed, done.subscriptions_failed) == (4, 0)
    rows = {str(r["id"]): r for r in await admin_conn.fetch(
        "select id, status, plan_id, pending_plan_id, pending_change_at, trial_end, canceled_at,"
        " cancel_at_period_end, current_period_start, current_period_end from subscriptions where tenant_id = $1",
        uuid.UUID(tenant.id))}
    t, c, m, p = rows[trial.id], rows[leaving.id], rows[moving.id], rows[plain.id]
    trial_end = trial.current_period_end.ToDatetime(timezone.utc)
    assert (t["status"], t["trial_end"]) == ("active", trial_end)
    assert t["current_period_start"] == trial_end  # the first paid period follows the trial
    assert (c["status"], c["cancel_at_period_end"]) == ("canceled", False)
    assert c["canceled_at"] == leaving.current_period_end.ToDatetime(timezone.utc)
    assert (str(m["plan_id"]), m["pending_plan_id"], m["pending_change_at"]) == (cheap.id, None, None)
    assert m["status"] == p["status"] == "active"
    assert p["current_period_start"] == plain.current_period_end.ToDatetime(timezone.utc)
    assert p["current_period_end"] == p["current_period_start"] + timedelta(days=7)
    actions = {str(r["entity_id"]): r["action"] for r in await admin_conn.fetch(
        "select entity_id, action from audit_events where tenant_id = $1 and actor like 'billing-run:%'",
        uuid.UUID(tenant.id))}
    assert actions == {trial.id: "subscription.trial_ended", leaving.id: "subscription.canceled",
                       moving.id: "subscription.plan_changed", plain.id: "subscription.period_advanced"}
    published = [codec.decode(codec.Schema.SUBSCRIPTION_EVENT, r["payload"]) for r in await admin_conn.fetch(
        "select payload from outbox where tenant_id = $1 and stream = 'subscription_events'", uuid.UUID(tenant.id))]
    by_run = {(e["subscription_id"], e["type"], e["from_status"], e["to_status"]) for e in published
              if (e["request_id"] or "").startswith("billing-run:")}
    assert by_run == {(trial.id, "subscription.trial_ended", "trialing", "active"),
                      (leaving.id, "subscription.canceled", "active", "canceled"),
                      (moving.id, "subscription.plan_changed", "active", None)}


async def test_one_chunk_prices_every_aggregation_from_the_totals_it_reads(service, stub, tenant, admin_conn):
    """A run reads only the usage totals the chunk's plans price on: a chunk holding a
    subscription of a sum-only plan and one of a plan with every total-based aggregation
    must still price max, latest and count from their own totals."""
    gauges = (await stub.CreatePlan(plan_request(
        base_fee="0.00", trial_days=0, interval=pb.INTERVAL_UNIT_WEEK, billing_timing=pb.BILLING_TIMING_IN_ARREARS,
        usage_charges=[
            pb.UsageCharge(metric_code="api_calls", aggregation=pb.AGGREGATION_SUM,
                           pricing_model=pb.PRICING_MODEL_PER_UNIT, unit_price="0.0025"),
            pb.UsageCharge(metric_code="storage_gb", aggregation=pb.AGGREGATION_MAX,
                           pricing_model=pb.PRICING_MODEL_PER_UNIT, unit_price="0.10"),
            pb.UsageCharge(metric_code="seats", aggregation=pb.AGGREGATION_LATEST,
                           pricing_model=pb.PRICING_MODEL_PER_UNIT, unit_price="5.00"),
            pb.UsageCharge(metric_code="requests", aggregation=pb.AGGREGATION_COUNT,
                           pricing_model=pb.PRICING_MODEL_PER_UNIT, unit_price="0.01"),
        ]), metadata=tenant.md)).plan
    summed = await _weekly_plan(stub, tenant)
    start = NOW() - timedelta(days=8)
    a, b = await _sub(stub, tenant, gauges, start), await _sub(stub, tenant, summed, start)
    p1 = a.current_period_start.ToDatetime(timezone.utc)
    for metric, quantity, hours in [("api_calls", "1500", 1), ("api_calls", "500", 2),
                                    ("storage_gb", "30", 1), ("storage_gb", "50", 2), ("storage_gb", "40", 3),
                                    ("seats", "3", 1), ("seats", "9", 5), ("seats", "7", 4),
                                    ("requests", "100", 1), ("requests", "200", 2), ("requests", "1", 3)]:
        await stub.RecordUsage(pb.RecordUsageRequest(
            request_id=rid(), subscription_id=a.id, metric_code=metric, quantity=quantity,
            occurred_at=ts(p1 + timedelta(hours=hours))), metadata=tenant.md)
    await _usage(stub, tenant, b.id, "1000", p1 + timedelta(hours=1))

    done = await _run(service, tenant, p1 + timedelta(days=7, hours=1))
    assert (done.subscriptions_billed, done.subscriptions_failed) == (2, 0)
    tid = uuid.UUID(tenant.id)
    [inv_a], [inv_b] = await _invoices(admin_conn, tid, a.id), await _invoices(admin_conn, tid, b.id)
    # sum 2,000 x 0.0025 = 5.00; max 50 x 0.10 = 5.00; latest (by time: 9 at +5h) 9 x 5.00 = 45.00;
    # count 3 x 0.01 = 0.03; no base fee.
    assert sorted((ln["metric_code"], ln["quantity"], ln["amount"]) for ln in inv_a["lines"]) == [
        ("api_calls", "2000", "5.00"), ("requests", "3", "0.03"), ("seats", "9", "45.00"),
        ("storage_gb", "50", "5.00")]
    assert inv_a["total"] == "55.03"
    assert [(ln["kind"], ln["amount"]) for ln in inv_b["lines"]] == [("base_fee", "10.00"), ("usage", "2.50")]
    assert done.totals == (("EUR", "67.53"),)
