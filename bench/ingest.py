"""bench/ingest: usage ingestion end to end, against a naive baseline measured in the same run.

    make bench-ingest                     # 1,000,000 events, 2 consumer processes
    python -m bench.ingest --events 200000 --consumers 1

1. Starts its own PostgreSQL and Kafka (the local stack, in a temporary directory) unless
   BILLING_DATABASE_URL / BILLING_WORKER_DATABASE_URL / BILLING_ADMIN_DATABASE_URL /
   BILLING_KAFKA_BOOTSTRAP_SERVERS
   point at servers of yours; migrates; creates a tenant, a plan and subscriptions.
2. Produces N events (with a share of duplicates and of bad events) BEFORE any consumer
   runs, so the consumer is measured alone: events per second from its first stored offset
   to its last (process start-up and the group join are reported apart, as startup_s), and
   peak memory (RSS) of the consumer processes.
3. Measures the naive baseline (one transaction per event: insert, then totals upsert) on a
   smaller N against the same database, and prints the ratio.

`--preload N` first stores N events of 50 other tenants over the past 24 months with SQL
(generate_series, straight into the partitions, not through Kafka), so the figures show the
cost per event with a long history behind it.

Event ids are random UUIDv4, as real producers send (`--sequential-ids`: `<run>-<n>`, which
insert at the end of the primary key and hide the cost of scattered inserts). CPU is counted
for the bench's own processes only (bench/cpu.py): the consumer processes, and the PostgreSQL
and broker it started (not counted when the servers are yours).

The last line is `ingest_events_per_s=<n> ratio_vs_naive=<r> cpu_us_per_event=<c>
consumers_us=<p> postgres_us=<q> kafka_us=<k>` (c = p + q: µs of CPU per message consumed).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import asyncpg
import psutil
from confluent_kafka import Consumer, TopicPartition

from bench.cpu import CpuMeter, kafka_pid, postmaster_pid
from bench.fixtures import metered_tenant, stop_stack
from billing.config import Settings
from billing.devstack import LocalStack, free_port
from billing.kafka import ensure_topics
from billing.runtime import USAGE_GROUP
from billing.store.db import init_connection
from billing.store.migrations import migrate


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


async def setup_tenant(settings: Settings, subscriptions: int) -> tuple[str, list[str]]:
    admin = await asyncpg.connect(settings.admin_database_url)
    await init_connection(admin)
    tenant, plan_id = await metered_tenant(admin, "bench", base_fee="0", unit_price="0.001")
    start = datetime.now(timezone.utc) - timedelta(days=1)
    subs = [uuid.uuid4() for _ in range(subscriptions)]
    await admin.executemany(
        """insert into subscriptions (tenant_id, id, customer_id, plan_id, status, created_at, start_at, billing_anchor,
                                      trial_days, current_period_start, current_period_end)
           values ($1, $2, 'bench', $3, 'active', $4, $4, $4, 0, $4, $5)""",
        [(tenant.tenant_id, s, plan_id, start, start + timedelta(days=30)) for s in subs])
    await admin.close()
    return str(tenant.tenant_id), [str(s) for s in subs]


_PRELOAD = """
with g as (
    select ($1::uuid[])[1 + i % $5] as tenant_id, gen_random_uuid()::text as event_id, (i / $5) % $6 as m,
           ('00000000-0000-4000-8000-' || lpad((i % 1000)::text, 12, '0'))::uuid as subscription_id
      from generate_series($2::bigint, $3::bigint - 1) as i
), keys as (
    insert into usage_event_ids (tenant_id, event_key) select tenant_id, md5(event_id)::uuid from g
)
insert into usage_events (tenant_id, event_id, subscription_id, metric_code, quantity, occurred_at, period_start,
                          period_end)
