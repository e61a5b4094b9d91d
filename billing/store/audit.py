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


async def append_many(conn: asyncpg.Connection, tenant_id: uuid.UUID, *, entity_type: str, actor: str,
                      rows: list[tuple[uuid.UUID, str, str | None, str | None, str | None]]) -> None:
    """Many rows in one statement, in this order: (entity id, action, request id, before and
    after as JSON text)."""
    if not rows:
        return
    ids, actions, requests, before, after = (list(c) for c in zip(*rows))
    await conn.execute(
        """insert into audit_events (tenant_id, entity_type, entity_id, action, actor, request_id, before, after)
           select $1, $2, e, a, $3, r, b::jsonb, f::jsonb
             from unnest($4::uuid[], $5::text[], $6::text[], $7::text[], $8::text[]) with ordinality
                  as u(e, a, r, b, f, n)
            order by n""",
        tenant_id, entity_type, actor, ids, actions, requests, before, after,
    )
