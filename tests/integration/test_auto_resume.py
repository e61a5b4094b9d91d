"""Automatic resumption against real PostgreSQL: a paused subscription whose pause_resumes_at
has passed is resumed by the scheduler's pass exactly as ResumeSubscription would (status,
audit row, event in the outbox, pause window), taking effect AT pause_resumes_at; a second
or concurrent pass does nothing more; pauses without a resume time stay; every tenant is
handled under its own tenant.

The subscriptions are paused over gRPC with a resume time in the future (the API refuses
one in the past), then the pause is moved into the past with the owner's connection.
"""
from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal as D
from fractions import Fraction

import grpc
import pytest

from billing import codec
from billing.domain.periods import period_containing, to_us
from billing.domain.plans import IntervalUnit
from billing.domain.proration import elapsed, prorated_amount
from billing.services.scheduler import resume_due, schedule_once, slot_start
from billing.store.db import Database
from billing.v1 import billing_pb2 as pb
from tests.integration.test_proration_api import _plan, _sub
from tests.integration.test_subscriptions_api import rid, ts

UTC = timezone.utc


async def _paused(stub, tenant, admin_conn, plan, *, paused_ago: timedelta | None = timedelta(days=2),
                  resumes_ago: timedelta | None = timedelta(days=1), days_ago: float = 10) -> pb.Subscription:
    """A subscription paused `paused_ago`, its resume due `resumes_ago` (None: no resume time)."""
    sub = await _sub(stub, tenant, plan, days_ago=days_ago)
    resumes = ts(datetime.now(UTC) + timedelta(hours=1)) if resumes_ago is not None else None
    await stub.PauseSubscription(pb.PauseSubscriptionRequest(request_id=rid(), id=sub.id, resumes_at=resumes),
                                 metadata=tenant.md)
    now = datetime.now(UTC)
    await admin_conn.execute(
        "update subscriptions set paused_at = $2, pause_resumes_at = $3 where id = $1", uuid.UUID(sub.id),
        now - paused_ago, now - resumes_ago if resumes_ago is not None else None)
    return sub


async def _row(admin_conn, sub_id: str):
    return await admin_conn.fetchrow("select * from subscriptions where id = $1", uuid.UUID(sub_id))


async def _audit(admin_conn, sub_id: str, action: str = "subscription.resumed") -> list:
    return await admin_conn.fetch(
        "select * from audit_events where entity_id = $1 and action = $2 order by id", uuid.UUID(sub_id), action)


async def _events(admin_conn, sub_id: str, event_type: str = "subscription.resumed") -> list[dict]:
    rows = await admin_conn.fetch(
        "select tenant_id, key, payload from outbox where stream = 'subscription_events' and key = $1 order by id",
        sub_id.encode())
    decoded = [(r["tenant_id"], codec.decode(codec.Schema.SUBSCRIPTION_EVENT, bytes(r["payload"]))) for r in rows]
    return [{"outbox_tenant": t, **e} for t, e in decoded if e["type"] == event_type]


async def _db(migrated, max_size: int = 4) -> Database:
    return await Database.connect(migrated.worker_database_url, min_size=1, max_size=max_size)


async def test_a_due_pause_is_resumed_once_at_its_resume_time(migrated, stub, tenant, admin_conn):
    plan = await _plan(stub, tenant, "30.00")
    sub = await _paused(stub, tenant, admin_conn, plan)
    before = await _row(admin_conn, sub.id)
    resumes_at, paused_at = before["pause_resumes_at"], before["paused_at"]
    db = await _db(migrated)
    try:
        assert await resume_due(db, datetime.now(UTC), 100) >= 1
        after = await _row(admin_conn, sub.id)
        assert after["status"] == "active" and after["paused_at"] is None and after["pause_resumes_at"] is None
        # The period is chargeable from the scheduled resume (to its second), not from when the pass ran.
        assert resumes_at - timedelta(seconds=1) < after["period_fee_from"] <= resumes_at
        # The paused time ends AT pause_resumes_at: usage after it is billed, usage in the pause is not.
        window = await admin_conn.fetch("select paused_at, resumed_at from pause_windows where subscription_id = $1",
                                        uuid.UUID(sub.id))
        assert [(w["paused_at"], w["resumed_at"]) for w in window] == [(paused_at, resumes_at)]
        audit = await _audit(admin_conn, sub.id)
        assert len(audit) == 1
        assert audit[0]["actor"] == "system:scheduler" and audit[0]["tenant_id"] == uuid.UUID(tenant.id)
        assert audit[0]["request_id"] == f"auto-resume:{paused_at.isoformat()}"
        assert audit[0]["before"]["status"] == "paused" and audit[0]["after"]["status"] == "active"
        assert audit[0]["after"]["details"]["resumed_at"] == resumes_at.isoformat()
        assert audit[0]["after"]["details"]["trigger"] == "scheduled"
        events = await _events(admin_conn, sub.id)
        assert len(events) == 1
        event = events[0]
        assert event["outbox_tenant"] == uuid.UUID(tenant.id) and event["tenant_id"] == tenant.id
        assert (event["from_status"], event["to_status"]) == ("paused", "active")
        assert event["occurred_at_us"] == to_us(resumes_at)
        assert event["data"]["trigger"] == "scheduled"
        # GetSubscription shows it, with the scheduler as the actor of the resume.
        got = await stub.GetSubscription(pb.GetSubscriptionRequest(id=sub.id, include_history=True),
                                         metadata=tenant.md)
        assert got.subscription.status == pb.SUBSCRIPTION_STATUS_ACTIVE
        assert got.subscription.history[-1].actor == "system:scheduler"

        # A second pass does nothing more.
        counts = (len(await _audit(admin_conn, sub.id)), len(await _events(admin_conn, sub.id)))
        await resume_due(db, datetime.now(UTC), 100)
        assert (len(await _audit(admin_conn, sub.id)), len(await _events(admin_conn, sub.id))) == counts == (1, 1)
        assert await _row(admin_conn, sub.id) == after
    finally:
        await db.close()


