"""The asyncpg pool and the tenant-scoped transaction every service call runs in.

Every `tenant_tx` is a span (`db.transaction`, with the tenant as an attribute) and sets the
tenant of the log lines written inside it.
"""
from __future__ import annotations

import json
import uuid
from contextlib import asynccontextmanager
from typing import AsyncIterator, Mapping

import asyncpg
import orjson
from opentelemetry.trace import SpanKind

from billing.telemetry import current_tenant, tracer


async def init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


def json_text(value) -> str:
    """JSON text of a document a billing run writes by the thousand (for a `$n::text::jsonb`
    parameter), by orjson, which writes datetimes and UUIDs itself in the audit trail's form
    (`datetime.isoformat()`, canonical UUID text; tests/unit/test_json_text.py). Why orjson:
    docs/decisions.md. Mappings that are not dicts and asyncpg's UUIDs: `_json_default`."""
    return orjson.dumps(value, default=_json_default).decode()


def _json_default(value):
    if isinstance(value, uuid.UUID):  # asyncpg's UUID subclass, which orjson does not take
        return str(value)
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


class Database:
    def __init__(self, pool: asyncpg.Pool, url: str | None = None):
        self.pool = pool
        self.url = url  # for what needs a connection outside the pool (readiness)

    @classmethod
    async def connect(cls, url: str, *, min_size: int = 2, max_size: int = 10) -> "Database":
        pool = await asyncpg.create_pool(url, min_size=min_size, max_size=max_size, init=init_connection,
                                         command_timeout=30)
        return cls(pool, url)

    async def close(self) -> None:
        await self.pool.close()

    @asynccontextmanager
    async def tenant_tx(self, tenant_id: uuid.UUID) -> AsyncIterator[asyncpg.Connection]:
        """A transaction in which row-level security shows only this tenant's rows."""
        with _tx_span(tenant_id), _log_tenant(tenant_id):
            async with self.pool.acquire() as conn:
                async with conn.transaction():
                    await set_tenant(conn, tenant_id)
                    yield conn

    @asynccontextmanager
    async def tx(self) -> AsyncIterator[asyncpg.Connection]:
        """A transaction with no tenant: row-level security shows no tenant rows at all."""
        with _tx_span(None):
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
        with _tx_span(tenant_id, savepoint=True), _log_tenant(tenant_id):
            async with self.conn.transaction():
                await set_tenant(self.conn, tenant_id)
                yield self.conn


def _tx_span(tenant_id: uuid.UUID | None, savepoint: bool = False):
    attributes = {"db.system.name": "postgresql"}
    if tenant_id is not None:
        attributes["billing.tenant_id"] = str(tenant_id)
    if savepoint:
        attributes["billing.savepoint"] = True
    return tracer.start_as_current_span("db.transaction", kind=SpanKind.CLIENT, attributes=attributes)


class _log_tenant:
    def __init__(self, tenant_id: uuid.UUID):
        self.tenant = str(tenant_id)

    def __enter__(self):
        self.token = current_tenant.set(self.tenant)

    def __exit__(self, *exc):
        current_tenant.reset(self.token)


# Tenant tokens this process obtained by authenticating an API key (migration 016): the API
# role enters a tenant only with one. Workers enter any tenant without (their role may).
_tenant_tokens: dict[uuid.UUID, str] = {}


def remember_tenant_token(tenant_id: uuid.UUID, token: str) -> None:
    _tenant_tokens[tenant_id] = token


async def set_tenant(conn: asyncpg.Connection, tenant_id: uuid.UUID) -> None:
    # is_local=true: the settings end with the transaction, so a pooled connection never
    # carries one tenant's identity into the next request.
    await conn.execute("select set_config('billing.tenant_id', $1, true), set_config('billing.tenant_token', $2, true)",
                       str(tenant_id), _tenant_tokens.get(tenant_id, ""))
