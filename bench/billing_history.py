"""bench/billing's long history: the past of the tenant a run bills, written with SQL as the owner.

For `months` months before each due subscription's current period: its billed periods (one
per month, each by an earlier billing run of two shards), their usage totals, raw usage
events in the monthly partitions (with their dedup keys), the published invoice request in
the outbox and the audit row of each close. Plus the subscriptions that churned over those
months (`churn` of the due ones per month), canceled, with the same history up to their
cancellation. What a tenant billed monthly for years looks like to the run's statements:
bigger indexes of billed_periods and usage_totals, older partitions of usage_events, outbox
and audit_events, and canceled rows between the due ones in the subscriptions' primary key.
"""
from __future__ import annotations

import time
import uuid

import asyncpg

from billing.store import partitions

# One month of the past, for every subscription alive then: its period k months before the
# current one, [anchor - k months, anchor - (k - 1) months).
_PERIODS = """
create temp table hist_periods on commit drop as
select h.id as subscription_id, h.anchor - $1 * interval '1 month' as ps,
       h.anchor - ($1 - 1) * interval '1 month' as pe, r.id as run_id
  from hist_subs h, hist_runs r
 where r.k = $1 and h.k_from <= $1"""

_BILLED = """
insert into billed_periods (tenant_id, subscription_id, period_start, period_end, invoice_request_id, run_id,
                            plan_id, trial, billed_at)
select $1, subscription_id, ps, pe, gen_random_uuid(), run_id, $2, false, pe + interval '1 hour' from hist_periods"""

_TOTALS = """
insert into usage_totals (tenant_id, subscription_id, metric_code, period_start, period_end, quantity_sum,
                          event_count, quantity_max, latest_quantity, latest_at, latest_event_id)
select $1, subscription_id, 'calls', ps, pe, $2::bigint, $2::bigint, 1, 1, ps + interval '1 hour', 'history' from hist_periods"""

_EVENTS = """
with g as (
    select p.subscription_id, p.ps, p.pe, gen_random_uuid()::text as event_id, n
      from hist_periods p, generate_series(1, $2) as n
), keys as (
    insert into usage_event_ids (tenant_id, event_key) select $1, md5(event_id)::uuid from g
)
insert into usage_events (tenant_id, event_id, subscription_id, metric_code, quantity, occurred_at, period_start,
                          period_end, received_at)
select $1, event_id, subscription_id, 'calls', 1, ps + n * interval '1 minute', ps, pe, ps + n * interval '1 minute'
  from g"""

# About the size of an encoded invoice request (Avro, one base fee and one usage line).
_OUTBOX = """
insert into outbox (tenant_id, stream, key, payload, headers, created_at, published_at)
select $1, 'invoice_requests', convert_to(subscription_id::text, 'UTF8'),
       convert_to(repeat(md5(subscription_id::text || ps::text), 10), 'UTF8'),
       jsonb_build_object('ce_type', 'billing.invoice_request.v1'),
       pe + interval '1 minute', pe + interval '2 minutes'
  from hist_periods"""

_AUDIT = """
insert into audit_events (tenant_id, entity_type, entity_id, action, actor, request_id, before, after, at)
select $1, 'subscription', subscription_id, 'period_closed', 'billing-run:' || run_id, run_id::text,
       jsonb_build_object('status', 'active', 'current_period_start', ps, 'current_period_end', pe),
       jsonb_build_object('status', 'active', 'current_period_start', pe,
                          'current_period_end', pe + interval '1 month'),
       pe + interval '1 minute'
  from hist_periods"""


