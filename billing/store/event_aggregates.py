"""Aggregates read from the raw usage events for the charges the stored totals cannot price
(docs/pricing.md, "what is stored"): a dynamic charge's sum of event prices, a percentage
charge's per-event bands, a weighted_sum charge's changes. Each reads, per subscription, an
index range of usage_events_period, as `period_usage.unique_counts` does; only the
subscriptions whose plan has such a charge are read.
"""
from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal

import asyncpg

# Per subscription: its first period start (the others follow it) and the events from there
# to `before`, one index range each (see period_usage.unique_counts for why LATERAL).
_PERIODS = """from unnest($2::uuid[], $3::timestamptz[]) as p(id, start)
            cross join lateral (
                select {columns}
                  from usage_events e
                 where e.tenant_id = $1 and e.subscription_id = p.id and e.metric_code = $4
                   and e.period_start >= p.start and e.period_start < $5 {extra}
                 group by e.period_start) c"""


async def amount_sums(conn: asyncpg.Connection, tenant_id: uuid.UUID, metric: str, prop: str,
                      periods: list[tuple[uuid.UUID, datetime]], before: datetime) -> list[asyncpg.Record]:
    """(subscription_id, period_start, amount) : the sum of properties->>prop per period.
    Ingestion accepted only events whose property is a plain non-negative decimal."""
    sql = "select p.id as subscription_id, c.period_start, c.amount " + _PERIODS.format(
        columns="e.period_start, sum((e.properties ->> $6)::numeric) as amount", extra="and e.properties ? $6")
    return await conn.fetch(sql, tenant_id, [s for s, _ in periods], [t for _, t in periods], metric, before, prop)


# An event's fee is quantity x rate + fixed; "below" and "above" compare it with the minimum
# and maximum exactly as pricing_models.band_of does (numeric is exact in PostgreSQL).
_BANDS = """e.period_start,
    count(*) filter (where $8::numeric is not null and e.quantity * $6 + $7 < $8) as below,
    count(*) filter (where not ($8::numeric is not null and e.quantity * $6 + $7 < $8)
                       and not ($9::numeric is not null and e.quantity * $6 + $7 > $9)) as within,
    coalesce(sum(e.quantity) filter (where not ($8::numeric is not null and e.quantity * $6 + $7 < $8)
                       and not ($9::numeric is not null and e.quantity * $6 + $7 > $9)), 0) as within_amount,
    count(*) filter (where not ($8::numeric is not null and e.quantity * $6 + $7 < $8)
                       and $9::numeric is not null and e.quantity * $6 + $7 > $9) as above"""


async def fee_bands(conn: asyncpg.Connection, tenant_id: uuid.UUID, metric: str, rate: Decimal, fixed: Decimal,
                    low: Decimal | None, high: Decimal | None, periods: list[tuple[uuid.UUID, datetime]],
                    before: datetime) -> list[asyncpg.Record]:
    """(subscription_id, period_start, below, within, within_amount, above) per period:
    how many events' fees the per-event minimum raises, how many are priced as they are
    (and their amounts' sum), how many the maximum lowers."""
    sql = ("select p.id as subscription_id, c.period_start, c.below, c.within, c.within_amount, c.above "
           + _PERIODS.format(columns=_BANDS, extra=""))
    return await conn.fetch(sql, tenant_id, [s for s, _ in periods], [t for _, t in periods], metric, before,
                            rate, fixed, low, high)


async def gauge_levels(conn: asyncpg.Connection, tenant_id: uuid.UUID, metric: str,
                       periods: list[tuple[uuid.UUID, datetime]]) -> dict[uuid.UUID, Decimal]:
    """Per subscription, the level of a weighted_sum metric before its first period: the
    sum of the totals of every earlier period (usage_totals, one index range each)."""
    rows = await conn.fetch(
        """select p.id, coalesce(t.level, 0) as level
             from unnest($2::uuid[], $3::timestamptz[]) as p(id, start)
            cross join lateral (
                select sum(t.quantity_sum) as level from usage_totals t
                 where t.tenant_id = $1 and t.subscription_id = p.id and t.metric_code = $4
                   and t.period_start < p.start) t""",
        tenant_id, [s for s, _ in periods], [t for _, t in periods], metric)
    return {r["id"]: r["level"] for r in rows}


async def gauge_changes(conn: asyncpg.Connection, tenant_id: uuid.UUID, metric: str,
                        periods: list[tuple[uuid.UUID, datetime]], before: datetime) -> list[asyncpg.Record]:
    """(subscription_id, at_us, quantity) of every event of a weighted_sum metric from the
    subscription's first period on, in time order."""
    return await conn.fetch(
        """select p.id as subscription_id, c.at_us, c.quantity
             from unnest($2::uuid[], $3::timestamptz[]) as p(id, start)
            cross join lateral (
                select (extract(epoch from e.occurred_at) * 1000000)::bigint as at_us, e.quantity
                  from usage_events e
                 where e.tenant_id = $1 and e.subscription_id = p.id and e.metric_code = $4
                   and e.period_start >= p.start and e.period_start < $5
                 order by e.occurred_at, e.event_id) c""",
        tenant_id, [s for s, _ in periods], [t for _, t in periods], metric, before)


async def period_events(conn: asyncpg.Connection, tenant_id: uuid.UUID, subscription_id: uuid.UUID, metric: str,
                        period_start: datetime, late_event_ids: list[str], prop: str | None) -> list[asyncpg.Record]:
    """(at_us, quantity, amount, late) of every event of one period of one metric: what a late
    line of an event-priced charge compares with and without the late events (rare: only
    periods with late events not billed yet)."""
    return await conn.fetch(
        """select (extract(epoch from occurred_at) * 1000000)::bigint as at_us, quantity,
                  case when $6::text is null then null else (properties ->> $6)::numeric end as amount,
                  event_id = any($5::text[]) as late
             from usage_events
            where tenant_id = $1 and subscription_id = $2 and metric_code = $3 and period_start = $4
            order by occurred_at, event_id""",
        tenant_id, subscription_id, metric, period_start, late_event_ids, prop)
