"""bench/peer: the same usage messages through Kafka Connect with the Debezium JDBC sink (the
peer: what a user would otherwise deploy for Kafka -> PostgreSQL) and through this service's
usage consumers, alternating, each run to completion.

    make bench-peer                                   # 1,000,000 messages, 3 alternations
    make bench-peer ARGS="--events 200000 --runs 1"

1. Starts its own PostgreSQL and Kafka (the local stack, in a temporary directory), migrates,
   creates a tenant and subscriptions, and produces N usage messages as bench/ingest does
   (Avro, random UUIDv4 ids, 5% duplicates, 1% bad) BEFORE anything consumes.
2. Copies them, one for one, as JSON with schema to a topic of the peer's (bench/peer_messages.py
   says why that format); the raw table `peer_usage_raw` is created in the same database.
3. Alternates, `--runs` times: the peer (a standalone Connect worker started with `java`,
   jars from Maven Central via billing/devstack/connect.py, a new connector name so it reads
   from the start, the table emptied), then ours (`billing serve --roles usage` processes as
   bench/ingest starts them, usage tables and stored offsets emptied). Each is measured from
   its first committed offset to the last (the JVM's and the processes' start-up apart), and
   the peer's rows are counted once it is done: every distinct event id must be there.

The peer runs with the best configuration of issue 24: 2 tasks, `batch.size` 1,000,
`max.poll.records` 5,000, the reduction buffer, rewritten batch inserts
(`reWriteBatchedInserts=true`), upsert by event id. It commits its offsets every 250 ms
(`offset.flush.interval.ms`), so its end is seen at most that late.

CPU is counted for the bench's own processes only (bench/cpu.py): the JVM and PostgreSQL for
the peer, the consumer processes and PostgreSQL for ours (the broker serves both alike).
The last line: `peer_events_per_s=<p> ours_events_per_s=<o> ratio=<o/p> peer_cpu_us=<c>
ours_cpu_us=<u>` (medians over the runs; cpu: µs per message, process + PostgreSQL).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

import asyncpg

from bench.cpu import CpuMeter, postmaster_pid
from bench.fixtures import run_sql, stop_stack
from bench.ingest import high_watermarks, measure_consumers, setup_tenant
from bench.peer_messages import CREATE_RAW_TABLE, RAW_TABLE, CommittedOffsets, transcode
from billing.config import Settings
from billing.devstack import LocalStack, free_port
from billing.devstack.connect import LocalConnect
from billing.kafka import ensure_topics
from billing.runtime import USAGE_GROUP
from billing.store.migrations import migrate

PEER_TOPIC = "bench.usage-json.v1"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def connect_config(pg_admin_url: str, bootstrap: str, name: str, tasks: int) -> tuple[dict, dict]:
    """(worker, connector) properties: the issue's best configuration."""
    url = urlparse(pg_admin_url)
    worker = {"bootstrap.servers": bootstrap,
              "key.converter": "org.apache.kafka.connect.storage.StringConverter",
              "value.converter": "org.apache.kafka.connect.json.JsonConverter",
              "value.converter.schemas.enable": "true",
              "consumer.max.poll.records": 5000,
              "offset.flush.interval.ms": 250,
              "plugin.discovery": "service_load"}
    connector = {"name": name, "connector.class": "io.debezium.connector.jdbc.JdbcSinkConnector",
                 "tasks.max": tasks, "topics": PEER_TOPIC,
                 "connection.url": f"jdbc:postgresql://{url.hostname}:{url.port}{url.path}"
                                   "?reWriteBatchedInserts=true&stringtype=unspecified",
                 "connection.username": url.username or "", "connection.password": url.password or "",
                 "insert.mode": "upsert", "primary.key.mode": "record_value", "primary.key.fields": "event_id",
                 "delete.enabled": "false", "schema.evolution": "none", "collection.name.format": RAW_TABLE,
                 "batch.size": 1000, "use.reduction.buffer": "true",
                 "errors.tolerance": "all", "errors.log.enable": "false"}
    return worker, connector


async def _count(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval(f"select count(*) from {RAW_TABLE}"))
    finally:
        await conn.close()


def run_peer(stack: LocalStack, settings: Settings, state: Path, run: int, tasks: int, marks: dict[int, int],
             rows: int) -> dict:
    asyncio.run(run_sql(settings.admin_database_url, f"truncate {RAW_TABLE}"))
    asyncio.run(run_sql(stack.postgres.superuser_url, "checkpoint"))
    name = f"peer-{run}"
    worker, connector = connect_config(settings.admin_database_url, settings.kafka_bootstrap_servers, name, tasks)
    connect = LocalConnect(data_dir=state / f"connect-{run}", kafka_version=settings.kafka_version,
                           cache_dir=settings.kafka_cache_dir, worker=worker, connector=connector,
                           rest_port=free_port())
    started = time.perf_counter()
    connect.start()
    offsets = CommittedOffsets(settings.kafka_bootstrap_servers, f"connect-{name}", PEER_TOPIC, list(marks))
    meter = CpuMeter(jvm=connect.pid, postgres=postmaster_pid(stack.postgres.data_dir))
    total = sum(marks.values())
    first = None
    try:
        while True:
            done = sum(min(v, marks[p]) for p, v in offsets.read().items())
            if done and first is None:
                first, first_done, cpu_before = time.perf_counter(), done, meter.read()
            if done >= total:
                break
            if connect._proc is not None and connect._proc.poll() is not None:
                raise RuntimeError(f"Kafka Connect exited; see {connect.data_dir}")
            time.sleep(0.05)
        finished, cpu_after = time.perf_counter(), meter.read()
    finally:
        offsets.close()
        connect.stop()
    assert first is not None
    stored = asyncio.run(_count(settings.admin_database_url))
    if stored != rows:
        raise RuntimeError(f"the peer stored {stored} rows, not the {rows} distinct events; see {connect.data_dir}")
    return {"seconds": finished - first, "messages": total - first_done, "startup_s": first - started,
            "cpu_s": CpuMeter.used(cpu_before, cpu_after), "rows": stored}