select tenant_id, event_id, subscription_id, 'calls', 1, $4::timestamptz + m * interval '1 month' + interval '1 hour',
       $4::timestamptz + m * interval '1 month', $4::timestamptz + (m + 1) * interval '1 month'
  from g"""


async def preload(settings: Settings, events: int, tenants: int = 50, months: int = 24) -> float:
    """`events` raw events of tenants of their own over the `months` before this one, written
    with SQL (not through Kafka: only the stored history matters), in their partitions.
    Returns the seconds it took."""
    conn = await asyncpg.connect(settings.admin_database_url)
    started = time.perf_counter()
    try:
        ids = [uuid.uuid4() for _ in range(tenants)]
        await conn.executemany("insert into tenants (id, name) values ($1, $2)",
                               [(t, f"preload-{i}") for i, t in enumerate(ids)])
        now = datetime.now(timezone.utc)
        y, mo = now.year, now.month - months
        while mo < 1:
            y, mo = y - 1, mo + 12
        first = datetime(y, mo, 1, tzinfo=timezone.utc)
        for m in range(months):
            await conn.execute("select usage_partition_ensure(($1::timestamptz + $2 * interval '1 month')::date)",
                               first, m)
        step = 500_000
        for lo in range(0, events, step):
            await conn.execute(_PRELOAD, ids, lo, min(events, lo + step), first, tenants, months)
            log(f"preloaded {min(events, lo + step):,} of {events:,} events")
        await conn.execute("analyze usage_events; analyze usage_event_ids")
    finally:
        await conn.close()
    return time.perf_counter() - started


def high_watermarks(settings: Settings) -> dict[int, int]:
    c = Consumer({"bootstrap.servers": settings.kafka_bootstrap_servers, "group.id": "bench-probe"})
    md = c.list_topics(settings.topics.usage, timeout=10).topics[settings.topics.usage]
    marks = {p: c.get_watermark_offsets(TopicPartition(settings.topics.usage, p), timeout=10)[1]
             for p in md.partitions}
    c.close()
    return marks


async def stored_offsets(conn: asyncpg.Connection, settings: Settings) -> dict[int, int]:
    rows = await conn.fetch("select partition, next_offset from consumer_offsets where consumer_group = $1 "
                            "and topic = $2", USAGE_GROUP, settings.topics.usage)
    return {r["partition"]: r["next_offset"] for r in rows}


async def measure_consumers(settings: Settings, env: dict, consumers: int, marks: dict[int, int],
                            stack: LocalStack | None) -> dict:
    conn = await asyncpg.connect(settings.admin_database_url)
    procs = [subprocess.Popen([sys.executable, "-m", "billing.cli", "serve", "--roles", "usage"],
                              env={**env, "BILLING_HTTP_PORT": str(free_port())}, stdout=subprocess.DEVNULL,
                              stderr=open(Path(tempfile.gettempdir()) / f"bench-consumer-{i}.log", "w"))
             for i in range(consumers)]
    # Only the processes of this bench: its consumers and, when it started them, its own
    # PostgreSQL and broker (None when the servers are yours: their CPU is not told apart).
    meter = CpuMeter(consumers=[p.pid for p in procs],
                     postgres=postmaster_pid(stack.postgres.data_dir) if stack else None,
                     kafka=kafka_pid(stack.kafka.data_dir) if stack else None)
    peak_rss = 0
    first_progress, first_done = None, 0
    started = time.perf_counter()
    try:
        while True:
            offsets = await stored_offsets(conn, settings)
            done = sum(min(offsets.get(p, 0), hw) for p, hw in marks.items())
            if done and first_progress is None:
                first_progress, first_done = time.perf_counter(), done
                cpu_before = meter.read()
            rss = 0
            for p in procs:
                if p.poll() is not None:
                    raise RuntimeError(f"a consumer exited with {p.returncode}; see {tempfile.gettempdir()}")
                rss += psutil.Process(p.pid).memory_info().rss
            peak_rss = max(peak_rss, rss)
            if all(offsets.get(p, 0) >= hw for p, hw in marks.items()):
                break
            await asyncio.sleep(0.05)
        finished = time.perf_counter()
        cpu_after = meter.read()
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)
        await conn.close()
    # Process start-up and the group join are not ingestion: the rate is measured from the
    # first stored offset to the last, over the messages committed in between.
    return {"seconds": finished - first_progress, "messages": sum(marks.values()) - first_done,
            "wall_s": finished - started, "peak_rss_mib": peak_rss / 2**20, "startup_s": first_progress - started,
            "cpu_s": CpuMeter.used(cpu_before, cpu_after)}


_NAIVE_KEY = """insert into usage_event_ids (tenant_id, event_key) values ($1, md5($2)::uuid) on conflict do nothing"""
_NAIVE_INSERT = """insert into usage_events (tenant_id, event_id, subscription_id, metric_code, quantity, occurred_at,
                                           period_start, period_end)
                   values ($1, $2, $3, 'calls', $4::numeric, $5, $6, $7)"""
_NAIVE_TOTALS = """insert into usage_totals as t (tenant_id, subscription_id, metric_code, period_start, period_end,
                       quantity_sum, event_count, quantity_max, latest_quantity, latest_at, latest_event_id)
                   values ($1, $2, 'calls', $3, $4, $5::numeric, 1, $5::numeric, $5::numeric, $6, $7)
                   on conflict (tenant_id, subscription_id, metric_code, period_start) do update set
                       quantity_sum = t.quantity_sum + excluded.quantity_sum, event_count = t.event_count + 1,
                       quantity_max = greatest(t.quantity_max, excluded.quantity_max)"""


async def measure_naive(settings: Settings, tenant_id: str, subs: list[str], n: int) -> float:
    """One transaction per event: the dedup key, the event, then the totals upsert."""
    conn = await asyncpg.connect(settings.worker_database_url)  # the usage consumer's role
    tenant = uuid.UUID(tenant_id)
    start = datetime.now(timezone.utc) - timedelta(hours=1)
    end = start + timedelta(days=30)
    t0 = time.perf_counter()
    for i in range(n):
        sub = uuid.UUID(subs[i % len(subs)])
        async with conn.transaction():
            await conn.execute("select set_config('billing.tenant_id', $1, true)", tenant_id)
            status = await conn.execute(_NAIVE_KEY, tenant, f"naive-{i}")
            if status.endswith(" 1"):
                await conn.execute(_NAIVE_INSERT, tenant, f"naive-{i}", sub, "1.5", start, start, end)
                await conn.execute(_NAIVE_TOTALS, tenant, sub, start, end, "1.5", start, f"naive-{i}")
    elapsed = time.perf_counter() - t0
    await conn.close()
    return n / elapsed


def cpu_per_event(cpu_s: dict, messages: int) -> dict:
    """µs of CPU per message consumed: the consumers (Python), PostgreSQL, the broker, and
    consumers + PostgreSQL (the ingest path's own cost; the broker serves any client alike)."""
    per = {k: None if v is None else round(v / max(1, messages) * 1e6, 1) for k, v in cpu_s.items()}
    if per["consumers"] is not None and per["postgres"] is not None:
        per["consumers_plus_postgres"] = round(per["consumers"] + per["postgres"], 1)
    return per


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--duplicates", type=float, default=0.05)
    parser.add_argument("--bad", type=float, default=0.01)
    parser.add_argument("--subscriptions", type=int, default=1000)
    parser.add_argument("--consumers", type=int, default=2)
    parser.add_argument("--naive-events", type=int, default=5000)
    parser.add_argument("--preload", type=int, default=0,
                        help="first store this many events of other tenants over the past 24 months with SQL, "
                             "then measure (the cost per event must not grow with the history)")
    parser.add_argument("--sequential-ids", action="store_true",
                        help="event ids <run>-<n> instead of random UUIDv4 (what real producers send)")
    args = parser.parse_args()

    stack, finished = None, False
    if os.environ.get("BILLING_DATABASE_URL"):
        settings = Settings()
    else:
        base = Settings()
        state = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
        stack = LocalStack.create(state, pg_port=free_port(), kafka_port=free_port(), controller_port=free_port(),
                                  kafka_version=base.kafka_version, kafka_cache_dir=base.kafka_cache_dir)
        log(f"starting the local stack in {state}")
        stack.start()
        settings = Settings(**{k.removeprefix("BILLING_").lower(): v for k, v in stack.env().items()})
    env = {**os.environ, "BILLING_DATABASE_URL": settings.database_url,
           "BILLING_WORKER_DATABASE_URL": settings.worker_database_url,
           "BILLING_ADMIN_DATABASE_URL": settings.admin_database_url,
           "BILLING_KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
           "BILLING_KAFKA_REPLICATION_FACTOR": str(settings.kafka_replication_factor),
           "BILLING_KAFKA_MIN_INSYNC_REPLICAS": str(settings.kafka_min_insync_replicas), "BILLING_LOG_LEVEL": "WARNING"}
    try:
        asyncio.run(migrate(settings.admin_database_url, settings.migrations_dir))
        ensure_topics(settings)
        preload_s = 0.0
        if args.preload:
            log(f"preloading {args.preload:,} events with SQL")
            preload_s = asyncio.run(preload(settings, args.preload))
        tenant_id, subs = asyncio.run(setup_tenant(settings, args.subscriptions))
        from producers.load import produce_load

        log(f"producing {args.events:,} events ({args.duplicates:.0%} duplicates, {args.bad:.0%} bad)")
        produced = produce_load(settings, count=args.events, tenant_id=tenant_id, subscription_ids=subs,
                                metric="calls", duplicates=args.duplicates, bad=args.bad, cloudevents=0.0, rate=0,
                                seed=1, progress=True, ids="sequential" if args.sequential_ids else "uuid4")
        marks = high_watermarks(settings)
        total = sum(marks.values())
        log(f"consuming {total:,} messages with {args.consumers} consumer process(es)")
        run = asyncio.run(measure_consumers(settings, env, args.consumers, marks, stack))
        rate = run["messages"] / run["seconds"]
        log(f"measuring the naive baseline on {args.naive_events:,} events")
        naive = asyncio.run(measure_naive(settings, tenant_id, subs, args.naive_events))
        figures = {"events": total, "produced": produced, "consumers": args.consumers,
                   "seconds": round(run["seconds"], 2), "wall_s": round(run["wall_s"], 2),
                   "startup_s": round(run["startup_s"], 2),
                   "events_per_s": round(rate), "peak_rss_mib": round(run["peak_rss_mib"], 1),
                   "ids": "sequential" if args.sequential_ids else "uuid4",
                   "preloaded": args.preload, "preload_s": round(preload_s, 1),
                   "cpu_s": {k: None if v is None else round(v, 1) for k, v in run["cpu_s"].items()},
                   "cpu_us_per_event": cpu_per_event(run["cpu_s"], run["messages"]),
                   "naive_events_per_s": round(naive), "ratio_vs_naive": round(rate / naive, 1)}
        print(json.dumps(figures))
        per = figures["cpu_us_per_event"]
        print(f"ingest_events_per_s={rate:.0f} ratio_vs_naive={rate / naive:.1f} "
              f"cpu_us_per_event={per.get('consumers_plus_postgres')} consumers_us={per['consumers']} "
              f"postgres_us={per['postgres']} kafka_us={per['kafka']}")
        finished = True
    finally:
        stop_stack(stack, state, finished, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
