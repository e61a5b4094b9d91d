"""Rows of progressive_invoices (migration 029, docs/billing.md "Progressive billing"): what
threshold invoices charged in a period, which its final invoice subtracts."""
from __future__ import annotations

import hashlib
import uuid
from datetime import datetime
from decimal import Decimal

import asyncpg


async def insert(conn: asyncpg.Connection, tenant_id: uuid.UUID, subscription_id: uuid.UUID, period_start: datetime,
                 threshold_id: uuid.UUID, invoice_request_id: uuid.UUID, amount: Decimal) -> None:
    await conn.execute(
        """insert into progressive_invoices (tenant_id, subscription_id, period_start, threshold_id,
                                             invoice_request_id, amount)
           values ($1, $2, $3, $4, $5, $6)""",
        tenant_id, subscription_id, period_start, threshold_id, invoice_request_id, amount)


async def billed(conn: asyncpg.Connection, tenant_id: uuid.UUID, subscription_id: uuid.UUID,
                 period_start: datetime) -> Decimal:
    """What the period's threshold invoices charged so far (0: none)."""
    return await conn.fetchval(
        """select coalesce(sum(amount), 0) from progressive_invoices
            where tenant_id = $1 and subscription_id = $2 and period_start = $3""",
        tenant_id, subscription_id, period_start)


async def billed_from(conn: asyncpg.Connection, tenant_id: uuid.UUID,
                      firsts: list[tuple[uuid.UUID, datetime]]) -> dict[tuple[uuid.UUID, datetime], Decimal]:
    """For a chunk: what threshold invoices charged in each period of these subscriptions
    from the given first period on, by (subscription, period start). One statement."""
    if not firsts:
        return {}
    subs, starts = [s for s, _ in firsts], [t for _, t in firsts]
    rows = await conn.fetch(
        """select p.subscription_id, p.period_start, sum(p.amount) as amount
             from unnest($2::uuid[], $3::timestamptz[]) as f(sub, first_start)
             join progressive_invoices p
               on p.tenant_id = $1 and p.subscription_id = f.sub and p.period_start >= f.first_start
            group by p.subscription_id, p.period_start""",
        tenant_id, subs, starts)
    return {(r["subscription_id"], r["period_start"]): r["amount"] for r in rows}


async def lock_period(conn: asyncpg.Connection, tenant_id: uuid.UUID, subscription_id: uuid.UUID) -> None:
    """Serialize, per subscription, the batches that may write a threshold invoice: each
    reads the running amount and what was charged after the one before it committed (a
    transaction-scoped advisory lock: released at commit or rollback)."""
    digest = hashlib.blake2b(f"progressive/{tenant_id}/{subscription_id}".encode(), digest_size=8).digest()
    await conn.execute("select pg_advisory_xact_lock($1)", int.from_bytes(digest, "big", signed=True))
