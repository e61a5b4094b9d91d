"""The billing run's bulk reads of usage: period totals, unique counts, unbilled late usage."""
from __future__ import annotations

import uuid
from datetime import datetime
from typing import Iterable

import asyncpg


USAGE_TOTALS = ("quantity_sum", "event_count", "quantity_max", "latest_quantity")


async def usage_totals_from(conn: asyncpg.Connection, tenant_id: uuid.UUID,
                            periods: list[tuple[uuid.UUID, datetime]], before: datetime,
                            wanted: Iterable[str] = USAGE_TOTALS, *, metrics: list[str]) -> list[asyncpg.Record]:
    """The usage totals of every period of these subscriptions from the given (current)
    period start on, up to periods starting before `before`: all a run needs to bill them.
    A row names its subscription by its position in `periods` (`n`, from 1) and its period
    by its start, NULL when it is the given one; of the totals (`USAGE_TOTALS`) only the
    `wanted` ones are read, the others are NULL: the common row decodes as two small values
    and one total, not a UUID, a time and four totals. Only the `metrics` given (those the
    plans charge): the primary key is (tenant, subscription, metric, period start), so with
    the metric named each probe starts at the current period instead of walking every past
    period of every metric of the subscription (a cost that grew with the history)."""
    totals = ", ".join(f"t.{c}" if c in wanted else f"null::{_TOTAL_TYPES[c]} as {c}" for c in USAGE_TOTALS)
    # One index probe per subscription, whatever the plan cache does: OFFSET 0 keeps the
    # planner from flattening the LATERAL subquery into a hash join over the tenant's whole
    # usage_totals, and `= any(ids)` degrades with asyncpg's generic plan (docs/billing.md).
    return await conn.fetch(
        f"""select p.n, nullif(t.period_start, p.start) as period_start, t.metric_code, {totals}
             from unnest($2::uuid[], $3::timestamptz[]) with ordinality as p(id, start, n)
            cross join lateral (
                select * from usage_totals t
                 where t.tenant_id = $1 and t.subscription_id = p.id and t.metric_code = any($5::text[])
                   and t.period_start >= p.start and t.period_start < $4
                offset 0) t""",
        tenant_id, [s for s, _ in periods], [t for _, t in periods], before, metrics,
    )


_TOTAL_TYPES = {"quantity_sum": "numeric", "event_count": "bigint", "quantity_max": "numeric",
                "latest_quantity": "numeric"}


async def unique_counts(conn: asyncpg.Connection, tenant_id: uuid.UUID, metric: str, prop: str,
                        periods: list[tuple[uuid.UUID, datetime]], before: datetime) -> list[asyncpg.Record]:
    """count(distinct properties->>prop) per (subscription, period) for one metric, over the
    same periods as `usage_totals_from`."""
    # Per subscription, an index range of usage_events_period (as usage_totals_from): a
    # join with the id list was planned, generically, as a nested loop comparing every
    # event of the chunk's subscriptions with every subscription of the chunk.
    return await conn.fetch(
        """select p.id as subscription_id, c.period_start, c.n
             from unnest($2::uuid[], $3::timestamptz[]) as p(id, start)
            cross join lateral (
                select e.period_start, count(distinct e.properties ->> $5) as n
                  from usage_events e
                 where e.tenant_id = $1 and e.subscription_id = p.id and e.metric_code = $4
                   and e.period_start >= p.start and e.period_start < $6 and e.properties ? $5
                 group by e.period_start) c""",
        tenant_id, [s for s, _ in periods], [t for _, t in periods], metric, prop, before,
    )


async def unbilled_late_usage(conn: asyncpg.Connection, tenant_id: uuid.UUID,
                              subscription_ids: list[uuid.UUID]) -> list[asyncpg.Record]:
    """Late events not billed yet, grouped by (subscription, metric, original period), with the
    period's totals without them (`b_*`: what was billed already) and with them (`a_*`), and
    the billed period they belong to (its plan and whether it was a trial). Rare rows: only
    the subscriptions late_usage_pending names are read (migration 014), through the partial
    index usage_events_late."""
    return await conn.fetch(
        """with late as (
               select e.event_id, e.subscription_id, e.metric_code, e.period_start, e.period_end
                 from usage_events e
                where e.tenant_id = $1 and e.late
                  and e.subscription_id = any(array(
                      select p.subscription_id from late_usage_pending p
                       where p.tenant_id = $1 and p.subscription_id = any($2::uuid[])))
                  and not exists (select 1 from late_usage_billed b where b.tenant_id = $1 and b.event_id = e.event_id)
           ), groups as (
               select subscription_id, metric_code, period_start, max(period_end) as period_end,
                      array_agg(event_id order by event_id) as event_ids
                 from late group by 1, 2, 3
           )
           select g.subscription_id, g.metric_code, g.period_start, g.period_end, g.event_ids,
                  a.b_sum, a.b_count, a.b_max, a.b_latest, a.a_sum, a.a_count, a.a_max, a.a_latest,
                  bp.period_start as billed_start, bp.period_end as billed_end, bp.plan_id, bp.trial
             from groups g
             cross join lateral (
                 select sum(e.quantity) filter (where not n.late) as b_sum,
                        count(*) filter (where not n.late) as b_count,
                        max(e.quantity) filter (where not n.late) as b_max,
                        (array_agg(e.quantity order by e.occurred_at desc, e.event_id desc)
                            filter (where not n.late))[1] as b_latest,
                        sum(e.quantity) as a_sum, count(*) as a_count, max(e.quantity) as a_max,
                        (array_agg(e.quantity order by e.occurred_at desc, e.event_id desc))[1] as a_latest
                   from usage_events e
                  cross join lateral (select e.event_id = any(g.event_ids) as late) n
                  where e.tenant_id = $1 and e.subscription_id = g.subscription_id
                    and e.metric_code = g.metric_code and e.period_start = g.period_start
             ) a
             left join lateral (
                 select b.period_start, b.period_end, b.plan_id, b.trial from billed_periods b
                  where b.tenant_id = $1 and b.subscription_id = g.subscription_id
                    and b.period_start <= g.period_start and g.period_start < b.period_end
                  order by b.period_start desc limit 1
             ) bp on true
            order by g.subscription_id, g.period_start, g.metric_code""",
        tenant_id, subscription_ids,
    )


async def late_unique_counts(conn: asyncpg.Connection, tenant_id: uuid.UUID, subscription_id: uuid.UUID,
                             metric: str, period_start: datetime, prop: str,
                             late_event_ids: list[str]) -> tuple[int, int]:
    """(distinct values without the late events, with them) of one period's metric."""
    row = await conn.fetchrow(
        """select count(distinct properties ->> $5) filter (where not (event_id = any($6::text[]))) as b,
                  count(distinct properties ->> $5) as a
             from usage_events
            where tenant_id = $1 and subscription_id = $2 and metric_code = $3 and period_start = $4
              and properties ? $5""",
        tenant_id, subscription_id, metric, period_start, prop, late_event_ids,
    )
    return row["b"], row["a"]

