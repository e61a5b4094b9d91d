"""Rows of tenants and api_keys. Writes go through the owner connection (admin commands)."""
from __future__ import annotations

import uuid
from typing import Callable

import asyncpg

from billing.store.db import remember_tenant_token


async def insert_tenant(admin: asyncpg.Connection, tenant_id: uuid.UUID, name: str) -> None:
    await admin.execute("insert into tenants (id, name) values ($1, $2)", tenant_id, name)


async def insert_key(admin: asyncpg.Connection, tenant_id: uuid.UUID, key_id: uuid.UUID, key_hash: bytes,
                     prefix: str) -> None:
    await admin.execute(
        "insert into api_keys (tenant_id, id, key_hash, key_prefix) values ($1, $2, $3, $4)",
        tenant_id, key_id, key_hash, prefix,
    )


async def revoke_key(admin: asyncpg.Connection, key_id: uuid.UUID) -> bool:
    status = await admin.execute(
        "update api_keys set revoked_at = now() where id = $1 and revoked_at is null", key_id
    )
    return status.endswith(" 1")


async def key_for_hash(conn: asyncpg.Connection, key_hash: bytes) -> tuple[uuid.UUID, uuid.UUID] | None:
    """(tenant id, key id) of a live key. A security-definer function: the one lookup that
    crosses tenants. It also returns the tenant token without which the API role cannot
    enter the tenant (migration 016); `set_tenant` sends it from then on."""
    row = await conn.fetchrow("select tenant_id, key_id, token from authenticate_api_key_token($1)", key_hash)
    if row is None:
        return None
    remember_tenant_token(row["tenant_id"], row["token"])
    return row["tenant_id"], row["key_id"]


async def exists(conn: asyncpg.Connection, tenant_id: uuid.UUID) -> bool:
    """Under row-level security the app role sees only the current tenant's row: call it
    with that tenant set (it answers False for any other)."""
    return bool(await conn.fetchval("select exists(select 1 from tenants where id = $1)", tenant_id))


async def all_ids(conn: asyncpg.Connection) -> list[uuid.UUID]:
    """Every tenant's id, with no tenant set: tenant_ids() is security definer (migration 006)."""
    return [r[0] for r in await conn.fetch("select tenant_ids()")]


async def list_all(admin: asyncpg.Connection) -> list[asyncpg.Record]:
    """Every tenant with its count of live keys, oldest first (the owner's policy sees all rows)."""
    return await admin.fetch(
        """select t.id, t.name, t.created_at, count(k.id) filter (where k.revoked_at is null) as live_keys
             from tenants t left join api_keys k on k.tenant_id = t.id
            group by t.id order by t.created_at, t.id""")


async def exists_any(admin: asyncpg.Connection, tenant_id: uuid.UUID) -> bool:
    """Whether the tenant exists, asked as the owner (no tenant set)."""
    return bool(await admin.fetchval("select exists(select 1 from tenants where id = $1)", tenant_id))


async def revoke_keys_except(admin: asyncpg.Connection, tenant_id: uuid.UUID, keep: uuid.UUID) -> list[uuid.UUID]:
    """Revoke every live key of the tenant but `keep`; the ids revoked."""
    rows = await admin.fetch(
        """update api_keys set revoked_at = now()
            where tenant_id = $1 and id <> $2 and revoked_at is null returning id""", tenant_id, keep)
    return sorted(r["id"] for r in rows)


KEY_CHANGES_CHANNEL = "billing_api_keys"  # notified at the commit of any revocation (migration 031)


async def listen_key_changes(url: str, on_change: Callable[[], None],
                             on_lost: Callable[[], None]) -> asyncpg.Connection:
    """A connection of its own LISTENing for key changes: `on_change` at each notification,
    `on_lost` when the connection ends (the listener's owner closes it)."""
    conn = await asyncpg.connect(url)
    conn.add_termination_listener(lambda _conn: on_lost())
    await conn.add_listener(KEY_CHANGES_CHANNEL, lambda *_args: on_change())
    return conn
