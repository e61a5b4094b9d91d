"""SQL of the partition maintenance of usage_events (by period start, migration 032), outbox
(by created_at) and audit_events (by at, 033): monthly partitions created ahead; retention
by detaching (and, but for the audit trail, dropping) whole partitions.

Creating runs as the worker (the security-definer time_partition_ensure); listing,
checking and dropping run as the schema owner (`billing maintenance`), who alone may detach.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime, timedelta

import asyncpg

USAGE, OUTBOX, AUDIT = "usage_events", "outbox", "audit_events"  # the time-partitioned tables


@dataclass(frozen=True)
class Partition:
    name: str
    start: datetime  # period starts in [start, end)
    end: datetime


async def ensure(conn: asyncpg.Connection, month: date, parent: str = USAGE) -> bool:
    """The month's partition of `parent` exists after this; True when this call created it."""
    return bool(await conn.fetchval("select time_partition_ensure($1, $2)", parent, month))


async def monthly(conn: asyncpg.Connection, parent: str = USAGE) -> list[Partition]:
    """The monthly partitions attached to `parent`, oldest first (the default one apart)."""
    rows = await conn.fetch(
        """select b.relname, b.bounds[1]::timestamptz as lo, b.bounds[2]::timestamptz as hi
             from (select c.relname, regexp_match(pg_get_expr(c.relpartbound, c.oid),
                                                  'FROM \\(''([^'']+)''\\) TO \\(''([^'']+)''\\)') as bounds
                     from pg_inherits i join pg_class c on c.oid = i.inhrelid
                    where i.inhparent = $1::regclass and c.relname <> $1 || '_default') b
            order by lo""", parent)
    return [Partition(r["relname"], r["lo"], r["hi"]) for r in rows]


async def default_rows(conn: asyncpg.Connection) -> int:
    """Events in the default partition: months no partition covers (docs/usage.md)."""
    return await conn.fetchval("select count(*) from usage_events_default")


async def blockers(conn: asyncpg.Connection, p: Partition, billed_before: datetime, ended_before: timedelta,
                   now: datetime) -> dict[str, int]:
    """What keeps a partition: periods not billed (or billed after `billed_before`), periods
    that ended less than `ended_before` ago (the late window: a late event may still arrive;
    a test clock's subscription measured by its clock), late events not billed yet. All zero:
    the partition may go. One scan of the partition (as the owner: every tenant)."""
    row = await conn.fetchrow(
        f"""with periods as (
                select distinct e.tenant_id, e.subscription_id, e.period_start, e.period_end from {_ident(p.name)} e
            )
            select count(*) filter (where not exists (
                       select 1 from billed_periods b
                        where b.tenant_id = x.tenant_id and b.subscription_id = x.subscription_id
                          and b.period_start <= x.period_start and x.period_start < b.period_end
                          and b.billed_at <= $1::timestamptz)) as unbilled,
                   count(*) filter (where x.period_end > coalesce(
                       (select c.frozen_time from subscriptions s join test_clocks c
                          on c.tenant_id = s.tenant_id and c.id = s.test_clock_id
                         where s.tenant_id = x.tenant_id and s.id = x.subscription_id), $3::timestamptz) - $2::interval)
                       as in_late_window,
                   (select count(*) from {_ident(p.name)} e
                     where e.late and not exists (select 1 from late_usage_billed b
                                                   where b.tenant_id = e.tenant_id and b.event_id = e.event_id))
                       as late_unbilled
              from periods x""",
        billed_before, ended_before, now)
    return dict(row)


async def unpublished(conn: asyncpg.Connection, p: Partition) -> int:
    """Outbox rows of the partition not published yet (parked ones included)."""
    return await conn.fetchval(f"select count(*) from {_ident(p.name)} where published_at is null")


async def detach(conn: asyncpg.Connection, p: Partition, lock_timeout_s: float, parent: str = USAGE) -> bool:
    """Detach the partition from its table (plain DETACH: CONCURRENTLY is not allowed
    beside a default partition). It takes an ACCESS EXCLUSIVE lock on the table for a
    catalog change only; `lock_timeout_s` bounds how long it may queue (and so hold back
    the statements queued behind it). False: the lock was not granted in time (nothing
    changed; the next pass tries again)."""
    try:
        async with conn.transaction():
            await conn.execute(f"set local lock_timeout = '{int(lock_timeout_s * 1000)}ms'")
            await conn.execute(f"alter table {_ident(parent)} detach partition {_ident(p.name)}")
    except asyncpg.LockNotAvailableError:
        return False
    return True


async def detached_subscriptions(conn: asyncpg.Connection, name: str) -> list[tuple[uuid.UUID, uuid.UUID]]:
    return [(r[0], r[1]) for r in await conn.fetch(
        f"select distinct tenant_id, subscription_id from {_ident(name)}")]


async def forget_keys(conn: asyncpg.Connection, name: str, tenant_id: uuid.UUID, subscription_id: uuid.UUID) -> int:
    """Delete the dedup keys (usage_event_ids) of one subscription's events in a detached
    partition: a short transaction per subscription (row locks only)."""
    status = await conn.execute(
        f"""delete from usage_event_ids k using {_ident(name)} e
             where e.tenant_id = $1 and e.subscription_id = $2 and k.tenant_id = $1
               and k.event_key = md5(e.event_id)::uuid""", tenant_id, subscription_id)
    return int(status.split()[-1])


async def drop(conn: asyncpg.Connection, name: str) -> None:
    await conn.execute(f"drop table {_ident(name)}")


async def detached(conn: asyncpg.Connection, parent: str = USAGE) -> list[str]:
    """<parent>_pYYYY_MM tables not attached (a pass that detached and did not finish)."""
    rows = await conn.fetch(
        """select c.relname from pg_class c
            where c.relnamespace = 'public'::regnamespace and c.relkind = 'r' and c.relname ~ ('^' || $1 || '_p\\d{4}_\\d{2}$')
              and not c.relispartition order by 1""", parent)
    return [r[0] for r in rows]


def _ident(name: str) -> str:
    if not name.replace("_", "").isalnum():
        raise ValueError(f"not a partition name: {name!r}")
    return '"' + name + '"'
