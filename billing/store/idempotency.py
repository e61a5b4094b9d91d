"""Rows of idempotency_keys: the first outcome of each request_id / command_id."""
from __future__ import annotations

import uuid

import asyncpg


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
