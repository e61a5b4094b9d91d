"""Rows of test_clocks (migration 021) and the clock of a subscription."""
from __future__ import annotations

import uuid
from datetime import datetime

import asyncpg

_COLUMNS = "id, name, frozen_time, status, advance_to, advance_run_id, created_at, updated_at"


async def insert(conn: asyncpg.Connection, tenant_id: uuid.UUID, clock_id: uuid.UUID, name: str,
                 frozen_time: datetime) -> asyncpg.Record:
    return await conn.fetchrow(
        f"insert into test_clocks (tenant_id, id, name, frozen_time) values ($1, $2, $3, $4) returning {_COLUMNS}",
        tenant_id, clock_id, name, frozen_time)


async def get(conn: asyncpg.Connection, tenant_id: uuid.UUID, clock_id: uuid.UUID, *,
              for_update: bool = False) -> asyncpg.Record | None:
    lock = " for update" if for_update else ""
    return await conn.fetchrow(f"select {_COLUMNS} from test_clocks where tenant_id = $1 and id = $2{lock}",
                               tenant_id, clock_id)


async def list_page(conn: asyncpg.Connection, tenant_id: uuid.UUID, after: tuple[datetime, uuid.UUID] | None,
                    limit: int) -> list[asyncpg.Record]:
    after_at, after_id = after if after else (None, None)
    return await conn.fetch(
        f"""select {_COLUMNS} from test_clocks
            where tenant_id = $1 and ($2::timestamptz is null or (created_at, id) < ($2, $3))
            order by created_at desc, id desc limit $4""",
        tenant_id, after_at, after_id, limit)


async def start_advance(conn: asyncpg.Connection, tenant_id: uuid.UUID, clock_id: uuid.UUID, to: datetime,
                        run_id: uuid.UUID) -> asyncpg.Record:
    return await conn.fetchrow(
        f"""update test_clocks set status = 'advancing', advance_to = $3, advance_run_id = $4, updated_at = now()
            where tenant_id = $1 and id = $2 returning {_COLUMNS}""",
        tenant_id, clock_id, to, run_id)


async def finish_advance(conn: asyncpg.Connection, tenant_id: uuid.UUID, clock_id: uuid.UUID,
                         run_id: uuid.UUID) -> asyncpg.Record | None:
    """The clock at its target once its run completed; None when the clock is not advancing
    by this run (deleted meanwhile, or finished already)."""
    return await conn.fetchrow(
        f"""update test_clocks set frozen_time = advance_to, status = 'ready', advance_to = null,
                   advance_run_id = null, updated_at = now()
            where tenant_id = $1 and id = $2 and advance_run_id = $3 returning {_COLUMNS}""",
        tenant_id, clock_id, run_id)


async def delete(conn: asyncpg.Connection, clock_id: uuid.UUID) -> int | None:
    """Remove the clock, its subscriptions and their rows (migration 021's function, for the
    tenant of the transaction); how many subscriptions; None when there is no such clock."""
    return await conn.fetchval("select delete_test_clock($1)", clock_id)


async def subscription_clock(conn: asyncpg.Connection, tenant_id: uuid.UUID,
                             sub_id: uuid.UUID) -> asyncpg.Record | None:
    """(test_clock_id, frozen_time, status) of a subscription's clock; None: real time (or no such subscription)."""
    return await conn.fetchrow(
        """select c.id as test_clock_id, c.frozen_time, c.status from subscriptions s
             join test_clocks c on c.tenant_id = s.tenant_id and c.id = s.test_clock_id
            where s.tenant_id = $1 and s.id = $2""",
        tenant_id, sub_id)


async def clocks_of(conn: asyncpg.Connection, tenant_id: uuid.UUID, sub_ids: list[uuid.UUID]) -> dict:
    """{subscription id: test clock id} of those of `sub_ids` that live on a clock."""
    rows = await conn.fetch(
        "select id, test_clock_id from subscriptions where tenant_id = $1 and id = any($2::uuid[])"
        " and test_clock_id is not null", tenant_id, sub_ids)
    return {r["id"]: r["test_clock_id"] for r in rows}

