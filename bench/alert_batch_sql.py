"""bench/alert_batch_sql: the usage batch of `make bench-entitlements` with its thresholds,
in one process, stage by stage (issue 23, the alert lag beside the load).

    .venv/bin/python -m bench.alert_batch_sql                  # 40 batches of 15,000 + 150
    .venv/bin/python -m bench.alert_batch_sql --batches 60 --bulk 20000

Starts a PostgreSQL of its own (pg_stat_statements loaded), migrates, and writes the
entitlements bench's tenant: one plan, --subscriptions bulk subscriptions without thresholds
and --alert-subscriptions with 50 recurring thresholds each on `calls` (every --step units).
Then stores batches as the usage consumer does (`services.usage_ingest.ingest` in one
transaction per batch, plus the consumer's offsets upsert): --bulk events on random bulk
subscriptions and --probe events of quantity 1 round-robin on the threshold subscriptions.
No Kafka, no decoding: the batch's own cost.

Prints, per batch: the wall time of each part (the batch's statement with the quantity
thresholds and the amount thresholds' probe in it, the amount thresholds' pricing, the
outbox, after_batch in all), this process's CPU in each and in all, PostgreSQL's, then the
statements by execution time per batch (pg_stat_statements). Last line: `batch_ms=<w>
py_cpu_ms=<c> pg_cpu_ms=<p> amount_ms=<a> after_batch_ms=<x> events_ms=<e> alerts=<n>
batches=<b>`.
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from datetime import datetime, timezone

import asyncpg

from bench.alert_lag import MAX_THRESHOLDS, write_thresholds
from bench.cpu import postmaster_pid, tree_cpu_s
from bench.entitlements import setup_tenant
from bench.fixtures import own_postgres
from billing.config import Settings
from billing.devstack.postgres import LocalPostgres
from billing.services import amount_thresholds, usage_alerts
from billing.services.usage import PlanCache, UsageEvent, UsageLimits, ingest, to_us
from billing.store import outbox
from billing.store import usage as usage_store
from billing.store.db import init_connection
from billing.store.migrations import migrate

_STATEMENTS = """
select calls, total_exec_time / $1 as ms_per_batch, left(regexp_replace(query, '\\s+', ' ', 'g'), 100) as query
  from pg_stat_statements where dbid = (select oid from pg_database where datname = current_database())
 order by total_exec_time desc limit 12"""

_OFFSETS = """insert into consumer_offsets (consumer_group, topic, partition, next_offset)
              values ('bench', 'usage', 0, $1)
              on conflict (consumer_group, topic, partition) do update set next_offset = excluded.next_offset"""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Timers:
    """Wall seconds spent in named coroutines, wrapped in place for the run."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = {}
        self.cpu: dict[str, float] = {}  # this process's CPU in them (the awaits included: nothing else runs)

    def wrap(self, owner, attr: str, name: str) -> None:
        inner = getattr(owner, attr)

        async def timed(*a, **k):
            t, c = time.perf_counter(), time.process_time()
            try:
                return await inner(*a, **k)
            finally:
                self.spent[name] = self.spent.get(name, 0.0) + time.perf_counter() - t
                self.cpu[name] = self.cpu.get(name, 0.0) + time.process_time() - c
        setattr(owner, attr, timed)


async def add_thresholds(settings: Settings, tenant: str, subs: list[str], step: int) -> None:
    rows = [(uuid.UUID(tenant), uuid.uuid4(), uuid.UUID(s), "calls", "quantity_sum", k * step, True)
            for s in subs for k in range(1, MAX_THRESHOLDS + 1)]
    await write_thresholds(settings, rows)


