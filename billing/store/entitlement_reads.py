"""CheckEntitlement's read in one statement (migration 034, `entitlement_read`): the key
check, the tenant, the subscription and its current period's usage totals in a single
round trip, where a `tenant_tx` takes three or four (BEGIN, the reads, COMMIT)."""
from __future__ import annotations

import uuid

import asyncpg

_READ = "select * from entitlement_read($1, $2, $3, $4, $5)"


async def read(conn: asyncpg.Connection, tenant_id: uuid.UUID, key_hashes: tuple[bytes, ...], token: str | None,
               subscription_id: uuid.UUID, with_usage: bool) -> list[asyncpg.Record]:
    """No row: no such subscription for this tenant. Otherwise one row per usage total of
    the current period (`metric_code` None on the only row when there is none, or when
    `with_usage` is false: the totals are not read)."""
    return await conn.fetch(_READ, tenant_id, list(key_hashes), token, subscription_id, with_usage)
