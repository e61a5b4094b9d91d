"""Rows of usage_events and usage_totals."""
from __future__ import annotations

import json
import uuid
from datetime import datetime
from functools import lru_cache
from typing import NamedTuple

import asyncpg

from billing.store import thresholds

# The batch is COPYed (binary) into a session-local staging table, then ONE statement reads
# it, stores the events not seen before and folds exactly those into the totals (faster than
# array parameters: docs/usage.md, Throughput). The pools create the table with each
# connection (`prepare_session`), so a transaction does not send its CREATE; the statement
# does not delete what it read (a DELETE costs per row): the table empties itself at the
# end of the transaction (ON COMMIT DELETE ROWS), and `_store` empties it first when
# the session staged another tenant's rows before. Dedup (migration 032): an event is stored
# when its key md5(event_id)::uuid is inserted into usage_event_ids by this statement;
# within the batch the first row of an id in COPY order wins (DISTINCT ON, by ctid). Two
# forms of the key insert (docs/usage.md, "Fewer passes per event"): a large batch MERGEs
# the keys (one probe, then a plain insert) in a savepoint, and a key another transaction
# inserted meanwhile (a unique violation) or a deadlock rolls it back to the ON CONFLICT DO
# NOTHING form, which waits for such a transaction rather than fails; small batches
# (RecordUsage) take that form at once. The new events are sorted once, in the order the
# fold groups them (subscription, metric, period, then latest first), and both the raw
# insert and the fold read that: consecutive entries of usage_events_period land on the
# same leaf page, and the fold's own sort finds its input in order (one full sort fewer).
# Lock order: the event keys are inserted in key order and the totals upserted
# in key order, so two transactions of a tenant storing the same ids or totals wait on each
# other in one order, never in a cycle (docs/usage.md, "Lock order"). Times travel as
# integer microseconds and quantities as text, converted here. A late event's
# late_usage_pending row is written by a trigger (migration 015), not here. The ingest path's
# form (`store_batch`) also judges the thresholds of the totals it changed, in the same
# statement (store/thresholds.BATCH_CTES, docs/alerts.md).
STAGING_TABLE = """
create temp table if not exists usage_staging (
    event_id text, subscription_id uuid, metric_code text, quantity text, occurred_us bigint, start_us bigint,
    end_us bigint, late boolean, properties text
) on commit delete rows"""

# The staged rows, first row of each key in COPY order, in key order.
_INPUT = """
with input as (
    select distinct on (t.event_key) t.event_id, t.event_key, t.subscription_id, t.metric_code,
           t.quantity::numeric as quantity,
           timestamptz 'epoch' + t.occurred_us * interval '1 microsecond' as occurred_at,
           timestamptz 'epoch' + t.start_us * interval '1 microsecond' as period_start,
           timestamptz 'epoch' + t.end_us * interval '1 microsecond' as period_end,
           t.late, t.properties::jsonb as properties
      from (select md5(s.event_id)::uuid as event_key, s.ctid as n, s.* from usage_staging s) t
     order by t.event_key, t.n
)"""

# `new`: the input rows whose key this statement inserted.
_NEW_ON_CONFLICT = """, keys as (
    insert into usage_event_ids (tenant_id, event_key) select $1, event_key from input order by event_key
    on conflict do nothing
    returning event_key
), new as (
    select * from input where event_key in (select event_key from keys)
)"""

# The same in one pass (PostgreSQL 17: MERGE ... RETURNING the source's columns); a key
# inserted by another transaction after this statement's snapshot is a unique violation.
_NEW_MERGE = """, new as (
    merge into usage_event_ids k using input i on k.tenant_id = $1 and k.event_key = i.event_key
    when not matched then insert (tenant_id, event_key) values ($1, i.event_key)
    returning i.*
)"""