def run_ours(stack: LocalStack, settings: Settings, env: dict, consumers: int, marks: dict[int, int]) -> dict:
    asyncio.run(run_sql(settings.admin_database_url, "truncate usage_events, usage_event_ids, usage_totals, late_usage_pending",
                     f"delete from consumer_offsets where consumer_group = '{USAGE_GROUP}'"))
    asyncio.run(run_sql(stack.postgres.superuser_url, "checkpoint"))
    return asyncio.run(measure_consumers(settings, env, consumers, marks, stack))


def figures(run: dict, process: str) -> dict:
    """Events per second and µs of CPU per message (the process, PostgreSQL, together)."""
    n = max(1, run["messages"])
    cpu = run["cpu_s"]
    proc_us, pg_us = cpu[process] / n * 1e6, cpu["postgres"] / n * 1e6
    return {"events_per_s": round(run["messages"] / run["seconds"]), "seconds": round(run["seconds"], 2),
            "startup_s": round(run["startup_s"], 1), f"{process}_us": round(proc_us, 1),
            "postgres_us": round(pg_us, 1), "cpu_us": round(proc_us + pg_us, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3, help="alternations (peer, then ours), each to completion")
    parser.add_argument("--duplicates", type=float, default=0.05)
    parser.add_argument("--bad", type=float, default=0.01)
    parser.add_argument("--subscriptions", type=int, default=1000)
    parser.add_argument("--consumers", type=int, default=2, help="our usage consumer processes")
    parser.add_argument("--tasks", type=int, default=2, help="the connector's tasks")
    parser.add_argument("--sequential-ids", action="store_true", help="event ids <run>-<n> instead of UUIDv4")
    args = parser.parse_args()

    base = Settings()
    state = Path(tempfile.mkdtemp(prefix="bench-peer-"))
    stack = LocalStack.create(state, pg_port=free_port(), kafka_port=free_port(), controller_port=free_port(),
                              kafka_version=base.kafka_version, kafka_cache_dir=base.kafka_cache_dir)
    log(f"starting the local stack in {state}")
    stack.start()
    settings = Settings(**stack.settings_kwargs())
    env = {**os.environ, **stack.env(), "BILLING_LOG_LEVEL": "WARNING"}
    finished = False
    try:
        asyncio.run(migrate(settings.admin_database_url, settings.migrations_dir))
        ensure_topics(settings)
        tenant_id, subs = asyncio.run(setup_tenant(settings, args.subscriptions))
        from producers.load import produce_load

        log(f"producing {args.events:,} events ({args.duplicates:.0%} duplicates, {args.bad:.0%} bad)")
        produce_load(settings, count=args.events, tenant_id=tenant_id, subscription_ids=subs, metric="calls",
                     duplicates=args.duplicates, bad=args.bad, cloudevents=0.0, rate=0, seed=1, progress=True,
                     ids="sequential" if args.sequential_ids else "uuid4")
        marks = high_watermarks(settings)
        log(f"copying them as JSON with schema to {PEER_TOPIC}")
        rows = transcode(settings.kafka_bootstrap_servers, settings.topics.usage, PEER_TOPIC, marks)
        asyncio.run(run_sql(settings.admin_database_url, CREATE_RAW_TABLE))
        peer_runs, our_runs = [], []
        for i in range(args.runs):
            log(f"run {i + 1}/{args.runs}: Kafka Connect + Debezium JDBC sink, {args.tasks} tasks")
            peer_runs.append(figures(run_peer(stack, settings, state, i, args.tasks, marks, rows), "jvm"))
            log(f"  {peer_runs[-1]}")
            log(f"run {i + 1}/{args.runs}: ours, {args.consumers} consumer process(es)")
            our_runs.append(figures(run_ours(stack, settings, env, args.consumers, marks), "consumers"))
            log(f"  {our_runs[-1]}")
        peer = statistics.median(r["events_per_s"] for r in peer_runs)
        ours = statistics.median(r["events_per_s"] for r in our_runs)
        peer_cpu = statistics.median(r["cpu_us"] for r in peer_runs)
        ours_cpu = statistics.median(r["cpu_us"] for r in our_runs)
        print(json.dumps({"events": sum(marks.values()), "distinct_events": rows, "runs": args.runs,
                          "load_avg": os.getloadavg(), "peer": peer_runs, "ours": our_runs}))
        print(f"peer_events_per_s={peer:.0f} ours_events_per_s={ours:.0f} ratio={ours / peer:.2f} "
              f"peer_cpu_us={peer_cpu} ours_cpu_us={ours_cpu}")
        finished = True
    finally:
        stop_stack(stack, state, finished, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
