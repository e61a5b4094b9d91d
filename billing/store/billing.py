"""Rows of billing_runs and billed_periods, and the billing run's reads of subscriptions and totals."""
from __future__ import annotations

import uuid
from dataclasses import fields, replace
from datetime import datetime
from typing import Iterable

import asyncpg

from billing.domain.lifecycle import SubscriptionStatus
from billing.domain.subscriptions import Subscription
from billing.store import subscriptions as subs_store

_RUN = """tenant_id, id, idempotency_key, as_of, status, subscriptions_due, subscriptions_billed,
          subscriptions_skipped, subscriptions_failed, failures, totals, created_at, started_at, finished_at,
          shard_count"""


async def insert_run(conn: asyncpg.Connection, tenant_id: uuid.UUID, run_id: uuid.UUID, key: str,
                     as_of: datetime) -> asyncpg.Record | None:
    """The new run, or None when the key names a run already (a concurrent insert of the same
    key waits here for the other transaction, then sees its row)."""
    return await conn.fetchrow(
        f"""insert into billing_runs (tenant_id, id, idempotency_key, as_of) values ($1, $2, $3, $4)
            on conflict (tenant_id, idempotency_key) do nothing returning {_RUN}""",
        tenant_id, run_id, key, as_of,
    )


async def get_run_by_key(conn: asyncpg.Connection, tenant_id: uuid.UUID, key: str) -> asyncpg.Record | None:
    return await conn.fetchrow(f"select {_RUN} from billing_runs where tenant_id = $1 and idempotency_key = $2",
                               tenant_id, key)


async def get_run(conn: asyncpg.Connection, tenant_id: uuid.UUID, run_id: uuid.UUID, *,
                  for_update: bool = False) -> asyncpg.Record | None:
    lock = " for update" if for_update else ""
    return await conn.fetchrow(f"select {_RUN} from billing_runs where tenant_id = $1 and id = $2{lock}",
                               tenant_id, run_id)


async def list_runs(conn: asyncpg.Connection, tenant_id: uuid.UUID, *, status: str | None,
                    created_after: datetime | None, created_before: datetime | None,
                    after: tuple[datetime, uuid.UUID] | None, limit: int) -> list[asyncpg.Record]:
    after_at, after_id = after if after else (None, None)
    return await conn.fetch(
        f"""select {_RUN} from billing_runs
            where tenant_id = $1
              and ($2::text is null or status = $2)
              and ($3::timestamptz is null or created_at >= $3)
              and ($4::timestamptz is null or created_at < $4)
              and ($5::timestamptz is null or (created_at, id) < ($5, $6))
            order by created_at desc, id desc limit $7""",
        tenant_id, status, created_after, created_before, after_at, after_id, limit,
    )


async def mark_running(conn: asyncpg.Connection, tenant_id: uuid.UUID, run_id: uuid.UUID) -> None:
    await conn.execute(
        """update billing_runs set status = 'running', started_at = coalesce(started_at, now())
            where tenant_id = $1 and id = $2 and status in ('pending', 'running')""", tenant_id, run_id)


async def mark_finished(conn: asyncpg.Connection, tenant_id: uuid.UUID, run_id: uuid.UUID, status: str) -> None:
    await conn.execute(
        """update billing_runs set status = $3, finished_at = coalesce(finished_at, now())
            where tenant_id = $1 and id = $2""", tenant_id, run_id, status)


async def add_progress(conn: asyncpg.Connection, tenant_id: uuid.UUID, run_id: uuid.UUID, *, due: int, billed: int,
                       skipped: int, failed: int, failures: list[dict], totals: dict[str, str]) -> None:
    """Add one chunk's counts; `totals` replaces the stored totals (the caller merged them
    under the run row's lock)."""
    await conn.execute(
        """update billing_runs set subscriptions_due = subscriptions_due + $3,
                  subscriptions_billed = subscriptions_billed + $4, subscriptions_skipped = subscriptions_skipped + $5,
                  subscriptions_failed = subscriptions_failed + $6, failures = failures || $7::jsonb, totals = $8
            where tenant_id = $1 and id = $2""",
        tenant_id, run_id, due, billed, skipped, failed, failures, totals,
    )


