"""Rows of idempotency_keys: the first outcome of each request_id / command_id."""
from __future__ import annotations

import uuid

import asyncpg

from billing.store.db import json_text


async def insert_key(conn: asyncpg.Connection, tenant_id: uuid.UUID, key: str, operation: str,
                     digest: bytes) -> bool:
    """True if this call inserted the key; blocks while another open transaction holds it."""
    return bool(await conn.fetchval(
        """insert into idempotency_keys (tenant_id, key, operation, request_hash)
           values ($1, $2, $3, $4) on conflict do nothing returning true""",
        tenant_id, key, operation, digest,
    ))


async def get_key(conn: asyncpg.Connection, tenant_id: uuid.UUID, key: str) -> asyncpg.Record:
    return await conn.fetchrow(
        "select operation, request_hash, response from idempotency_keys where tenant_id = $1 and key = $2",
        tenant_id, key,
    )


async def set_response(conn: asyncpg.Connection, tenant_id: uuid.UUID, key: str, response: dict) -> None:
    await conn.execute(
        "update idempotency_keys set response = $3 where tenant_id = $1 and key = $2", tenant_id, key, response
    )


async def insert_keys(conn: asyncpg.Connection, tenant_id: uuid.UUID, keys: list[str], operations: list[str],
                      digests: list[bytes]) -> set[str]:
    """The keys this call inserted (one statement for a group of calls); blocks while
    another open transaction holds one of them. Inserted in key order, as every group
    does: two groups of a tenant in flight wait on each other's keys in one order, never in
    a cycle (docs/usage.md, "Lock order")."""
    rows = await conn.fetch(
        """insert into idempotency_keys (tenant_id, key, operation, request_hash)
           select $1, k, o, d from unnest($2::text[], $3::text[], $4::bytea[]) as v(k, o, d)
            order by k
           on conflict do nothing returning key""",
        tenant_id, keys, operations, digests,
    )
    return {r["key"] for r in rows}


async def get_keys(conn: asyncpg.Connection, tenant_id: uuid.UUID, keys: list[str]) -> dict[str, asyncpg.Record]:
    rows = await conn.fetch(
        """select key, operation, request_hash, response from idempotency_keys
            where tenant_id = $1 and key = any($2::text[])""", tenant_id, keys)
    return {r["key"]: r for r in rows}


async def set_responses(conn: asyncpg.Connection, tenant_id: uuid.UUID, responses: dict[str, dict]) -> None:
    # `key = any($2)` makes the plan probe the primary key per key; a join on `k.key = v.key`
    # alone is planned (generic plan) as a scan of all the tenant's keys, ever longer.
    await conn.execute(
        """update idempotency_keys k set response = v.r::jsonb
             from unnest($2::text[], $3::text[]) as v(key, r)
            where k.tenant_id = $1 and k.key = any($2::text[]) and k.key = v.key""",
        tenant_id, list(responses), [json_text(r) for r in responses.values()],
    )


async def all_tenants(conn: asyncpg.Connection) -> list[uuid.UUID]:
    """Every tenant (the retention pass goes tenant by tenant: each statement names one)."""
    return [r[0] for r in await conn.fetch("select id from tenants order by id")]


async def forget_before(conn: asyncpg.Connection, tenant_id: uuid.UUID, before, limit: int) -> int:
    """Delete up to `limit` of the tenant's keys created before `before`, oldest first, in
    the caller's transaction (autocommit: one short transaction); the count deleted.
    Found through idempotency_keys_created (migration 037)."""
    status = await conn.execute(
        """delete from idempotency_keys k
            where k.tenant_id = $1 and k.created_at < $2
              and k.key = any(array(select i.key from idempotency_keys i
                                     where i.tenant_id = $1 and i.created_at < $2
                                     order by i.created_at limit $3))""",
        tenant_id, before, limit,
    )
    return int(status.split()[-1])
