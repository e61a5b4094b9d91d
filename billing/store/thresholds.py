"""Rows of usage_thresholds and usage_threshold_crossings (migrations 028, 029; docs/alerts.md)."""
from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal

import asyncpg

_COLUMNS = ("t.id, t.subscription_id, t.plan_id, t.metric_code, t.measure, t.value, t.recurring, t.created_at, "
            "t.deleted_at, t.percent, t.invoice_on_cross")


async def insert(conn: asyncpg.Connection, tenant_id: uuid.UUID, ident: uuid.UUID, subscription_id: uuid.UUID | None,
                 metric_code: str | None, measure: str, value: Decimal, recurring: bool, *,
                 plan_id: uuid.UUID | None = None, percent: Decimal | None = None,
                 invoice_on_cross: bool = False) -> asyncpg.Record:
    """A threshold of a subscription, or (`plan_id`, subscription_id None) of a plan."""
    return await conn.fetchrow(
        f"""insert into usage_thresholds as t (tenant_id, id, subscription_id, plan_id, metric_code, measure, value,
                                               recurring, percent, invoice_on_cross)
            values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) returning {_COLUMNS}""",
        tenant_id, ident, subscription_id, plan_id, metric_code, measure, value, recurring, percent, invoice_on_cross)


async def get(conn: asyncpg.Connection, tenant_id: uuid.UUID, ident: uuid.UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(f"select {_COLUMNS} from usage_thresholds t where t.tenant_id = $1 and t.id = $2",
                               tenant_id, ident)


async def delete(conn: asyncpg.Connection, tenant_id: uuid.UUID, ident: uuid.UUID) -> asyncpg.Record:
    return await conn.fetchrow(
        f"""update usage_thresholds t set deleted_at = now() where t.tenant_id = $1 and t.id = $2
            returning {_COLUMNS}""", tenant_id, ident)


async def live_count(conn: asyncpg.Connection, tenant_id: uuid.UUID, subscription_id: uuid.UUID | None,
                     plan_id: uuid.UUID | None = None) -> int:
    """Live thresholds of a subscription, or of a plan (`plan_id`)."""
    return await conn.fetchval(
        """select count(*) from usage_thresholds
            where tenant_id = $1 and deleted_at is null
              and (subscription_id = $2 or plan_id = $3)""",
        tenant_id, subscription_id, plan_id)


def _page_of(scope: str):
    """A page of the thresholds of a subscription or of a plan (`scope` names the column),
    keyed by creation time then id."""
    async def list_page(conn: asyncpg.Connection, tenant_id: uuid.UUID, owner_id: uuid.UUID, *,
                        include_deleted: bool, after: tuple[datetime, uuid.UUID] | None,
                        limit: int) -> list[asyncpg.Record]:
        after_at, after_id = after if after else (None, None)
        return await conn.fetch(
            f"""select {_COLUMNS} from usage_thresholds t
                 where t.tenant_id = $1 and t.{scope} = $2 and ($3 or t.deleted_at is null)
                   and ($4::timestamptz is null or (t.created_at, t.id) > ($4, $5))
                 order by t.created_at, t.id limit $6""",
            tenant_id, owner_id, include_deleted, after_at, after_id, limit)
    return list_page


list_page = _page_of("subscription_id")
list_plan_page = _page_of("plan_id")


# ONE statement per tenant of a usage batch, after its totals are folded: the live quantity
# thresholds of the touched (subscription, metric, period) keys - the subscription's own and
# its current plan's - whose total now reaches them, each recorded as crossed for that
# subscription (ON CONFLICT DO NOTHING: a crossing already recorded, by an earlier batch, a
# replay or a concurrent transaction, returns nothing). For a tenant with no thresholds it is
# one probe of the partial index usage_thresholds_by_subscription per touched key, and one
# probe of usage_thresholds_by_plan for the whole statement (the plan branch runs only when
# the tenant has a live plan threshold). A one-off threshold is keyed on the epoch
# (ONCE_KEY), so it is recorded once ever per subscription; DISTINCT ON keeps two periods of
# one batch from both claiming it. A subscription on a test clock crosses at its clock's time.
_CROSSINGS = """
with touched as (
    select distinct u.sub, u.metric, timestamptz 'epoch' + u.start_us * interval '1 microsecond' as period_start
      from unnest($2::uuid[], $3::text[], $4::bigint[]) as u(sub, metric, start_us)
), scoped as (
    select u.sub, u.metric, u.period_start, th.id, th.value, th.recurring, th.measure, false as plan_level
      from touched u
     cross join lateral (
           select th.id, th.value, th.recurring, th.measure from usage_thresholds th
            where th.tenant_id = $1 and th.subscription_id = u.sub and th.metric_code = u.metric
              and th.deleted_at is null
           offset 0) th
    union all
    select u.sub, u.metric, u.period_start, th.id, th.value, th.recurring, th.measure, true
      from touched u
      join subscriptions s on s.tenant_id = $1 and s.id = u.sub
     cross join lateral (
           select th.id, th.value, th.recurring, th.measure from usage_thresholds th
            where th.tenant_id = $1 and th.plan_id = s.plan_id and th.metric_code = u.metric and th.deleted_at is null
           offset 0) th
     where exists (select 1 from usage_thresholds p
                    where p.tenant_id = $1 and p.plan_id is not null and p.deleted_at is null)
), hit as (
    select distinct on (th.id, th.sub, case when th.recurring then tt.period_start else timestamptz 'epoch' end)
           th.id, th.sub as subscription_id, th.plan_level, th.metric as metric_code, th.value, th.recurring,
           tt.period_start,
           tt.period_end, case when th.recurring then tt.period_start else timestamptz 'epoch' end as key,
           case when exists (select 1 from test_clocks k where k.tenant_id = $1) then
               (select c.frozen_time from subscriptions s join test_clocks c on c.tenant_id = s.tenant_id
                                                                             and c.id = s.test_clock_id
                 where s.tenant_id = $1 and s.id = th.sub) end as clock_now,
           case th.measure when 'quantity_sum' then tt.quantity_sum
                           when 'event_count' then tt.event_count::numeric
                           when 'quantity_max' then tt.quantity_max
                           else tt.latest_quantity end as quantity
      from scoped th
      join usage_totals tt
        on tt.tenant_id = $1 and tt.subscription_id = th.sub and tt.metric_code = th.metric
       and tt.period_start = th.period_start
     where case th.measure when 'quantity_sum' then tt.quantity_sum
                           when 'event_count' then tt.event_count::numeric
                           when 'quantity_max' then tt.quantity_max
                           else tt.latest_quantity end >= th.value
     order by th.id, th.sub, case when th.recurring then tt.period_start else timestamptz 'epoch' end,
              tt.period_start
), recorded as (
    insert into usage_threshold_crossings (tenant_id, threshold_id, subscription_id, period_start, crossed_at)
    select $1, id, subscription_id, key, coalesce(clock_now, now()) from hit
    on conflict do nothing
    returning threshold_id, subscription_id, period_start, crossed_at
)
select h.id, h.subscription_id, h.plan_level, h.metric_code, h.value, h.recurring, h.period_start, h.period_end, h.key,
       h.quantity, r.crossed_at
  from hit h join recorded r
    on r.threshold_id = h.id and r.subscription_id = h.subscription_id and r.period_start = h.key
 order by h.subscription_id, h.period_start, h.value, h.id
"""


async def record_crossings(conn: asyncpg.Connection, tenant_id: uuid.UUID,
                           touched: list[tuple[uuid.UUID, str, int]]) -> list[asyncpg.Record]:
    """The quantity thresholds newly crossed by a batch that touched these (subscription,
    metric, period start in microseconds) keys, recorded as crossed in the caller's transaction."""
    if not touched:
        return []
    subs, metrics, starts = (list(c) for c in zip(*touched))
    return await conn.fetch(_CROSSINGS, tenant_id, subs, metrics, starts)


async def crossings_of(conn: asyncpg.Connection, tenant_id: uuid.UUID, threshold_id: uuid.UUID) -> list[asyncpg.Record]:
    return await conn.fetch(
        """select subscription_id, period_start, crossed_at from usage_threshold_crossings
            where tenant_id = $1 and threshold_id = $2 order by subscription_id, period_start""",
        tenant_id, threshold_id)


_AMOUNT_COLUMNS = """th.id, s.id as subscription_id, th.plan_id is not null as plan_level, th.value, th.recurring,
                  th.invoice_on_cross, s.plan_id, s.status, s.current_period_start, s.current_period_end,
                  s.test_clock_id,
                  (select c.frozen_time from test_clocks c where c.tenant_id = $1 and c.id = s.test_clock_id)
                      as clock_now"""


async def amount_thresholds(conn: asyncpg.Connection, tenant_id: uuid.UUID,
                            subscription_ids: list[uuid.UUID]) -> list[asyncpg.Record]:
    """The live amount thresholds of these subscriptions, their own (a probe of the partial
    index usage_thresholds_amount per subscription) and their current plan's (only when the
    tenant has a live plan-level amount threshold), with what pricing their period needs."""
    return await conn.fetch(
        f"""select {_AMOUNT_COLUMNS}
              from usage_thresholds th
              join subscriptions s on s.tenant_id = $1 and s.id = th.subscription_id
             where th.tenant_id = $1 and th.subscription_id = any($2::uuid[]) and th.deleted_at is null
               and th.measure = 'amount'
            union all
            select {_AMOUNT_COLUMNS}
              from subscriptions s
              join usage_thresholds th on th.tenant_id = $1 and th.plan_id = s.plan_id and th.deleted_at is null
                                      and th.measure = 'amount'
             where s.tenant_id = $1 and s.id = any($2::uuid[])
               and exists (select 1 from usage_thresholds p where p.tenant_id = $1 and p.plan_id is not null
                                                             and p.deleted_at is null and p.measure = 'amount')
            order by subscription_id, value, id""",
        tenant_id, subscription_ids)


async def record_amount_crossings(conn: asyncpg.Connection, tenant_id: uuid.UUID, subscription_id: uuid.UUID,
                                  crossings: list[tuple[uuid.UUID, datetime, datetime | None]]) -> list[asyncpg.Record]:
    """Record (threshold, key, crossed at; None: now) as crossed for the subscription, ON
    CONFLICT DO NOTHING; only the rows actually inserted come back (threshold_id, period_start,
    crossed_at)."""
    if not crossings:
        return []
    ids, keys, times = (list(c) for c in zip(*crossings))
    return await conn.fetch(
        """insert into usage_threshold_crossings (tenant_id, threshold_id, subscription_id, period_start, crossed_at)
           select $1, u.id, $2, u.key, coalesce(u.at, now())
             from unnest($3::uuid[], $4::timestamptz[], $5::timestamptz[]) as u(id, key, at)
           on conflict do nothing
           returning threshold_id, period_start, crossed_at""",
        tenant_id, subscription_id, ids, keys, times)