async def run(pg: LocalPostgres, args) -> str:
    settings = Settings(database_url=pg.app_url, worker_database_url=pg.worker_url, admin_database_url=pg.admin_url)
    await migrate(settings.admin_database_url, settings.migrations_dir)
    tenant, _key, subs, alert_subs = await setup_tenant(settings, args.subscriptions, args.alert_subscriptions)
    await add_thresholds(settings, tenant, alert_subs, args.step)
    conn = await asyncpg.connect(settings.worker_database_url)
    await init_connection(conn)
    await usage_store.prepare_session(conn)
    su = await asyncpg.connect(pg.superuser_url.rsplit("/", 1)[0] + "/billing")
    await su.execute("create extension if not exists pg_stat_statements")
    plans = PlanCache()
    n_event = 0
    probe_i = 0

    def make() -> list[UsageEvent]:
        nonlocal n_event, probe_i
        now = to_us(datetime.now(timezone.utc))
        out = []
        for _ in range(args.bulk):
            n_event += 1
            out.append(UsageEvent(f"b{n_event}", tenant, subs[(n_event * 7919) % len(subs)], "calls", "1", now, None))
        for _ in range(args.probe):
            probe_i += 1
            out.append(UsageEvent(f"p{probe_i}", tenant, alert_subs[probe_i % len(alert_subs)], "calls", "1", now,
                                  None))
        return out

    if args.without_thresholds:  # the same statement without the thresholds' CTEs: their share
        async def plain(conn, tenant_id, b, want_ids=False):
            inserted, late, ids = await usage_store.insert_batch(conn, tenant_id, b, want_ids)
            return usage_store.Stored(inserted, late, ids, [], [])
        usage_store.store_batch = plain
    timers = Timers()
    # the batch's statement (the thresholds' CTEs in it), and what runs after it
    timers.wrap(usage_store, "store_batch", "events")
    timers.wrap(amount_thresholds, "check", "amount")
    timers.wrap(outbox, "enqueue_many", "outbox")
    timers.wrap(usage_alerts, "after_batch", "after_batch")
    alerts = 0
    orig_after = usage_alerts.after_batch

    async def counting(*a, **k):
        nonlocal alerts
        n = await orig_after(*a, **k)
        alerts += n
        return n
    usage_alerts.after_batch = counting

    async def store(b: list[UsageEvent], offset: int) -> None:
        async with conn.transaction():
            await ingest(conn, b, now_us=to_us(datetime.now(timezone.utc)), limits=UsageLimits(), plans=plans,
                         periods=False)
            await conn.execute(_OFFSETS, offset)

    for w in range(args.warmup):
        await store(make(), w)
    await su.execute("analyze")
    await su.execute("select pg_stat_statements_reset()")
    timers.spent.clear()
    timers.cpu.clear()
    alerts = 0
    pid = postmaster_pid(pg.data_dir)
    wall = 0.0
    py = 0.0
    pg_cpu = tree_cpu_s(pid) or 0.0
    for k in range(args.batches):
        b = make()
        t, c = time.perf_counter(), time.process_time()
        await store(b, args.warmup + k)
        wall += time.perf_counter() - t
        py += time.process_time() - c
    pg_cpu = (tree_cpu_s(pid) or 0.0) - pg_cpu
    n = args.batches
    for r in await su.fetch(_STATEMENTS, n):
        log(f"{r['ms_per_batch']:8.2f} ms {r['calls']:6d} x {r['query']}")
    log("wall ms per batch: " + ", ".join(f"{k} {v / n * 1000:.1f}" for k, v in sorted(timers.spent.items())))
    log("this process's CPU ms per batch: " + ", ".join(f"{k} {v / n * 1000:.2f}" for k, v in sorted(timers.cpu.items())))
    await conn.close()
    await su.close()
    s = timers.spent
    return (f"batch_ms={wall / n * 1000:.1f} py_cpu_ms={py / n * 1000:.1f} pg_cpu_ms={pg_cpu / n * 1000:.1f} "
            f"amount_ms={s.get('amount', 0) / n * 1000:.1f} "
            f"after_batch_ms={s.get('after_batch', 0) / n * 1000:.1f} events_ms={s.get('events', 0) / n * 1000:.1f} "
            f"alerts={alerts} batches={n}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=20, help="batches before the measured ones (default 20)")
    parser.add_argument("--bulk", type=int, default=15_000, help="bulk events per batch (default 15000)")
    parser.add_argument("--probe", type=int, default=150, help="probe events per batch (default 150)")
    parser.add_argument("--subscriptions", type=int, default=1000)
    parser.add_argument("--alert-subscriptions", type=int, default=100)
    parser.add_argument("--step", type=int, default=4)
    parser.add_argument("--without-thresholds", action="store_true",
                        help="store without judging thresholds (no alerts): what judging them costs")
    args = parser.parse_args()
    with own_postgres("bench-alert-batch-", statements=True) as pg:
        print(asyncio.run(run(pg, args)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