async def test_pauses_not_due_or_without_a_resume_time_stay_paused(migrated, stub, tenant, admin_conn):
    plan = await _plan(stub, tenant, "30.00")
    forever = await _paused(stub, tenant, admin_conn, plan, resumes_ago=None)
    later = await _paused(stub, tenant, admin_conn, plan, resumes_ago=-timedelta(hours=1))
    db = await _db(migrated)
    try:
        await resume_due(db, datetime.now(UTC), 100)
    finally:
        await db.close()
    for sub in (forever, later):
        row = await _row(admin_conn, sub.id)
        assert row["status"] == "paused" and await _audit(admin_conn, sub.id) == []
        assert await _events(admin_conn, sub.id) == []


async def test_concurrent_passes_resume_each_subscription_once(migrated, stub, tenant, admin_conn):
    plan = await _plan(stub, tenant, "12.00", timing=pb.BILLING_TIMING_IN_ARREARS)
    subs = [await _paused(stub, tenant, admin_conn, plan, resumes_ago=timedelta(hours=1 + i)) for i in range(7)]
    dbs = [await _db(migrated, max_size=2) for _ in range(3)]  # three replicas
    try:
        now = datetime.now(UTC)
        # Small batches: every pass loops over several transactions while the others take rows too.
        await asyncio.gather(*(resume_due(db, now, 2) for db in dbs))
    finally:
        for db in dbs:
            await db.close()
    for sub in subs:
        assert (await _row(admin_conn, sub.id))["status"] == "active"
        assert len(await _audit(admin_conn, sub.id)) == 1 and len(await _events(admin_conn, sub.id)) == 1
        assert await admin_conn.fetchval("select count(*) from pause_windows where subscription_id = $1",
                                         uuid.UUID(sub.id)) == 1


async def test_every_tenant_is_resumed_under_its_own_tenant(migrated, stub, new_tenant, admin_conn):
    a, b = await new_tenant(), await new_tenant()
    sub_a = await _paused(stub, a, admin_conn, await _plan(stub, a, "10.00"))
    sub_b = await _paused(stub, b, admin_conn, await _plan(stub, b, "20.00"))
    db = await _db(migrated)
    try:
        assert await resume_due(db, datetime.now(UTC), 100) >= 2
        for t, sub, other in ((a, sub_a, sub_b), (b, sub_b, sub_a)):
            assert (await _row(admin_conn, sub.id))["tenant_id"] == uuid.UUID(t.id)
            assert [r["tenant_id"] for r in await _audit(admin_conn, sub.id)] == [uuid.UUID(t.id)]
            assert [e["outbox_tenant"] for e in await _events(admin_conn, sub.id)] == [uuid.UUID(t.id)]
            # Under a tenant's row-level security only its own rows are there.
            async with db.tenant_tx(uuid.UUID(t.id)) as conn:
                seen = {r["entity_id"] for r in await conn.fetch(
                    "select entity_id from audit_events where action = 'subscription.resumed'")}
                assert uuid.UUID(sub.id) in seen and uuid.UUID(other.id) not in seen
                assert await conn.fetchval("select count(*) from pause_windows where subscription_id = $1",
                                           uuid.UUID(other.id)) == 0
    finally:
        await db.close()


