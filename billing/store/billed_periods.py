"""What was billed: billed_periods (a period once), late_usage_billed (a late event once), late_usage_pending."""
from __future__ import annotations

import uuid
from datetime import datetime

import asyncpg


async def opened_by_a_run(conn: asyncpg.Connection, tenant_id: uuid.UUID, subs: list[tuple[uuid.UUID, datetime]],
                          ) -> set[uuid.UUID]:
    """The subscriptions whose current period (given by its start) follows a billed period,
    i.e. was opened, and charged in advance, by a run."""
    # LATERAL: one index probe per subscription, whatever the planner thinks of the table
    # size (billed_periods grows during the run, its statistics do not). The period ending
    # at the start is the latest one starting before it (billed periods do not overlap):
    # one backward step in the primary key (migration 013).
    rows = await conn.fetch(
        """select s.id as subscription_id from unnest($2::uuid[], $3::timestamptz[]) as s(id, start)
            cross join lateral (select b.period_end from billed_periods b
                                 where b.tenant_id = $1 and b.subscription_id = s.id and b.period_start < s.start
                                 order by b.period_start desc limit 1) b
            where b.period_end = s.start""",
        tenant_id, [s for s, _ in subs], [t for _, t in subs],
    )
    return {r["subscription_id"] for r in rows}


async def mark_late_billed(conn: asyncpg.Connection, tenant_id: uuid.UUID, run_id: uuid.UUID,
                           rows: list[tuple[str, uuid.UUID, uuid.UUID]]) -> int:
    """Record late events as billed: (event id, subscription id, invoice request id). An event
    billed already keeps its first record (and is not counted)."""
    if not rows:
        return 0
    subs = [r[1] for r in rows]
    status = await conn.execute(
        """insert into late_usage_billed (tenant_id, event_id, subscription_id, invoice_request_id, run_id)
           select $1, e, s, i, $5 from unnest($2::text[], $3::uuid[], $4::uuid[]) as u(e, s, i)
           on conflict do nothing""",
        tenant_id, [r[0] for r in rows], subs, [r[2] for r in rows], run_id,
    )
    await clear_late_pending(conn, tenant_id, list(set(subs)))
    return int(status.split()[-1])


async def clear_late_pending(conn: asyncpg.Connection, tenant_id: uuid.UUID, subscription_ids: list[uuid.UUID]) -> None:
    """Drop the late_usage_pending row (migration 014) of each of these subscriptions that has
    no unbilled late event left. The caller holds the subscriptions locked FOR UPDATE, so no
    usage batch is storing a late event for them meanwhile."""
    await conn.execute(
        """delete from late_usage_pending p
            where p.tenant_id = $1 and p.subscription_id = any($2::uuid[])
              and not exists (select 1 from usage_events e
                               where e.tenant_id = $1 and e.subscription_id = p.subscription_id and e.late
                                 and not exists (select 1 from late_usage_billed b
                                                  where b.tenant_id = $1 and b.event_id = e.event_id))""",
        tenant_id, subscription_ids,
    )


_INSERT_BILLED_PERIODS = """
    insert into billed_periods (tenant_id, subscription_id, period_start, period_end, invoice_request_id, run_id,
                                plan_id, trial)
    select $1, s, ps, pe, i, $2, p, t
      from unnest($3::uuid[], $4::timestamptz[], $5::timestamptz[], $6::uuid[], $7::uuid[], $8::bool[])
           as u(s, ps, pe, i, p, t)"""


async def insert_billed_periods(conn: asyncpg.Connection, tenant_id: uuid.UUID, run_id: uuid.UUID,
                                rows: list[tuple]) -> set[tuple[uuid.UUID, datetime]]:
    """Mark periods billed: rows of (subscription id, start, end, invoice request id or None,
    plan id, trial). Returns the (subscription, start) pairs that were billed BEFORE, which
    this call did not mark (the primary key is the once-only guarantee). Those are rare,
    so only they come back, not one row per period marked."""
    if not rows:
        return set()
    cols = [list(c) for c in zip(*rows)]
    # A plain insert first, in a savepoint: ON CONFLICT's speculative insertion costs an
    # index probe and a WAL record more per row, for a conflict that only a period billed
    # and then not advanced (a bug, an operator's hand) can cause. On one, the chunk's
    # periods are inserted again, skipping and returning those billed before.
    try:
        async with conn.transaction():
            await conn.execute(_INSERT_BILLED_PERIODS, tenant_id, run_id, *cols)
        return set()
    except asyncpg.UniqueViolationError:
        pass
    refused = await conn.fetch(
        f"""with marked as ({_INSERT_BILLED_PERIODS}
               on conflict do nothing
               returning subscription_id, period_start)
           select s, ps from unnest($3::uuid[], $4::timestamptz[]) as u(s, ps)
           except all
           select subscription_id, period_start from marked""",
        tenant_id, run_id, *cols,
    )
    return {(r["s"], r["ps"]) for r in refused}