_STORE = """, sorted as materialized (
    select * from new order by subscription_id, metric_code, period_start, occurred_at desc, event_id desc
), inserted as (
    insert into usage_events (tenant_id, event_id, subscription_id, metric_code, quantity, occurred_at,
                              period_start, period_end, late, properties)
    select $1, event_id, subscription_id, metric_code, quantity, occurred_at, period_start, period_end, late,
           properties
      from sorted
), folded as (
    select subscription_id, metric_code, period_start, max(period_end) as period_end,
           sum(quantity) as quantity_sum, count(*) as event_count, max(quantity) as quantity_max,
           (array_agg(quantity order by occurred_at desc, event_id desc))[1] as latest_quantity,
           max(occurred_at) as latest_at,
           (array_agg(event_id order by occurred_at desc, event_id desc))[1] as latest_event_id
      from sorted
     group by subscription_id, metric_code, period_start
), totals as (
    insert into usage_totals as t (tenant_id, subscription_id, metric_code, period_start, period_end, quantity_sum,
                                   event_count, quantity_max, latest_quantity, latest_at, latest_event_id)
    select $1, subscription_id, metric_code, period_start, period_end, quantity_sum, event_count, quantity_max,
           latest_quantity, latest_at, latest_event_id
      from folded
     order by subscription_id, metric_code, period_start
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
    returning t.subscription_id, t.metric_code, t.period_start, t.period_end, t.quantity_sum, t.event_count,
              t.quantity_max, t.latest_quantity
)
select (select count(*) from new) as inserted,
       (select count(*) from new where late) as late,
       (select count(*) from totals) as totals"""
_TOTALS = "(select count(*) from totals) as totals"


_INSERT_BATCH = _INPUT + _NEW_ON_CONFLICT + _STORE
_MERGE_BATCH = _INPUT + _NEW_MERGE + _STORE

# A batch of at least this many rows takes the MERGE form (its savepoint costs two round
# trips, which only a large batch repays).
MERGE_MIN_ROWS = 1000
# The MERGE's join must probe the key index once per staged key, whatever the statistics
# say. Without them (a key table grown since its last ANALYZE: a fresh database, a burst)
# the planner takes the tenant's keys for a few hundred and hashes the batch against a
# scan of all of them, or, on a table it thinks nearly empty, loops over a scan of all of
# them per staged key: a cost that grows with the table (docs/usage.md, "The key probe's
# plan"). Every other way to join is turned off for the statement alone: sent with the
# savepoint's command (no round trip of its own), reset with its release.
_PROBE_OFF = ("enable_hashjoin", "enable_mergejoin", "enable_bitmapscan", "enable_seqscan", "enable_material")
_PROBE_PER_KEY = "; ".join(f"set local {name} = off" for name in _PROBE_OFF)
_PROBE_RESET = "; ".join(f"reset {name}" for name in _PROBE_OFF)


class _Staged:
    """Whose rows the session's staging table may still hold: the tenant of its last batch
    (the rows go at the end of that batch's transaction)."""

    __slots__ = ("tenant",)

    def __init__(self) -> None:
        self.tenant: uuid.UUID | None = None


class Batch:
    """One tenant's accepted events, as staging rows (built as each event is accepted)."""

    __slots__ = ("rows", "indexes")

    def __init__(self) -> None:
        self.rows: list[tuple] = []
        self.indexes: list[int] = []  # the caller's index of each row's event

    def add(self, index: int, event, subscription_id: uuid.UUID, start_us: int, end_us: int, late: bool) -> None:
        self.indexes.append(index)
        self.rows.append((event.event_id, subscription_id, event.metric_code, event.quantity, event.occurred_at_us,
                          start_us, end_us, late, json.dumps(event.properties) if event.properties else None))

    def keep(self, wanted) -> None:
        """Only the rows whose index `wanted(index)` is true."""
        pairs = [(i, r) for i, r in zip(self.indexes, self.rows) if wanted(i)]
        self.indexes, self.rows = [i for i, _ in pairs], [r for _, r in pairs]

    def records(self) -> list[tuple]:
        """Rows in the staging table's column order."""
        return self.rows

    def __len__(self) -> int:
        return len(self.rows)


# The same, also returning the ids inserted (RecordUsage tells each call whether it was a duplicate).
def _with_ids(sql: str) -> str:
    return sql.replace(_TOTALS, _TOTALS + ",\n       array(select event_id from new) as ids")


_INSERT_BATCH_IDS = _with_ids(_INSERT_BATCH)
_MERGE_BATCH_IDS = _with_ids(_MERGE_BATCH)
_RESULT = "\nselect (select count(*) from new) as inserted"


