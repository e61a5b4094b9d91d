"""Rows of the outbox: events written with the change they announce, relayed to Kafka later.

`stream` is a logical name ("subscription_events", "invoice_requests", "billing_runs");
the relay maps it to the configured topic, so services never need topic settings.
"""
from __future__ import annotations

import uuid

import asyncpg


async def enqueue(conn: asyncpg.Connection, tenant_id: uuid.UUID, *, stream: str, key: bytes | None,
                  payload: bytes, headers: dict[str, str] | None = None) -> None:
    await conn.execute(
        "insert into outbox (tenant_id, stream, key, payload, headers) values ($1, $2, $3, $4, $5)",
        tenant_id, stream, key, payload, headers or {},
    )
