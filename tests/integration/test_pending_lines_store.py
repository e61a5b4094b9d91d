"""billing.store.pending_lines against real PostgreSQL: add (idempotent), unbilled (ordered), mark_billed, RLS."""
from __future__ import annotations

import uuid
from datetime import datetime, timezone
from decimal import Decimal
from fractions import Fraction

import asyncpg

from billing.domain.pricing import Line
from billing.store import pending_lines
from billing.store.db import init_connection, set_tenant
from tests.integration.test_subscriptions_api import make_plan, make_sub

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
T1 = datetime(2026, 1, 16, tzinfo=timezone.utc)
T2 = datetime(2026, 2, 1, tzinfo=timezone.utc)


def _line(kind: str, amount: str, fraction: Fraction | None = Fraction(1, 2)) -> Line:
    return Line(kind=kind, description=f"{kind} line", metric_code=None, quantity=Decimal(1),
                unit_price=Decimal("10"), amount=Decimal(amount), period_start=T1, period_end=T2, fraction=fraction)


async def _app_conn(migrated, tenant_id: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(migrated.worker_database_url)
    await init_connection(conn)
    return conn


async def test_add_unbilled_mark_billed(migrated, stub, tenant, new_tenant):
    plan = await make_plan(stub, tenant)
    sub = await make_sub(stub, tenant, plan)
    tid, sid = uuid.UUID(tenant.id), uuid.UUID(sub.id)
    conn = await _app_conn(migrated, tenant.id)
    try:
        async with conn.transaction():
            await set_tenant(conn, tid)
            lines = [_line("proration_credit", "-5.00"), _line("proration_charge", "10.00"),
                     _line("base_fee", "3.33", None)]
            ids = await pending_lines.add(conn, tid, sid, "EUR", lines, "change_plan:r1")
            again = await pending_lines.add(conn, tid, sid, "EUR", lines, "change_plan:r1")
            assert ids == again and len(set(ids)) == 3
            got = await pending_lines.unbilled(conn, tid, [sid, uuid.uuid4()])
            assert list(got) == [sid]
            assert [i for i, _ in got[sid]] == ids
            assert [ln for _, ln in got[sid]] == lines  # exact round trip, fraction included
            req = uuid.uuid4()
            assert await pending_lines.mark_billed(conn, tid, ids[:2], [req, req]) == 2
            assert await pending_lines.mark_billed(conn, tid, ids[:2], [uuid.uuid4()] * 2) == 0  # first wins
            left = await pending_lines.unbilled(conn, tid, [sid])
            assert [i for i, _ in left[sid]] == ids[2:]
            billed_now = await pending_lines.add(conn, tid, sid, "EUR", [_line("proration_credit", "-1.00")],
                                                 "cancel:r2", invoice_request_id=req)
            assert billed_now[0] not in {i for i, _ in (await pending_lines.unbilled(conn, tid, [sid]))[sid]}
        other = await new_tenant()
        async with conn.transaction():
            await set_tenant(conn, uuid.UUID(other.id))
            assert await pending_lines.unbilled(conn, uuid.UUID(other.id), [sid]) == {}
            assert await pending_lines.unbilled(conn, tid, [sid]) == {}  # RLS, not only the where clause
    finally:
        await conn.close()


async def test_opened_by_a_run_is_the_billed_period_ending_at_the_start(migrated, stub, tenant):
    """The read "did a run bill the period that ends where this one starts?" (a chunk asks it
    for many subscriptions, an API call for one) against billed periods [T0, T1), [T1, T2),
    written by insert_billed_periods, which also reports a period billed before (its
    fallback after a unique violation) without marking it twice."""
    from billing.store import billing as billing_store

    plan = await make_plan(stub, tenant)
    sub, other = await make_sub(stub, tenant, plan), await make_sub(stub, tenant, plan)
    tid, sid, oid = uuid.UUID(tenant.id), uuid.UUID(sub.id), uuid.UUID(other.id)
    run = uuid.uuid4()
    conn = await _app_conn(migrated, tenant.id)
    try:
        async with conn.transaction():
            await set_tenant(conn, tid)
            await conn.execute("insert into billing_runs (tenant_id, id, idempotency_key, as_of) values ($1, $2, $3, $4)",
                               tid, run, f"k-{run}", T2)
            row = lambda s, a, b: (s, a, b, uuid.uuid4(), uuid.UUID(plan.id), False)  # noqa: E731
            assert await billing_store.insert_billed_periods(conn, tid, run, [row(sid, T0, T1)]) == set()
            # [T0, T1) again, with [T1, T2) beside it: only the new one is marked
            again = await billing_store.insert_billed_periods(conn, tid, run, [row(sid, T0, T1), row(sid, T1, T2)])
            assert again == {(sid, T0)}
            assert await conn.fetchval("select count(*) from billed_periods where subscription_id = $1", sid) == 2
            later = datetime(2026, 3, 1, tzinfo=timezone.utc)
            asked = [(sid, T0), (sid, T1), (sid, T2), (sid, later), (oid, T1)]
            assert await billing_store.opened_by_a_run(conn, tid, asked) == {sid}
            assert await billing_store.opened_by_a_run(conn, tid, [(sid, T1)]) == {sid}
            assert await billing_store.opened_by_a_run(conn, tid, [(sid, later), (sid, T0), (oid, T2)]) == set()
            single = [s in await billing_store.opened_by_a_run(conn, tid, [(s, t)]) for s, t in asked]
            assert single == [False, True, True, False, False]
    finally:
        await conn.close()
