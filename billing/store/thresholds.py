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


# The thresholds' part of a usage batch's ONE statement (store/usage.store_batch appends
# these CTEs to it): `totals` is that statement's upsert of usage_totals, RETURNING each
# (subscription, metric, period) total the batch changed with its new values, so the
# thresholds are judged on exactly the keys that got usage, with no second read of the
# totals and no round trip of their own. `hit`: the live quantity thresholds of those keys
# (the subscription's own and its current plan's) whose total now reaches them and that
# have no crossing recorded yet (a probe: most reached thresholds were crossed by an earlier
# batch, and a probe costs less than the insert's conflict); `recorded`: those this
# statement inserted (ON CONFLICT DO NOTHING: a concurrent transaction may record one
# meanwhile, and then it is that transaction's alert). A key's thresholds are a LATERAL
# probe of usage_thresholds_by_subscription (offset 0: one probe per key whatever the
# statistics, docs/alerts.md); the plan branch runs only when the tenant has a live plan
# threshold (one probe of usage_thresholds_by_plan). A one-off
# threshold is keyed on the epoch (ONCE_KEY), so it is recorded once ever per subscription;
# DISTINCT ON keeps two periods of one batch from both claiming it. A subscription on a test
# clock crosses at its clock's time. `amount_probe`: the live amount thresholds of the
# batch's subscriptions, their own and their current plan's (only when the tenant has a
# live plan-level amount threshold), with what pricing their period needs and whether the
# batch added usage to their current period (services/amount_thresholds.py prices those).
_KEY = "case when th.recurring then th.period_start else timestamptz 'epoch' end"
_QUANTITY = """case th.measure when 'quantity_sum' then u.quantity_sum
                           when 'event_count' then u.event_count::numeric
                           when 'quantity_max' then u.quantity_max
                           else u.latest_quantity end"""
_AMOUNT_COLUMNS = """th.id, s.id as subscription_id, th.plan_id is not null as plan_level, th.value, th.recurring,
                  th.invoice_on_cross, s.plan_id, s.status, s.current_period_start, s.current_period_end,
                  s.test_clock_id,
                  (select c.frozen_time from test_clocks c where c.tenant_id = $1 and c.id = s.test_clock_id)
                      as clock_now,
                  exists (select 1 from totals u where u.subscription_id = s.id
                                                   and u.period_start = s.current_period_start) as added"""
