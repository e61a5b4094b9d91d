"""Rows of plans: one immutable row per plan version."""
from __future__ import annotations

import uuid
from datetime import datetime

import asyncpg

_COLUMNS = "id, code, version, spec, status, created_at, archived_at"


async def insert(conn: asyncpg.Connection, tenant_id: uuid.UUID, plan_id: uuid.UUID, code: str,
                 spec: dict) -> asyncpg.Record | None:
    """None when the code is taken (the unique index decides, so concurrent creates are safe)."""
    return await conn.fetchrow(
        f"""insert into plans (tenant_id, id, code, version, spec) values ($1, $2, $3, 1, $4)
            on conflict (tenant_id, code, version) do nothing returning {_COLUMNS}""",
        tenant_id, plan_id, code, spec,
    )


async def get(conn: asyncpg.Connection, tenant_id: uuid.UUID, plan_id: uuid.UUID, *,
              for_update: bool = False) -> asyncpg.Record | None:
    lock = " for update" if for_update else ""
    return await conn.fetchrow(
        f"select {_COLUMNS} from plans where tenant_id = $1 and id = $2{lock}", tenant_id, plan_id
    )


async def specs(conn: asyncpg.Connection, tenant_id: uuid.UUID,
                plan_ids: list[uuid.UUID]) -> list[tuple[uuid.UUID, dict]]:
    """(id, spec) of many plans in one round trip."""
    if not plan_ids:
        return []
    rows = await conn.fetch("select id, spec from plans where tenant_id = $1 and id = any($2::uuid[])",
                            tenant_id, plan_ids)
    return [(r["id"], r["spec"]) for r in rows]


async def codes(conn: asyncpg.Connection, tenant_id: uuid.UUID, plan_ids: list[uuid.UUID]) -> dict[uuid.UUID, str]:
    """Plan id -> code for many plans in one round trip (a page of subscriptions names its
    plans by code: one query per row would dominate ListSubscriptions' latency)."""
    rows = await conn.fetch("select id, code from plans where tenant_id = $1 and id = any($2::uuid[])",
                            tenant_id, plan_ids)
    return {r["id"]: r["code"] for r in rows}


async def archive(conn: asyncpg.Connection, tenant_id: uuid.UUID, plan_id: uuid.UUID) -> asyncpg.Record:
    return await conn.fetchrow(
        f"""update plans set status = 'archived', archived_at = now()
            where tenant_id = $1 and id = $2 returning {_COLUMNS}""",
        tenant_id, plan_id,
    )


async def list_page(conn: asyncpg.Connection, tenant_id: uuid.UUID, *, include_archived: bool, code: str | None,
                    after: tuple[datetime, uuid.UUID] | None, limit: int) -> list[asyncpg.Record]:
    after_at, after_id = after if after else (None, None)
    return await conn.fetch(
        f"""select {_COLUMNS} from plans
            where tenant_id = $1
              and ($2 or status = 'active')
              and ($3::text is null or code = $3)
              and ($4::timestamptz is null or (created_at, id) < ($4, $5))
            order by created_at desc, id desc limit $6""",
        tenant_id, include_archived, code, after_at, after_id, limit,
    )
