"""Rows of usage_events and usage_totals."""
from __future__ import annotations

import json
import uuid
from datetime import datetime

import asyncpg

# The batch is COPYed (binary) into a session-local staging table, then ONE statement
# empties the staging table, inserts the raw events dropping duplicates (also duplicates
# within the batch), and folds exactly the inserted rows into the totals. Measured: COPY
# then this statement ~60-70k events/s, array parameters with unnest ~45-50k.
# Times travel as integer microseconds and quantities as text, converted here.
STAGING_TABLE = """
create temp table if not exists usage_staging (
    event_id text, subscription_id uuid, metric_code text, quantity text, occurred_us bigint, start_us bigint,
    end_us bigint, late boolean, properties text
) on commit delete rows"""

_INSERT_BATCH = """
with staged as (
    delete from usage_staging returning *
), input as (
    select t.event_id, t.subscription_id, t.metric_code, t.quantity::numeric as quantity,
           timestamptz 'epoch' + t.occurred_us * interval '1 microsecond' as occurred_at,
           timestamptz 'epoch' + t.start_us * interval '1 microsecond' as period_start,
           timestamptz 'epoch' + t.end_us * interval '1 microsecond' as period_end,
           t.late, t.properties::jsonb as properties
      from staged t
), inserted as (
    insert into usage_events (tenant_id, event_id, subscription_id, metric_code, quantity, occurred_at,
                              period_start, period_end, late, properties)
    select $1, event_id, subscription_id, metric_code, quantity, occurred_at, period_start, period_end, late,
           properties
      from input
    on conflict (tenant_id, event_id) do nothing
    returning event_id, subscription_id, metric_code, quantity, occurred_at, period_start, period_end, late
), folded as (
    select subscription_id, metric_code, period_start, max(period_end) as period_end,
           sum(quantity) as quantity_sum, count(*) as event_count, max(quantity) as quantity_max,
           (array_agg(quantity order by occurred_at desc, event_id desc))[1] as latest_quantity,
           max(occurred_at) as latest_at,
           (array_agg(event_id order by occurred_at desc, event_id desc))[1] as latest_event_id
      from inserted
     group by subscription_id, metric_code, period_start
), totals as (
    insert into usage_totals as t (tenant_id, subscription_id, metric_code, period_start, period_end, quantity_sum,
                                   event_count, quantity_max, latest_quantity, latest_at, latest_event_id)
    select $1, subscription_id, metric_code, period_start, period_end, quantity_sum, event_count, quantity_max,
           latest_quantity, latest_at, latest_event_id
      from folded
    on conflict (tenant_id, subscription_id, metric_code, period_start) do update set
        quantity_sum = t.quantity_sum + excluded.quantity_sum,
        event_count = t.event_count + excluded.event_count,
        quantity_max = greatest(t.quantity_max, excluded.quantity_max),
        latest_quantity = case when (excluded.latest_at, excluded.latest_event_id) > (t.latest_at, t.latest_event_id)
                               then excluded.latest_quantity else t.latest_quantity end,
        latest_event_id = case when (excluded.latest_at, excluded.latest_event_id) > (t.latest_at, t.latest_event_id)
                               then excluded.latest_event_id else t.latest_event_id end,
        latest_at = greatest(t.latest_at, excluded.latest_at),
        updated_at = now()
    returning 1
)
select (select count(*) from inserted) as inserted,
       (select count(*) from inserted where late) as late,
       (select count(*) from totals) as totals
"""


class Batch:
    """One tenant's accepted events, turned into staging rows at the end."""

    __slots__ = ("rows",)

    def __init__(self) -> None:
        self.rows: list[tuple] = []

    def add(self, event, subscription_id: uuid.UUID, start_us: int, end_us: int, late: bool) -> None:
        self.rows.append((event, subscription_id, start_us, end_us, late))

    def records(self) -> list[tuple]:
        """Rows in the staging table's column order."""
        dumps = json.dumps
        return [(e.event_id, sub, e.metric_code, e.quantity, e.occurred_at_us, start, end, late,
                 dumps(e.properties) if e.properties else None) for e, sub, start, end, late in self.rows]

    def __len__(self) -> int:
        return len(self.rows)


async def insert_batch(conn: asyncpg.Connection, tenant_id: uuid.UUID, b: Batch) -> tuple[int, int]:
    await conn.execute(STAGING_TABLE)  # once per session in effect; a no-op after the first
    await conn.copy_records_to_table("usage_staging", records=b.records())
    row = await conn.fetchrow(_INSERT_BATCH, tenant_id)
    return row["inserted"], row["late"]


async def tenant_exists(conn: asyncpg.Connection, tenant_id: uuid.UUID) -> bool:
    return bool(await conn.fetchval("select exists(select 1 from tenants where id = $1)", tenant_id))