async def test_a_resume_in_a_period_a_run_closed_as_paused_charges_that_time(migrated, stub, tenant, admin_conn):
    """The run closed the period in which the resume was due (as paused, charging nothing after
    the pause) before the pass resumed it: the time from the resume to the period end is
    charged on the next invoice, the current period from its start."""
    plan = await _plan(stub, tenant, "30.00", timing=pb.BILLING_TIMING_IN_ARREARS)
    sub = await _paused(stub, tenant, admin_conn, plan, days_ago=40)
    start = (await _row(admin_conn, sub.id))["current_period_start"]
    paused_at, resumes_at = start - timedelta(days=5), start - timedelta(days=3, hours=12)
    await admin_conn.execute("update subscriptions set paused_at = $2, pause_resumes_at = $3 where id = $1",
                             uuid.UUID(sub.id), paused_at, resumes_at)
    db = await _db(migrated)
    try:
        await resume_due(db, datetime.now(UTC), 100)
    finally:
        await db.close()
    row = await _row(admin_conn, sub.id)
    assert row["status"] == "active" and row["period_fee_from"] == start
    lines = await admin_conn.fetch("select * from pending_lines where subscription_id = $1 and source like 'resume:%'",
                                   uuid.UUID(sub.id))
    assert [(r["kind"], r["source"]) for r in lines] == [("proration_charge", f"resume:auto-resume:{paused_at.isoformat()}")]
    line = lines[0]
    assert line["period_end"] == start and resumes_at - timedelta(seconds=1) < line["period_start"] <= resumes_at
    assert line["invoice_request_id"] is None  # goes into the subscription's next invoice request
    ps, pe = period_containing(row["billing_anchor"], IntervalUnit.MONTH, 1, resumes_at)
    assert pe == start
    frac = Fraction(line["fraction_num"], line["fraction_den"])
    assert frac == Fraction(elapsed(ps, start) - elapsed(ps, line["period_start"]), elapsed(ps, start))
    assert line["amount"] == prorated_amount(D("30.00"), frac, "EUR") > 0


async def test_a_scheduler_round_resumes_what_is_due_before_requesting_runs(migrated, stub, tenant, admin_conn):
    plan = await _plan(stub, tenant, "30.00")
    sub = await _paused(stub, tenant, admin_conn, plan)
    db = await _db(migrated)
    try:
        now = datetime.now(UTC)
        await schedule_once(db, now, 3600, resume_batch_size=50)
    finally:
        await db.close()
    assert (await _row(admin_conn, sub.id))["status"] == "active"
    run_created = await admin_conn.fetchval(
        "select created_at from billing_runs where tenant_id = $1 and idempotency_key = $2", uuid.UUID(tenant.id),
        f"scheduler:{slot_start(now, 3600).isoformat()}")
    assert run_created is not None
    assert (await _audit(admin_conn, sub.id))[0]["at"] <= run_created


async def test_usage_after_the_resume_time_counts_before_the_pass_has_run(migrated, stub, tenant, admin_conn):
    """The pause ends at pause_resumes_at for usage too: an event after it is billed even
    while the pass has not resumed the subscription yet; an event in the pause is refused."""
    charge = pb.UsageCharge(metric_code="api_calls", aggregation=pb.AGGREGATION_SUM,
                            pricing_model=pb.PRICING_MODEL_PER_UNIT, unit_price="0.01")
    plan = await _plan(stub, tenant, "10.00", charges=[charge])
    sub = await _paused(stub, tenant, admin_conn, plan)
    row = await _row(admin_conn, sub.id)

    async def record(at: datetime):
        return await stub.RecordUsage(pb.RecordUsageRequest(
            request_id=rid(), event_id=rid(), subscription_id=sub.id, metric_code="api_calls", quantity="1",
            occurred_at=ts(at)), metadata=tenant.md)

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await record(row["pause_resumes_at"] - timedelta(minutes=1))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    await record(row["pause_resumes_at"])
    await record(datetime.now(UTC))
    assert (await _row(admin_conn, sub.id))["status"] == "paused"  # not resumed yet
    assert await admin_conn.fetchval("select quantity_sum from usage_totals where subscription_id = $1",
                                     uuid.UUID(sub.id)) == D(2)


async def test_billing_serve_scheduler_role_resumes_on_its_own(migrated, stub, tenant, admin_conn):
    from billing.devstack import free_port
    from billing.runtime import Service

    plan = await _plan(stub, tenant, "30.00")
    sub = await _paused(stub, tenant, admin_conn, plan)
    settings = migrated.model_copy(update={"scheduler_interval_s": 0, "auto_resume_interval_s": 0.2,
                                           "auto_resume_batch_size": 10, "http_port": free_port()})
    svc = Service(settings, roles=("scheduler",))
    await svc.start()
    try:
        for _ in range(100):
            if (await _row(admin_conn, sub.id))["status"] == "active":
                break
            await asyncio.sleep(0.1)
    finally:
        await svc.stop()
    assert (await _row(admin_conn, sub.id))["status"] == "active"
    assert [r["actor"] for r in await _audit(admin_conn, sub.id)] == ["system:scheduler"]
