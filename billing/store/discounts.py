"""Rows of discounts (migration 018), each with ``used``: the subscription's periods billed
(closed) after the discount was created, trials excepted: the closes it counted."""
from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal

import asyncpg

_COLUMNS = """d.id, d.subscription_id, d.kind, d.value, d.applies_to, d.periods, d.created_at, d.deleted_at,
              (select count(*) from billed_periods b
                where b.tenant_id = d.tenant_id and b.subscription_id = d.subscription_id
                  and b.billed_at > d.created_at and not b.trial) as used"""


async def insert(conn: asyncpg.Connection, tenant_id: uuid.UUID, discount_id: uuid.UUID,
                 subscription_id: uuid.UUID, kind: str, value: Decimal, applies_to: list[str],
                 periods: int | None) -> asyncpg.Record:
    return await conn.fetchrow(
        f"""with d as (
                insert into discounts (tenant_id, id, subscription_id, kind, value, applies_to, periods)
                values ($1, $2, $3, $4, $5, $6, $7) returning *)
            select {_COLUMNS} from d""",
        tenant_id, discount_id, subscription_id, kind, value, applies_to, periods,
    )


async def get(conn: asyncpg.Connection, tenant_id: uuid.UUID, discount_id: uuid.UUID, *,
              for_update: bool = False) -> asyncpg.Record | None:
    lock = " for update of d" if for_update else ""
    return await conn.fetchrow(f"select {_COLUMNS} from discounts d where d.tenant_id = $1 and d.id = $2{lock}",
                               tenant_id, discount_id)


async def list_page(conn: asyncpg.Connection, tenant_id: uuid.UUID, subscription_id: uuid.UUID, *,
                    include_deleted: bool, after: tuple[datetime, uuid.UUID] | None,
                    limit: int) -> list[asyncpg.Record]:
    after_at, after_id = after if after else (None, None)
    return await conn.fetch(
        f"""select {_COLUMNS} from discounts d
             where d.tenant_id = $1 and d.subscription_id = $2 and ($3 or d.deleted_at is null)
               and ($4::timestamptz is null or (d.created_at, d.id) > ($4, $5))
             order by d.created_at, d.id limit $6""",
        tenant_id, subscription_id, include_deleted, after_at, after_id, limit,
    )


async def live_count(conn: asyncpg.Connection, tenant_id: uuid.UUID, subscription_id: uuid.UUID) -> int:
    return await conn.fetchval(
        "select count(*) from discounts where tenant_id = $1 and subscription_id = $2 and deleted_at is null",
        tenant_id, subscription_id)


async def live_for(conn: asyncpg.Connection, tenant_id: uuid.UUID,
                   subscription_ids: list[uuid.UUID]) -> list[asyncpg.Record]:
    """The live discounts of a chunk's subscriptions, in their order (one query)."""
    return await conn.fetch(
        f"""select {_COLUMNS} from discounts d
             where d.tenant_id = $1 and d.subscription_id = any($2::uuid[]) and d.deleted_at is null
             order by d.subscription_id, d.created_at, d.id""",
        tenant_id, subscription_ids,
    )


async def delete(conn: asyncpg.Connection, tenant_id: uuid.UUID, discount_id: uuid.UUID) -> asyncpg.Record:
    return await conn.fetchrow(
        f"""with d as (
                update discounts set deleted_at = now() where tenant_id = $1 and id = $2 returning *)
            select {_COLUMNS} from d""",
        tenant_id, discount_id,
    )
