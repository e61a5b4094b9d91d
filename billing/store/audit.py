"""Rows of the append-only audit trail."""
from __future__ import annotations

import uuid

import asyncpg


async def append(conn: asyncpg.Connection, tenant_id: uuid.UUID, *, entity_type: str, entity_id: uuid.UUID,
                 action: str, actor: str, request_id: str | None, before: dict | None, after: dict | None) -> None:
    await conn.execute(
        """insert into audit_events (tenant_id, entity_type, entity_id, action, actor, request_id, before, after)
           values ($1, $2, $3, $4, $5, $6, $7, $8)""",
        tenant_id, entity_type, entity_id, action, actor, request_id, before, after,
    )


async def history(conn: asyncpg.Connection, tenant_id: uuid.UUID, entity_type: str,
                  entity_id: uuid.UUID) -> list[asyncpg.Record]:
    return await conn.fetch(
        """select action, actor, request_id, before, after, at from audit_events
           where tenant_id = $1 and entity_type = $2 and entity_id = $3 order by id""",
        tenant_id, entity_type, entity_id,
    )