# A subscription's shard: a stable hash of its id (PostgreSQL's hashtext) modulo the count.
def _in_shard(count: str, shard: str) -> str:
    return f"(hashtext(id::text) & 2147483647) % {count} = {shard}"


async def window_ends(conn: asyncpg.Connection, tenant_id: uuid.UUID, size: int) -> list[uuid.UUID]:
    """Every `size`-th subscription id of the tenant, in order: the ends of the windows
    (after, end] of the primary key that `due_subscriptions` reads, for a whole pass. One
    index-only walk at the start of the pass, while the visibility map still says that the
    pages hold nothing new; found window by window instead, during the run, each walk
    fetched the heap row of every id (the run's own updates clear the map): 6 us of
    PostgreSQL time per subscription instead of half of one. Only the ends cross the wire."""
    return [r[0] for r in await conn.fetch(
        """select id from (select id, row_number() over (order by id) as n
                             from subscriptions where tenant_id = $1) w
            where n % $2 = 0 order by id""",
        tenant_id, size)]


_LAST_ID = uuid.UUID(int=2**128 - 1)


async def due_subscriptions(conn: asyncpg.Connection, tenant_id: uuid.UUID, as_of: datetime,
                            exclude: list[uuid.UUID], after: uuid.UUID | None, last: uuid.UUID | None, *,
                            shard: int = 0, shard_count: int = 1):
    """The due subscriptions of the shard with ids in (after, last] (a window of
    `window_ends`; None: no bound), in id order, locked. SKIP LOCKED: rows another run (or another execution
    of this run, or a usage batch attributing events to their periods) holds right now are
    left for a later pass; once it commits they are no longer due, or are found by that
    pass."""
    rows = await conn.fetch(
        f"""select {_RUN_COLUMNS} from subscriptions
            where tenant_id = $1 and id > $4 and id <= $5
              and status in ('trialing', 'active', 'paused') and current_period_end <= $2
              and not (id = any($3::uuid[])) and {_in_shard("$6", "$7")}
            order by id
            for update skip locked""",
        tenant_id, as_of, exclude, after or uuid.UUID(int=0), last or _LAST_ID, shard_count, shard,
    )
    return [_subscription(r) for r in rows]


_STATUSES = {s.value: s for s in SubscriptionStatus}
# The row's columns are the dataclass's fields in order (both come from the same list).
_ROW_IS_FIELDS = subs_store._FIELDS == tuple(f.name for f in fields(Subscription))


# The subscription columns a run reads: the empty metadata most subscriptions have comes as
# NULL, not as a JSON document that the connection's codec parses once per row (a sixth of
# decoding a row).
_RUN_COLUMNS = ", ".join("nullif(metadata, '{}'::jsonb) as metadata" if f == "metadata" else f
                         for f in subs_store._FIELDS)


def _subscription(row: asyncpg.Record) -> Subscription:
    """`subscriptions.from_row` for a run's thousands of rows (of `_RUN_COLUMNS`): the frozen
    dataclass's __init__ sets its 19 fields one setattr at a time; filling its __dict__
    makes the same object at a third of the cost."""
    if not _ROW_IS_FIELDS:
        sub = subs_store.from_row(row)
        return sub if sub.metadata is not None else replace(sub, metadata={})
    sub = object.__new__(Subscription)
    state = sub.__dict__
    state.update(zip(subs_store._FIELDS, row.values()))
    state["status"] = _STATUSES[state["status"]]
    if state["metadata"] is None:
        state["metadata"] = {}
    return sub


async def any_due(conn: asyncpg.Connection, tenant_id: uuid.UUID, as_of: datetime, exclude: list[uuid.UUID],
                  *, shard: int = 0, shard_count: int = 1) -> bool:
    """Whether a due subscription of the shard remains, locked rows included (a plain read
    does not wait for locks: a row another execution is billing still looks due until it
    commits)."""
    return await conn.fetchval(
        f"""select exists(select 1 from subscriptions
            where tenant_id = $1 and status in ('trialing', 'active', 'paused') and current_period_end <= $2
              and not (id = any($3::uuid[])) and {_in_shard("$4", "$5")})""",
        tenant_id, as_of, exclude, shard_count, shard,
    )