# The same, also judging the thresholds of the totals it changed (store/thresholds.BATCH_CTES):
# the crossings it recorded and the amount thresholds to price come back with the counts.
@lru_cache(maxsize=8)
def _with_thresholds(sql: str) -> str:
    head, tail = sql.rsplit(_RESULT, 1)
    return head + thresholds.BATCH_CTES + _RESULT + tail.replace(_TOTALS, _TOTALS + thresholds.BATCH_COLUMNS)


def _statement(merge: bool, want_ids: bool, alerts: bool) -> str:
    if merge:
        sql = _MERGE_BATCH_IDS if want_ids else _MERGE_BATCH
    else:
        sql = _INSERT_BATCH_IDS if want_ids else _INSERT_BATCH
    return _with_thresholds(sql) if alerts else sql


class Stored(NamedTuple):
    """What storing a batch did: events inserted, late among them, their ids (when asked),
    and (`store_batch`) the quantity-threshold crossings it recorded and the amount
    thresholds of its subscriptions (dicts: store/thresholds.new_crossings, AMOUNT_FIELDS)."""

    inserted: int
    late: int
    ids: list[str]
    crossings: list[dict]
    amount_thresholds: list[dict]


async def insert_batch(conn: asyncpg.Connection, tenant_id: uuid.UUID, b: Batch,
                       want_ids: bool = False) -> tuple[int, int, list[str]]:
    """(inserted, late among them, the inserted event ids if `want_ids`, else []), without
    judging thresholds (the ingest path stores with `store_batch`). `conn` is inside a
    transaction the caller owns."""
    stored = await _store(conn, tenant_id, b, want_ids, False)
    return stored.inserted, stored.late, stored.ids


# Whether the tenant has any live threshold, by one entry of a partial index (plan-level
# thresholds are in it too).
_ANY_THRESHOLD = "select exists (select 1 from usage_thresholds where tenant_id = $1 and deleted_at is null)"


async def store_batch(conn: asyncpg.Connection, tenant_id: uuid.UUID, b: Batch, want_ids: bool = False) -> Stored:
    """Store the batch and, in the same statement, record the quantity thresholds its totals
    crossed and read the amount thresholds of its subscriptions (docs/alerts.md). A tenant
    with no live threshold stores without that part, which costs its statement more than the
    probe before it: a threshold created after the probe is as one created after the batch
    (it fires with the next batch that adds usage to its period). `conn` is inside a
    transaction the caller owns."""
    alerts = bool(await conn.fetchval(_ANY_THRESHOLD, tenant_id))
    return await _store(conn, tenant_id, b, want_ids, alerts)


async def _store(conn: asyncpg.Connection, tenant_id: uuid.UUID, b: Batch, want_ids: bool, alerts: bool) -> Stored:
    staged: _Staged | None = getattr(conn, "usage_staging", None)
    if staged is None:  # a connection not from the pools: it may hold anything
        await conn.execute(STAGING_TABLE)
        await conn.execute("delete from usage_staging")
    elif staged.tenant is not None and staged.tenant != tenant_id:
        # Rows of another tenant staged earlier in this transaction (a batch of several
        # tenants) must not be read as this one's; rows of the same tenant may be: their
        # keys are inserted already, so they are duplicates.
        await conn.execute("delete from usage_staging")
    await conn.copy_records_to_table("usage_staging", records=b.rows)
    if staged is not None:
        staged.tenant = tenant_id
    row = None
    if len(b.rows) >= MERGE_MIN_ROWS and conn.get_server_version().major >= 17 and conn.is_in_transaction():
        # A savepoint by hand: the caller's transaction may not be asyncpg's own.
        await conn.execute(f"savepoint usage_merge; {_PROBE_PER_KEY}")
        try:
            row = await conn.fetchrow(_statement(True, want_ids, alerts), tenant_id)
        except (asyncpg.UniqueViolationError, asyncpg.DeadlockDetectedError):
            await conn.execute("rollback to savepoint usage_merge")  # the staged rows are still there
        await conn.execute(f"release savepoint usage_merge; {_PROBE_RESET}")
    if row is None:
        row = await conn.fetchrow(_statement(False, want_ids, alerts), tenant_id)
    if not alerts:
        return Stored(row["inserted"], row["late"], row["ids"] if want_ids else [], [], [])
    return Stored(row["inserted"], row["late"], row["ids"] if want_ids else [],
                  thresholds.new_crossings(row["crossings"], row["recorded"]),
                  [dict(zip(thresholds.AMOUNT_FIELDS, a)) for a in row["amount_thresholds"]])