async def subscriptions(conn: asyncpg.Connection, tenant_id: uuid.UUID, ids: list[uuid.UUID], *,
                        lock_ending_before: datetime | None = None) -> list[asyncpg.Record]:
    """The batch's subscriptions; those whose current period ends before
    `lock_ending_before` (all of them when it is None) read FOR KEY SHARE, held until the
    batch commits.

    The lock closes a race with billing: an event is attributed to the subscription's
    current period (or found late) from this read; a billing chunk closing that period at
    the same moment would otherwise bill the period's totals without the event, which then
    lands in an already billed period as on-time usage and is never billed. KEY SHARE
    conflicts with the billing run's FOR UPDATE only: a chunk skips (SKIP LOCKED) the
    subscriptions a usage batch holds and bills them on its next pass, and a usage batch
    waits for a chunk that holds them, then reads the advanced period (so the event is late,
    and billed as late usage). Usage batches do not block each other (KEY SHARE is shared).

    Only a period that has ended can be closed by a run (as_of is at most a few minutes
    ahead of the clock), so the caller asks to lock only the subscriptions whose period ends
    before now plus a margin: the rows of other periods are read without a lock, which
    spares the tuple locks (and, with two usage consumers sharing subscriptions, the
    multixacts) on nearly every row of a batch.
    """
    query = """select id, plan_id, status, start_at, billing_anchor, current_period_start, current_period_end, canceled_at,
                  paused_at, pause_resumes_at,
                  -- past pauses (migration 009): usage in them is not billed
                  array(select w.paused_at from pause_windows w where w.tenant_id = $1 and w.subscription_id = s.id
                         order by w.paused_at) as paused_from,
                  array(select w.resumed_at from pause_windows w where w.tenant_id = $1 and w.subscription_id = s.id
                         order by w.paused_at) as paused_to
             from subscriptions s where tenant_id = $1 and id = any($2::uuid[])
            order by id"""
    if lock_ending_before is None:
        return await conn.fetch(query + " for key share of s", tenant_id, ids)
    rows = await conn.fetch(query, tenant_id, ids)
    ending = [r["id"] for r in rows
              if r["current_period_end"] is not None and r["current_period_end"] <= lock_ending_before]
    if not ending:
        return rows
    # A statement of its own: it waits for a billing chunk holding a row, then sees the
    # row as that chunk committed it (the first read's snapshot would not).
    locked = {r["id"]: r for r in await conn.fetch(query + " for key share of s", tenant_id, ending)}
    return [locked.get(r["id"], r) for r in rows]


async def plan_specs(conn: asyncpg.Connection, tenant_id: uuid.UUID, ids: list[uuid.UUID]) -> list[tuple]:
    if not ids:
        return []
    rows = await conn.fetch("select id, spec from plans where tenant_id = $1 and id = any($2::uuid[])", tenant_id, ids)
    return [(r["id"], r["spec"]) for r in rows]


async def totals(conn: asyncpg.Connection, tenant_id: uuid.UUID, subscription_id: uuid.UUID,
                 period_start: datetime) -> list[asyncpg.Record]:
    return await conn.fetch(
        """select metric_code, period_start, period_end, quantity_sum, event_count, quantity_max, latest_quantity
             from usage_totals where tenant_id = $1 and subscription_id = $2 and period_start = $3""",
        tenant_id, subscription_id, period_start,
    )


async def unique_count(conn: asyncpg.Connection, tenant_id: uuid.UUID, subscription_id: uuid.UUID, metric: str,
                       period_start: datetime, prop: str) -> int:
    return await conn.fetchval(
        """select count(distinct properties ->> $5) from usage_events
            where tenant_id = $1 and subscription_id = $2 and metric_code = $3 and period_start = $4
              and properties ? $5""",
        tenant_id, subscription_id, metric, period_start, prop,
    )


async def series(conn: asyncpg.Connection, tenant_id: uuid.UUID, subscription_id: uuid.UUID, metric: str,
                 period_start: datetime, bucket: str) -> list[asyncpg.Record]:
    return await conn.fetch(
        """select date_trunc($5, occurred_at, 'UTC') as at, sum(quantity) as quantity from usage_events
            where tenant_id = $1 and subscription_id = $2 and metric_code = $3 and period_start = $4
            group by 1 order by 1""",
        tenant_id, subscription_id, metric, period_start, bucket,
    )


async def add_pause_window(conn: asyncpg.Connection, tenant_id: uuid.UUID, subscription_id: uuid.UUID,
                           paused_at: datetime, resumed_at: datetime) -> None:
    """Record a pause that ended (ResumeSubscription): usage in [paused_at, resumed_at) is refused."""
    await conn.execute(
        """insert into pause_windows (tenant_id, subscription_id, paused_at, resumed_at) values ($1, $2, $3, $4)
           on conflict do nothing""",
        tenant_id, subscription_id, paused_at, resumed_at,
    )
