"""GetSubscription, ListSubscriptions and GetUsage's reads in one statement each (migration
042: `subscription_read`, `usage_read`): the key check, the tenant and the reads in a single
round trip, where a `tenant_tx` takes four or five (BEGIN, the reads, COMMIT). Called through
`Database.tenant_statement`, which hands in the call's API keys or the process's token."""
from __future__ import annotations

import uuid
from datetime import datetime

import asyncpg

_SUBSCRIPTIONS = "select * from subscription_read($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
_USAGE = "select * from usage_read($1, $2, $3, $4, $5)"


async def subscription(conn: asyncpg.Connection, tenant_id: uuid.UUID, key_hashes: tuple[bytes, ...],
                       token: str | None, subscription_id: uuid.UUID) -> asyncpg.Record | None:
    """The subscription's columns (store/subscriptions.FIELDS), `test_clock_id`, `plan_code`
    and `pending_plan_code` (None: that plan is not found); None: no such subscription."""
    rows = await conn.fetch(_SUBSCRIPTIONS, tenant_id, list(key_hashes), token, subscription_id,
                            None, None, None, None, None, 1)
    return rows[0] if rows else None


async def subscription_page(conn: asyncpg.Connection, tenant_id: uuid.UUID, key_hashes: tuple[bytes, ...],
                            token: str | None, *, status: str | None, customer_id: str | None,
                            plan_id: uuid.UUID | None, after: tuple[datetime, uuid.UUID] | None,
                            limit: int) -> list[asyncpg.Record]:
    """A page as store/subscriptions.list_page reads it, each row as `subscription` gives it."""
    after_at, after_id = after if after else (None, None)
    return await conn.fetch(_SUBSCRIPTIONS, tenant_id, list(key_hashes), token, None, status, customer_id,
                            plan_id, after_at, after_id, limit)


async def usage(conn: asyncpg.Connection, tenant_id: uuid.UUID, key_hashes: tuple[bytes, ...], token: str | None,
                subscription_id: uuid.UUID, period_start: datetime | None) -> list[asyncpg.Record]:
    """No row: no such subscription. Otherwise the subscription's columns on every row, with
    `kind` 'total' (a usage total of the period: store/usage.totals), 'late' (the period's
    late events of a metric: store/usage.late_usage) or None (the only row: neither)."""
    return await conn.fetch(_USAGE, tenant_id, list(key_hashes), token, subscription_id, period_start)