BATCH_CTES = f""", scoped as (
    select u.subscription_id as sub, u.metric_code as metric, u.period_start, u.period_end, th.id, th.value,
           th.recurring, false as plan_level, {_QUANTITY} as quantity
      from totals u
     cross join lateral (
           select th.id, th.value, th.recurring, th.measure from usage_thresholds th
            where th.tenant_id = $1 and th.subscription_id = u.subscription_id and th.metric_code = u.metric_code
              and th.deleted_at is null
           offset 0) th
    union all
    select u.subscription_id, u.metric_code, u.period_start, u.period_end, th.id, th.value, th.recurring, true,
           {_QUANTITY}
      from totals u
      join subscriptions s on s.tenant_id = $1 and s.id = u.subscription_id
     cross join lateral (
           select th.id, th.value, th.recurring, th.measure from usage_thresholds th
            where th.tenant_id = $1 and th.plan_id = s.plan_id and th.metric_code = u.metric_code
              and th.deleted_at is null
           offset 0) th
     where exists (select 1 from usage_thresholds p
                    where p.tenant_id = $1 and p.plan_id is not null and p.deleted_at is null)
), hit as (
    select distinct on (th.id, th.sub, {_KEY})
           th.id, th.sub as subscription_id, th.plan_level, th.metric as metric_code, th.value, th.recurring,
           th.period_start, th.period_end, {_KEY} as key, th.quantity,
           case when exists (select 1 from test_clocks k where k.tenant_id = $1) then
               (select c.frozen_time from subscriptions s join test_clocks c on c.tenant_id = s.tenant_id
                                                                             and c.id = s.test_clock_id
                 where s.tenant_id = $1 and s.id = th.sub) end as clock_now
      from scoped th
     where th.quantity >= th.value
       and not exists (select 1 from usage_threshold_crossings c
                        where c.tenant_id = $1 and c.threshold_id = th.id and c.subscription_id = th.sub
                          and c.period_start = {_KEY})
     order by th.id, th.sub, {_KEY}, th.period_start
), recorded as (
    insert into usage_threshold_crossings (tenant_id, threshold_id, subscription_id, period_start, crossed_at)
    select $1, id, subscription_id, key, coalesce(clock_now, now()) from hit
    on conflict do nothing
    returning threshold_id, subscription_id, period_start, crossed_at
), batch_subs as (
    select distinct subscription_id from totals
), amount_probe as (
    select {_AMOUNT_COLUMNS}
      from batch_subs b
     cross join lateral (
           select th.* from usage_thresholds th
            where th.tenant_id = $1 and th.subscription_id = b.subscription_id and th.deleted_at is null
              and th.measure = 'amount'
           offset 0) th
      join subscriptions s on s.tenant_id = $1 and s.id = th.subscription_id
    union all
    select {_AMOUNT_COLUMNS}
      from batch_subs b
      join subscriptions s on s.tenant_id = $1 and s.id = b.subscription_id
      join usage_thresholds th on th.tenant_id = $1 and th.plan_id = s.plan_id and th.deleted_at is null
                              and th.measure = 'amount'
     where exists (select 1 from usage_thresholds p where p.tenant_id = $1 and p.plan_id is not null
                                                   and p.deleted_at is null and p.measure = 'amount')
)"""
# The batch statement's last columns, arrays of anonymous records (tuples): `crossings`, the
# quantity thresholds reached and not recorded before the statement (CROSSING_FIELDS);
# `recorded`, the crossings it did record (RECORDED_FIELDS): a concurrent transaction may
# have recorded one of the first meanwhile (ON CONFLICT DO NOTHING), so only those in both
# are new (`new_crossings`); `amount_thresholds` (AMOUNT_FIELDS).
CROSSING_FIELDS = ("id", "subscription_id", "plan_level", "metric_code", "value", "recurring", "period_start",
                   "period_end", "key", "quantity")
RECORDED_FIELDS = ("threshold_id", "subscription_id", "period_start", "crossed_at")
AMOUNT_FIELDS = ("id", "subscription_id", "plan_level", "value", "recurring", "invoice_on_cross", "plan_id", "status",
                 "current_period_start", "current_period_end", "test_clock_id", "clock_now", "added")
BATCH_COLUMNS = f""",
       array(select row({", ".join(CROSSING_FIELDS)}) from hit order by subscription_id, period_start, value, id)
           as crossings,
       array(select row({", ".join(RECORDED_FIELDS)}) from recorded) as recorded,
       array(select row({", ".join(AMOUNT_FIELDS)}) from amount_probe order by subscription_id, value, id)
           as amount_thresholds"""


def new_crossings(crossings: list[tuple], recorded: list[tuple]) -> list[dict]:
    """The crossings this batch recorded, in `crossings`' order, as dicts of CROSSING_FIELDS
    and `crossed_at`."""
    at = {(r[0], r[1], r[2]): r[3] for r in recorded}
    out = []
    for c in crossings:
        crossed_at = at.get((c[0], c[1], c[8]))
        if crossed_at is not None:
            out.append({**dict(zip(CROSSING_FIELDS, c)), "crossed_at": crossed_at})
    return out


async def crossings_of(conn: asyncpg.Connection, tenant_id: uuid.UUID, threshold_id: uuid.UUID) -> list[asyncpg.Record]:
    return await conn.fetch(
        """select subscription_id, period_start, crossed_at from usage_threshold_crossings
            where tenant_id = $1 and threshold_id = $2 order by subscription_id, period_start""",
        tenant_id, threshold_id)


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
