"""The asyncpg pool and the tenant-scoped transaction every service call runs in."""
from __future__ import annotations

import json
import uuid
from contextlib import asynccontextmanager
from typing import AsyncIterator

import asyncpg


async def init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


class Database:
    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    @classmethod
    async def connect(cls, url: str, *, min_size: int = 2, max_size: int = 10) -> "Database":
        pool = await asyncpg.create_pool(url, min_size=min_size, max_size=max_size, init=init_connection,
                                         command_timeout=30)
        return cls(pool)

    async def close(self) -> None:
        await self.pool.close()

    @asynccontextmanager
    async def tenant_tx(self, tenant_id: uuid.UUID) -> AsyncIterator[asyncpg.Connection]:
        """A transaction in which row-level security shows only this tenant's rows."""
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                await set_tenant(conn, tenant_id)
                yield conn

    @asynccontextmanager
    async def tx(self) -> AsyncIterator[asyncpg.Connection]:
        """A transaction with no tenant: row-level security shows no tenant rows at all."""
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                yield conn


class ConnectionScope:
    """A `Database` look-alike bound to one connection already inside a transaction.

    The consumers use it so a service call joins the consumer's batch transaction (and so
    commits together with the stored Kafka offsets): each `tenant_tx` is a savepoint, so a
    refused command rolls back alone and the batch goes on.
    """

    def __init__(self, conn: asyncpg.Connection):
        self.conn = conn

    @asynccontextmanager
    async def tenant_tx(self, tenant_id: uuid.UUID) -> AsyncIterator[asyncpg.Connection]:
        async with self.conn.transaction():
            await set_tenant(self.conn, tenant_id)
            yield self.conn


async def set_tenant(conn: asyncpg.Connection, tenant_id: uuid.UUID) -> None:
    # is_local=true: the setting ends with the transaction, so a pooled connection never
    # carries one tenant's identity into the next request.
    await conn.execute("select set_config('billing.tenant_id', $1, true)", str(tenant_id))