async def store_history(admin: asyncpg.Connection, tenant_id: uuid.UUID, months: int, churn: float,
                        events_per_period: int, log=print) -> dict:
    """Write the history of `tenant_id` (whose due subscriptions are in place, all on one
    plan); returns the rows written by table and the seconds it took. `admin`: the schema owner."""
    started = time.perf_counter()
    plan_id = await admin.fetchval("select plan_id from subscriptions where tenant_id = $1 limit 1", tenant_id)
    await _ensure_partitions(admin, months)
    due = await admin.fetchval("select count(*) from subscriptions where tenant_id = $1", tenant_id)
    canceled = round(due * churn * months)
    async with admin.transaction():
        await admin.execute(
            """create temp table hist_runs on commit drop as
               select k, gen_random_uuid() as id from generate_series(1, $1) as k""", months)
        await admin.execute(
            """insert into billing_runs (tenant_id, id, idempotency_key, as_of, status, subscriptions_due,
                                         subscriptions_billed, created_at, started_at, finished_at, shard_count,
                                         totals)
               select $1, id, 'history-' || k, now() - k * interval '1 month', 'completed', $2, $2,
                      now() - k * interval '1 month', now() - k * interval '1 month',
                      now() - k * interval '1 month' + interval '10 seconds', 2, '{"EUR": "1000.00"}'
                 from hist_runs""", tenant_id, due)
        await admin.execute(
            """insert into billing_run_shards (tenant_id, run_id, shard, status, subscriptions_due,
                                               subscriptions_billed, started_at, finished_at)
               select $1, id, s, 'completed', $2 / 2, $2 / 2, now() - k * interval '1 month',
                      now() - k * interval '1 month' + interval '10 seconds'
                 from hist_runs, generate_series(0, 1) as s""", tenant_id, due)
        # The due subscriptions (k_from 1: a period every month) and the churned ones, canceled
        # at the end of their period k_from months before the current ones, anchored alike.
        await admin.execute(
            """create temp table hist_subs on commit drop as
               select id, current_period_start as anchor, 1 as k_from, false as canceled
                 from subscriptions where tenant_id = $1""",
            tenant_id)
        await admin.execute(
            """insert into hist_subs
               select gen_random_uuid(), a.first + (n * 7919 % 432000) * interval '1 second', 1 + (n % $1), true
                 from generate_series(1, $2) as n, (select min(anchor) as first from hist_subs) a""",
            months, canceled)
        await admin.execute(
            """insert into subscriptions (tenant_id, id, customer_id, plan_id, status, created_at, start_at,
                                          billing_anchor, trial_days, current_period_start, current_period_end,
                                          canceled_at)
               select $1, id, 'churned-' || id, $2, 'canceled', anchor - $3 * interval '1 month',
                      anchor - $3 * interval '1 month', anchor - $3 * interval '1 month', 0,
                      anchor - k_from * interval '1 month', anchor - (k_from - 1) * interval '1 month',
                      anchor - (k_from - 1) * interval '1 month'
                 from hist_subs where canceled""", tenant_id, plan_id, months)
        # The due ones were created when their history starts (their anchor stays: it sets their periods).
        await admin.execute(
            """update subscriptions set created_at = created_at - $2 * interval '1 month',
                                        start_at = start_at - $2 * interval '1 month'
                where tenant_id = $1 and status <> 'canceled'""", tenant_id, months)
        rows = {"canceled_subscriptions": canceled, "billing_runs": months}
        for k in range(months, 0, -1):  # oldest first, as time wrote them
            await admin.execute(_PERIODS, k)
            n = int((await admin.execute(_BILLED, tenant_id, plan_id)).split()[-1])
            await admin.execute(_TOTALS, tenant_id, 1000)
            if events_per_period:
                await admin.execute(_EVENTS, tenant_id, events_per_period)
            await admin.execute(_OUTBOX, tenant_id)
            await admin.execute(_AUDIT, tenant_id)
            await admin.execute("drop table hist_periods")
            rows["billed_periods"] = rows.get("billed_periods", 0) + n
            if k % 6 == 0 or k == 1:
                log(f"history: {months - k + 1} of {months} months written ({rows['billed_periods']:,} periods)")
    rows["usage_events"] = rows["billed_periods"] * events_per_period
    await settle(admin)
    return {"rows": rows, "setup_s": round(time.perf_counter() - started, 1)}


async def with_history(admin_url: str, tenant_id: uuid.UUID, months: int, churn: float, events_per_period: int,
                       log=print, superuser_url: str | None = None) -> dict:
    admin = await asyncpg.connect(admin_url)
    try:
        stored = await store_history(admin, tenant_id, months, churn, events_per_period, log)
    finally:
        await admin.close()
    await checkpoint(superuser_url)
    return stored


async def settled(admin_url: str, superuser_url: str | None = None) -> None:
    admin = await asyncpg.connect(admin_url)
    try:
        await settle(admin)
    finally:
        await admin.close()
    await checkpoint(superuser_url)


async def checkpoint(superuser_url: str | None) -> None:
    """Write what the setup left dirty before the clock starts: the checkpointer's and the
    background writer's CPU is counted as PostgreSQL's (the server's process tree), and a
    history's gigabyte would otherwise be written during the measured run. Only on the
    bench's own server (CHECKPOINT needs a superuser or pg_checkpoint)."""
    if superuser_url is None:
        return
    conn = await asyncpg.connect(superuser_url)
    try:
        await conn.execute("checkpoint")
    finally:
        await conn.close()


async def settle(admin: asyncpg.Connection) -> None:
    """VACUUM ANALYZE what a run reads and writes. Autovacuum visits years of rows long
    before a run: the visibility map and the statistics as a long-lived database has them.
    Done before both runs of a comparison, the one without history too."""
    for table in ("subscriptions", "billed_periods", "usage_totals", "usage_events", "usage_event_ids", "outbox",
                  "audit_events", "billing_runs", "billing_run_shards"):
        await admin.execute(f"vacuum (analyze) {table}")


async def _ensure_partitions(admin: asyncpg.Connection, months: int) -> None:
    """The monthly partitions of the history's months (and two before: anchors are spread)."""
    first = await admin.fetchval(
        "select (date_trunc('month', now() at time zone 'UTC') - $1 * interval '1 month')::date", months + 3)
    for m in range(months + 4):
        month = await admin.fetchval("select ($1::date + $2 * interval '1 month')::date", first, m)
        for parent in (partitions.USAGE, partitions.OUTBOX, partitions.AUDIT):
            await partitions.ensure(admin, month, parent)
