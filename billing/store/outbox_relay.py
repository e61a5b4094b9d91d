"""SQL of the outbox relay: leadership lock, wake-ups, pending rows, marking, backlog.

The relay runs as the worker role (`billing_worker`), which row-level security confines to
the tenant it names; the cross-tenant reads, the marking and the parking go through the
security-definer functions of migrations 003 and 011, which only the worker role may call
(migration 016), and nothing else (see producers/outbox_relay.py for the guarantees).
"""
from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import datetime
from typing import NamedTuple, Sequence

import asyncpg
import orjson

# The channel the `outbox_notify` trigger (migration 003) notifies after every insert.
NOTIFY_CHANNEL = "outbox"

# The planner settings of the relay's statements. A billing run writes outbox rows faster
# than autovacuum analyzes the table; on the stale statistics the planner reads and sorts
# the whole backlog for a batch (or for the oldest row) instead of walking the
# `outbox_unpublished` index in id order and stopping early. Set on the relay's own
# session (producers/relay_lease.py), and locally around the gauges' reads.
PLANNER_SETTINGS = {"enable_bitmapscan": "off", "enable_sort": "off"}
_SET_PLANNER = "select " + ", ".join(f"set_config('{k}', '{v}', true)" for k, v in PLANNER_SETTINGS.items())


@asynccontextmanager
async def _relay_planner(conn: asyncpg.Connection | asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    """A connection (of the pool, or the one given) in a transaction with PLANNER_SETTINGS."""
    async with AsyncExitStack() as stack:
        c = await stack.enter_async_context(conn.acquire()) if isinstance(conn, asyncpg.Pool) else conn
        await stack.enter_async_context(c.transaction())
        await c.execute(_SET_PLANNER)
        yield c


class PendingRow(NamedTuple):
    """An unpublished outbox row (a tuple: a relay batch makes thousands of them)."""
    tenant_id: uuid.UUID
    id: int
    stream: str
    key: bytes | None
    payload: bytes
    headers: dict[str, str]
    created_at: datetime


def lock_key(group: str) -> int:
    """The advisory lock id of a relay group: a signed 64-bit hash of its name.

    Hashing a namespaced name keeps it apart from the migration lock and any other
    advisory lock of this database.
    """
    digest = hashlib.sha256(f"billing.outbox-relay:{group}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


async def try_lock(conn: asyncpg.Connection, key: int) -> bool:
    # Session level: held until unlocked or until the session ends (the process dies, the
    # connection drops), so a killed leader frees it without anyone cleaning up.
    return bool(await conn.fetchval("select pg_try_advisory_lock($1)", key))


async def unlock(conn: asyncpg.Connection, key: int) -> bool:
    return bool(await conn.fetchval("select pg_advisory_unlock($1)", key))


async def fetch_pending(conn: asyncpg.Connection, *, after_id: int, limit: int,
                        skip_streams: Sequence[str] = ()) -> list[PendingRow]:
    # The headers as text, parsed by orjson: the connection's jsonb codec (json.loads) was
    # the largest part of decoding a row. Headers are strings (never a large integer).
    rows = await conn.fetch(
        "select tenant_id, id, stream, key, payload, headers::text, created_at from outbox_pending($1, $2, $3)",
        after_id, limit, list(skip_streams),
    )
    return [PendingRow(r[0], r[1], r[2], r[3], r[4], _headers(r[5]), r[6]) for r in rows]


async def mark_published(conn: asyncpg.Connection, ids: Sequence[int]) -> int:
    if not ids:
        return 0
    return await conn.fetchval("select outbox_mark_published($1::bigint[])", list(ids))


async def park(conn: asyncpg.Connection, row_id: int, reason: str, error: str) -> bool:
    """Parks a row Kafka refuses for good (migration 011): it stays unpublished, with the
    reason and error, and neither it nor later rows of its stream and key are pending."""
    return bool(await conn.fetchval("select outbox_park($1, $2, $3)", row_id, reason, error))


async def parked_count(conn: asyncpg.Connection | asyncpg.Pool) -> int:
    """Unpublished parked rows across all tenants."""
    return int(await conn.fetchval("select outbox_parked_count()"))


async def backlog(conn: asyncpg.Connection | asyncpg.Pool) -> int:
    """Unpublished outbox rows across all tenants."""
    async with _relay_planner(conn) as c:
        return int(await c.fetchval("select outbox_backlog()"))


async def oldest_pending_age_s(conn: asyncpg.Connection | asyncpg.Pool) -> float:
    """Age of the lowest unpublished row (rows are written in id order, so about the oldest)."""
    async with _relay_planner(conn) as c:
        age = await c.fetchval(
            "select extract(epoch from clock_timestamp() - created_at)::float8 from outbox_pending(0, 1, '{}')")
    return max(0.0, age or 0.0)


def _headers(value) -> dict[str, str]:
    # Text from fetch_pending (or a dict from a connection whose jsonb codec decodes).
    if value is None:
        return {}
    text = None
    if isinstance(value, (str, bytes)):
        text, value = value, orjson.loads(value)
    for v in value.values():
        if type(v) is not str:  # never from this service's writers: json's reading, as text
            if text is not None:
                value = json.loads(text)
            return {str(k): str(v) for k, v in value.items()}
    return value
