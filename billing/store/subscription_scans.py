"""The billing run's scans of subscriptions (due, canceled with late usage) and its bulk advance."""
from __future__ import annotations

import uuid
from datetime import datetime
from dataclasses import fields, replace

import asyncpg

from billing.domain.lifecycle import SubscriptionStatus
from billing.domain.subscriptions import Subscription
from billing.store import subscriptions as subs_store


# A subscription's shard: a stable hash of its id (PostgreSQL's hashtext) modulo the count.
def _in_shard(count: str, shard: str) -> str:
    return f"(hashtext(id::text) & 2147483647) % {count} = {shard}"


async def window_ends(conn: asyncpg.Connection, tenant_id: uuid.UUID, size: int) -> list[uuid.UUID]:
    """Every `size`-th subscription id of the tenant, in order: the ends of the windows
    (after, end] of the primary key that `due_subscriptions` reads, for a whole pass. One
    index-only walk at the start of the pass, while the visibility map still says that the
    pages hold nothing new (the run's own updates clear it); only the ends cross the wire."""
    return [r[0] for r in await conn.fetch(
        """select id from (select id, row_number() over (order by id) as n
                             from subscriptions where tenant_id = $1) w
            where n % $2 = 0 order by id""",
        tenant_id, size)]


_LAST_ID = uuid.UUID(int=2**128 - 1)


async def due_subscriptions(conn: asyncpg.Connection, tenant_id: uuid.UUID, as_of: datetime,
                            exclude: list[uuid.UUID], after: uuid.UUID | None, last: uuid.UUID | None, *,
                            shard: int = 0, shard_count: int = 1, test_clock_id: uuid.UUID | None = None):
    """The due subscriptions of the shard with ids in (after, last] (a window of
    `window_ends`; None: no bound), in id order, locked. SKIP LOCKED: rows another run (or another execution
    of this run, or a usage batch attributing events to their periods) holds right now are
    left for a later pass; once it commits they are no longer due, or are found by that
    pass. `test_clock_id`: only that test clock's subscriptions; None: only real-time ones
    (a run never touches a subscription of another clock)."""
    rows = await conn.fetch(
        f"""select {_RUN_COLUMNS} from subscriptions
            where tenant_id = $1 and id > $4 and id <= $5
              and status in ('trialing', 'active', 'paused') and current_period_end <= $2
              and not (id = any($3::uuid[])) and {_in_shard("$6", "$7")}
              and test_clock_id is not distinct from $8
            order by id
            for update skip locked""",
        tenant_id, as_of, exclude, after or uuid.UUID(int=0), last or _LAST_ID, shard_count, shard, test_clock_id,
    )
    return [_subscription(r) for r in rows]


_STATUSES = {s.value: s for s in SubscriptionStatus}
# The row's columns are the dataclass's fields in order (both come from the same list).
_ROW_IS_FIELDS = subs_store.FIELDS == tuple(f.name for f in fields(Subscription))


# The subscription columns a run reads: the empty metadata most subscriptions have comes as
# NULL, not as a JSON document that the connection's codec parses once per row.
_RUN_COLUMNS = ", ".join("nullif(metadata, '{}'::jsonb) as metadata" if f == "metadata" else f
                         for f in subs_store.FIELDS)


def _subscription(row: asyncpg.Record) -> Subscription:
    """`subscriptions.from_row` for a run's thousands of rows (of `_RUN_COLUMNS`): filling the
    frozen dataclass's __dict__ at once makes the same object without a setattr per field."""
    if not _ROW_IS_FIELDS:
        sub = subs_store.from_row(row)
        return sub if sub.metadata is not None else replace(sub, metadata={})
    sub = object.__new__(Subscription)
    state = sub.__dict__
    state.update(zip(subs_store.FIELDS, row.values()))
    state["status"] = _STATUSES[state["status"]]
    if state["metadata"] is None:
        state["metadata"] = {}
    return sub


async def any_due(conn: asyncpg.Connection, tenant_id: uuid.UUID, as_of: datetime, exclude: list[uuid.UUID],
                  *, shard: int = 0, shard_count: int = 1, test_clock_id: uuid.UUID | None = None) -> bool:
    """Whether a due subscription of the shard remains, locked rows included (a plain read
    does not wait for locks: a row another execution is billing still looks due until it
    commits)."""
    return await conn.fetchval(
        f"""select exists(select 1 from subscriptions
            where tenant_id = $1 and status in ('trialing', 'active', 'paused') and current_period_end <= $2
              and not (id = any($3::uuid[])) and {_in_shard("$4", "$5")}
              and test_clock_id is not distinct from $6)""",
        tenant_id, as_of, exclude, shard_count, shard, test_clock_id,
    )


async def canceled_with_late_usage(conn: asyncpg.Connection, tenant_id: uuid.UUID, *, shard: int = 0,
                                   shard_count: int = 1, test_clock_id: uuid.UUID | None = None) -> list[Subscription]:
    """The canceled subscriptions of the shard that have late usage not billed yet, locked
    (FOR UPDATE SKIP LOCKED, in id order): a canceled subscription never bills a period
    again, so a run's late-usage pass bills it on a request of its own. Driven by
    late_usage_pending (migration 014); `= any(array(...))` finds the ids first, then probes
    the primary key. A row someone else holds is left for the next run."""
    rows = await conn.fetch(
        f"""select {_RUN_COLUMNS} from subscriptions
            where tenant_id = $1 and status = 'canceled' and {_in_shard("$2", "$3")}
              and id = any(array(select p.subscription_id from late_usage_pending p where p.tenant_id = $1))
              and test_clock_id is not distinct from $4
            order by id
            for update skip locked""",
        tenant_id, shard_count, shard, test_clock_id,
    )
    return [_subscription(r) for r in rows]


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
    columns = [f for f in subs_store.FIELDS if f not in _IMMUTABLE and (columns is None or f in columns)]
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
    # ctid: joined by id, the planner may pick a hash join over a scan of the tenant's
    # subscriptions for every chunk (docs/billing.md). The ctid read here is the version
    # this statement updates: the run holds these rows locked (FOR UPDATE) since it read them.
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