async def canceled_with_late_usage(conn: asyncpg.Connection, tenant_id: uuid.UUID, *, shard: int = 0,
                                   shard_count: int = 1) -> list[Subscription]:
    """The canceled subscriptions of the shard that have late usage not billed yet, locked
    (FOR UPDATE SKIP LOCKED, in id order): a canceled subscription never bills a period
    again, so a run's late-usage pass bills it on a request of its own. Driven by
    late_usage_pending (migration 014: the subscriptions with late usage still to bill,
    not every late event ever stored; `= any(array(...))`: the ids are found first, then
    probed in the primary key, never a scan of the tenant's subscriptions): with none
    unbilled, one index range and nothing else. A row someone else holds (a usage batch,
    another execution) is left for the next run."""
    rows = await conn.fetch(
        f"""select {_RUN_COLUMNS} from subscriptions
            where tenant_id = $1 and status = 'canceled' and {_in_shard("$2", "$3")}
              and id = any(array(select p.subscription_id from late_usage_pending p where p.tenant_id = $1))
            order by id
            for update skip locked""",
        tenant_id, shard_count, shard,
    )
    return [_subscription(r) for r in rows]


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


USAGE_TOTALS = ("quantity_sum", "event_count", "quantity_max", "latest_quantity")


async def usage_totals_from(conn: asyncpg.Connection, tenant_id: uuid.UUID,
                            periods: list[tuple[uuid.UUID, datetime]], before: datetime,
                            wanted: Iterable[str] = USAGE_TOTALS) -> list[asyncpg.Record]:
    """The usage totals of every period of these subscriptions from the given (current)
    period start on, up to periods starting before `before`: all a run needs to bill them.
    A row names its subscription by its position in `periods` (`n`, from 1) and its period
    by its start, NULL when it is the given one; of the totals (`USAGE_TOTALS`) only the
    `wanted` ones are read, the others are NULL. The common row then decodes as two small
    values and one total, not a UUID, a time and four totals (a fifth of a run's decoding)."""
    totals = ", ".join(f"t.{c}" if c in wanted else f"null::{_TOTAL_TYPES[c]} as {c}" for c in USAGE_TOTALS)
    # One index probe per subscription, whatever the plan cache does: OFFSET 0 keeps the
    # planner from flattening the LATERAL subquery into a join, which it then ran as a hash
    # join over a sequential scan of the tenant's whole usage_totals (43 ms instead of 9
    # for a chunk of 2,000 among 100,000, growing with the tenant); `= any(ids)` instead
    # was fine with a custom plan and took 230 ms with the generic one asyncpg's prepared
    # statement ends up with.
    return await conn.fetch(
        f"""select p.n, nullif(t.period_start, p.start) as period_start, t.metric_code, {totals}
             from unnest($2::uuid[], $3::timestamptz[]) with ordinality as p(id, start, n)
            cross join lateral (
                select * from usage_totals t
                 where t.tenant_id = $1 and t.subscription_id = p.id and t.period_start >= p.start
                   and t.period_start < $4
                offset 0) t""",
        tenant_id, [s for s, _ in periods], [t for _, t in periods], before,
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


# Columns of subscriptions a billing run may change, with their types (the others - id,
# customer, creation, start, trial days, metadata - a period close never changes).
_IMMUTABLE = {"id", "customer_id", "created_at", "start_at", "trial_days", "metadata"}
_TYPES = {"plan_id": "uuid", "pending_plan_id": "uuid", "status": "text", "cancel_at_period_end": "bool"}


def _type(column: str) -> str:
    return _TYPES.get(column, "timestamptz")  # every other mutable column is a time


async def advance_subscriptions(conn: asyncpg.Connection, tenant_id: uuid.UUID, subs: list,
                               columns: set[str] | None = None) -> None:
    """Write the new state of many subscriptions in one statement: the `columns` given (the
    ones their closes changed; default all a run may change). Sending only those spares
    encoding a dozen arrays of unchanged values per chunk."""
    if not subs:
        return
    columns = [f for f in subs_store._FIELDS if f not in _IMMUTABLE and (columns is None or f in columns)]
    arrays = []
    for c in columns:
        if c == "status":
            arrays.append([s.status.value for s in subs])
        else:
            arrays.append([getattr(s, c) for s in subs])
    sets = "".join(f"{c} = u.{c}, " for c in columns)
    params = "".join(f", ${i + 3}::{_type(c)}[]" for i, c in enumerate(columns))
    names = "".join(f", {c}" for c in columns)
    # Each row is found by one primary-key probe (LATERAL ... OFFSET 0) and updated by its
    # ctid: joined by id instead, the planner chose a hash join over a sequential scan of
    # the tenant's subscriptions for every chunk (19 of 27 ms at 50,000, growing with the
    # tenant: quadratic over a run). The ctid read here is the version this statement
    # updates: the run holds these rows locked (FOR UPDATE) since it read them.
    await conn.execute(
        f"""with u as (
                select r.tid, u.* from unnest($2::uuid[]{params}) as u(id{names})
                 cross join lateral (select ctid as tid from subscriptions s
                                      where s.tenant_id = $1 and s.id = u.id offset 0) r)
            update subscriptions s set {sets}updated_at = now()
              from u
             where s.ctid = u.tid and s.tenant_id = $1""",
        tenant_id, [s.id for s in subs], *arrays,
    )


# -- shards -------------------------------------------------------------------------------

async def set_shard_count(conn: asyncpg.Connection, tenant_id: uuid.UUID, run_id: uuid.UUID, count: int) -> None:
    await conn.execute("update billing_runs set shard_count = $3 where tenant_id = $1 and id = $2",
                       tenant_id, run_id, count)


async def start_shard(conn: asyncpg.Connection, tenant_id: uuid.UUID, run_id: uuid.UUID, shard: int,
                      executor: str) -> str:
    """Record that a shard is being executed (by `executor`); its status ('running' or
    'completed': then it stays as it was)."""
    return await conn.fetchval(
        """insert into billing_run_shards as s (tenant_id, run_id, shard, executed_by) values ($1, $2, $3, $4)
           on conflict (tenant_id, run_id, shard) do update
               set executed_by = case when s.status = 'completed' then s.executed_by else excluded.executed_by end
           returning status""", tenant_id, run_id, shard, executor)


async def add_shard_progress(conn: asyncpg.Connection, tenant_id: uuid.UUID, run_id: uuid.UUID, shard: int,
                             due: int, billed: int) -> None:
    await conn.execute(
        """update billing_run_shards set subscriptions_due = subscriptions_due + $4,
                  subscriptions_billed = subscriptions_billed + $5
            where tenant_id = $1 and run_id = $2 and shard = $3""", tenant_id, run_id, shard, due, billed)


async def finish_shard(conn: asyncpg.Connection, tenant_id: uuid.UUID, run_id: uuid.UUID, shard: int) -> None:
    await conn.execute(
        """update billing_run_shards set status = 'completed', finished_at = coalesce(finished_at, now())
            where tenant_id = $1 and run_id = $2 and shard = $3""", tenant_id, run_id, shard)


async def completed_shards(conn: asyncpg.Connection, tenant_id: uuid.UUID, run_id: uuid.UUID) -> int:
    return await conn.fetchval(
        "select count(*) from billing_run_shards where tenant_id = $1 and run_id = $2 and status = 'completed'",
        tenant_id, run_id)


async def shards(conn: asyncpg.Connection, tenant_id: uuid.UUID, run_id: uuid.UUID) -> list[asyncpg.Record]:
    return await conn.fetch(
        """select shard, status, subscriptions_due, subscriptions_billed, executed_by, started_at, finished_at
             from billing_run_shards where tenant_id = $1 and run_id = $2 order by shard""", tenant_id, run_id)