async def prepare_session(conn: asyncpg.Connection) -> None:
    """Create the staging table for the session's life (outside any transaction, so no
    rollback can take it away) and mark the connection: `_store` skips its CREATE."""
    try:
        await conn.execute(STAGING_TABLE)
    except asyncpg.InsufficientPrivilegeError:  # a role without TEMP: it stores no usage
        return
    try:
        conn.usage_staging = _Staged()  # type: ignore[attr-defined]
    except AttributeError:  # a connection class without a __dict__: CREATE IF NOT EXISTS each time
        pass


async def tenant_exists(conn: asyncpg.Connection, tenant_id: uuid.UUID) -> bool:
    return bool(await conn.fetchval("select exists(select 1 from tenants where id = $1)", tenant_id))


async def subscriptions(conn: asyncpg.Connection, tenant_id: uuid.UUID, ids: list[uuid.UUID]) -> list[asyncpg.Record]:
    """The batch's subscriptions, read FOR KEY SHARE and held until the batch commits: an
    event is attributed to a period (or found late, or refused) from this read.

    KEY SHARE conflicts only with FOR UPDATE, which every writer of a subscription takes: a
    billing chunk closing a period (it skips, SKIP LOCKED, the subscriptions a batch holds,
    and bills them on its next pass) and a change, by gRPC or a command (an immediate cancel
    billing the usage up to now, a pause refusing the usage after it, a catch-up closing an
    ended period). Either the batch reads first and the writer waits for its commit, so the
    batch's events are in the totals the writer bills; or the writer commits first and the
    batch reads what it wrote, so an event of a period already billed is late (and billed
    as late usage) and one after a cancel or in a pause is refused. Usage batches do not
    block each other (KEY SHARE is shared). Why every subscription, not only those a run
    may be closing: docs/decisions.md.
    """
    # services/usage_ingest.py unpacks these rows by position: keep the column order.
    return await conn.fetch(
        """select id, plan_id, status, start_at, billing_anchor, current_period_start, current_period_end, canceled_at,
                  paused_at, pause_resumes_at, time_zone,
                  -- past pauses (migration 009): usage in them is not billed
                  array(select w.paused_at from pause_windows w where w.tenant_id = $1 and w.subscription_id = s.id
                         order by w.paused_at) as paused_from,
                  array(select w.resumed_at from pause_windows w where w.tenant_id = $1 and w.subscription_id = s.id
                         order by w.paused_at) as paused_to,
                  -- the time of its test clock (migration 021); null: real time
                  (select c.frozen_time from test_clocks c where c.tenant_id = $1 and c.id = s.test_clock_id)
                      as clock_now
             from subscriptions s where tenant_id = $1 and id = any($2::uuid[])
            order by id
              for key share of s""",
        tenant_id, ids,
    )


async def totals(conn: asyncpg.Connection, tenant_id: uuid.UUID, subscription_id: uuid.UUID,
                 period_start: datetime) -> list[asyncpg.Record]:
    return await conn.fetch(
        """select metric_code, period_start, period_end, quantity_sum, event_count, quantity_max, latest_quantity
             from usage_totals where tenant_id = $1 and subscription_id = $2 and period_start = $3""",
        tenant_id, subscription_id, period_start,
    )


async def late_usage(conn: asyncpg.Connection, tenant_id: uuid.UUID, subscription_id: uuid.UUID,
                     period_start: datetime) -> list[asyncpg.Record]:
    """Per metric, the events of a period stored late: how many, their quantity, how many are
    billed (the partial index usage_events_late, then one probe each in late_usage_billed)."""
    return await conn.fetch(
        """select e.metric_code, count(*) as event_count, sum(e.quantity) as quantity_sum,
                  count(b.event_id) as billed_count
             from usage_events e
             left join late_usage_billed b on b.tenant_id = e.tenant_id and b.event_id = e.event_id
            where e.tenant_id = $1 and e.subscription_id = $2 and e.late and e.period_start = $3
            group by e.metric_code""",
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
