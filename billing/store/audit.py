"""Rows of the append-only audit trail."""
from __future__ import annotations

import uuid

import asyncpg

from billing.store.db import json_text


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
                      request_id: str | None, rows: list[tuple[uuid.UUID, str, dict | None, dict | None]]) -> None:
    """Many rows of one actor and request in one statement, in this order: (entity id,
    action, before, after). Actions and states travel as ONE JSON document per call, not
    as text arrays: asyncpg checks every element of an array parameter for nesting (two
    isinstance checks against abstract base classes per string, a quarter of a chunk's
    parameter encoding), and one dump of the list beats two per row. The states may hold
    datetimes and UUIDs as they are: `json_text` writes them as the audit trail does."""
    if not rows:
        return
    await conn.execute(
        """insert into audit_events (tenant_id, entity_type, entity_id, action, actor, request_id, before, after)
           select $1, $2, e, d->>0, $3, $4, nullif(d->1, 'null'), nullif(d->2, 'null')
             from rows from (unnest($5::uuid[]), jsonb_array_elements($6::text::jsonb)) with ordinality as u(e, d, n)
            order by n""",
        tenant_id, entity_type, actor, request_id, [r[0] for r in rows],
        json_text([(action, before, after) for _, action, before, after in rows]),
    )
