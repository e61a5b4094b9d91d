"""bench/ingest_sql: PostgreSQL's share of usage ingestion alone, per statement.

    .venv/bin/python -m bench.ingest_sql                   # 300,000 events, batches of 20,000
    .venv/bin/python -m bench.ingest_sql --events 500000 --batch 5000

Starts a PostgreSQL of its own (in a temporary directory) with pg_stat_statements loaded,
migrates, creates a tenant and 1,000 subscriptions, then stores random-UUIDv4 events (5%
duplicates) through the consumer's own code (`services.usage_ingest.ingest`: prepare, then
store, one transaction per batch) straight from this process: no Kafka, no decoding. Prints
the CPU of the server's processes and the WAL written, per event, then the statements by
execution time per event (pg_stat_statements: time, WAL bytes, full-page images).

Last line: `pg_cpu_us_per_event=<c> wal_bytes_per_event=<w> events=<n> batch=<b>`."""
from __future__ import annotations

import argparse
import asyncio
import random
import sys
import uuid
from datetime import datetime, timedelta, timezone

import asyncpg

from bench.cpu import postmaster_pid, tree_cpu_s
from bench.ingest import setup_tenant
from bench.fixtures import own_postgres
from billing.config import Settings
from billing.devstack.postgres import LocalPostgres
from billing.services.usage import PlanCache, UsageEvent, UsageLimits, ingest, to_us
from billing.store.db import init_connection
from billing.store.migrations import migrate

_STATEMENTS = """
select calls, total_exec_time * 1000 / $1 as us_per_event, wal_bytes / $1 as wal_per_event, wal_fpi,
       left(regexp_replace(query, '\\s+', ' ', 'g'), 90) as query
  from pg_stat_statements where dbid = (select oid from pg_database where datname = current_database())
 order by total_exec_time desc limit 10"""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


async def run(pg: LocalPostgres, events: int, batch: int, duplicates: float) -> str:
    settings = Settings(database_url=pg.app_url, worker_database_url=pg.worker_url, admin_database_url=pg.admin_url)
    await migrate(settings.admin_database_url, settings.migrations_dir)
    tenant, subs = await setup_tenant(settings, 1000)
    conn = await asyncpg.connect(settings.worker_database_url)
    await init_connection(conn)
    su = await asyncpg.connect(pg.superuser_url.rsplit("/", 1)[0] + "/billing")
    await su.execute("create extension if not exists pg_stat_statements")
    now = datetime.now(timezone.utc)
    ids: list[str] = []

    def make(n: int) -> list[UsageEvent]:
        out = []
        for _ in range(n):
            if ids and random.random() < duplicates:
                event_id = random.choice(ids)
            else:
                event_id = str(uuid.uuid4())
                ids.append(event_id)
            at = to_us(now - timedelta(seconds=random.random() * 3600))
            out.append(UsageEvent(event_id, tenant, random.choice(subs), "calls", "1", at, None))
        return out

    async def store(b: list[UsageEvent]) -> None:
        async with conn.transaction():
            await ingest(conn, b, now_us=to_us(datetime.now(timezone.utc)), limits=UsageLimits(), plans=PlanCache())

    await store(make(batch))  # warm-up: caches, the session's staging table
    batches = [make(batch) for _ in range(max(1, events // batch))]
    await su.execute("checkpoint")
    await su.execute("select pg_stat_statements_reset()")
    pid = postmaster_pid(pg.data_dir)
    lsn = await su.fetchval("select pg_current_wal_insert_lsn()::text")
    cpu = tree_cpu_s(pid) or 0.0
    for b in batches:
        await store(b)
    cpu = (tree_cpu_s(pid) or 0.0) - cpu
    wal = float(await su.fetchval("select pg_wal_lsn_diff(pg_current_wal_insert_lsn(), $1::text::pg_lsn)", lsn))
    n = len(batches) * batch
    for r in await su.fetch(_STATEMENTS, n):
        log(f"{r['us_per_event']:7.2f} us {float(r['wal_per_event']):6.0f} B WAL {r['wal_fpi']:6d} fpi "
            f"{r['calls']:5d} x {r['query']}")
    await conn.close()
    await su.close()
    return f"pg_cpu_us_per_event={cpu / n * 1e6:.2f} wal_bytes_per_event={wal / n:.0f} events={n} batch={batch}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--batch", type=int, default=20_000)
    parser.add_argument("--duplicates", type=float, default=0.05)
    args = parser.parse_args()
    with own_postgres("bench-ingest-sql-", statements=True) as pg:
        print(asyncio.run(run(pg, args.events, args.batch, args.duplicates)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
