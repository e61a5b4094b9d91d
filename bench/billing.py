"""bench/billing: one billing run over N subscriptions with usage, against a baseline that
bills one subscription per transaction, measured in the same run.

    make bench-billing                        # 100,000 subscriptions
    python -m bench.billing --subscriptions 20000

Starts its own PostgreSQL (the local stack's, in a temporary directory; no Kafka needed:
the run is executed directly with `billing.services.run_execution.execute_run`, what the billing
role's executor calls) unless BILLING_DATABASE_URL / BILLING_WORKER_DATABASE_URL / BILLING_ADMIN_DATABASE_URL point at a
server of yours (then nothing is published). Subscriptions (each with its own anchor and usage) and their usage totals are written
straight into the database; what is measured is the run, from start to completed, split into `--processes`
shards (default 2) executed by as many processes, as two billing consumers would (the outbox relay's
publication is not part of it). The baseline is the same code with chunks of ONE
subscription and one worker: one subscription per transaction. Also printed: the CPU the
run took per subscription billed (`cpu_us_per_sub`: the shard processes' and PostgreSQL's;
the VM's speed varies by the hour, and this tells a slower code from a slower hour), the peak RSS
of the main process (setup included; the shard processes are smaller) and the 1-minute
load average (a shared machine makes
absolute figures noisy; the ratio is measured under the same load).

With Kafka (the default; `--no-publish`: PostgreSQL only), the bench also starts its own
broker and an outbox relay process (`billing serve --roles relay`) before the run, and
measures the run to the topic: from its start to the moment the last of its invoice
requests is on `billing.invoice-requests.v1` (the topic's high watermarks), as
`published_subs_per_s`, with the relay's CPU per subscription over that time.

`--history-months N` (to the outbox only, no Kafka) measures a second run: of a tenant with
N months of history behind its due subscriptions (bench/billing_history.py: billed periods,
usage totals and raw events, published outbox rows, audit rows, earlier runs, churned
subscriptions), after the run without history, and reports the ratio of their CPU per
subscription (`history_ratio`; target at most 1.2, issue #24).

The last line is `billing_subs_per_s=<n> ratio_vs_naive=<r> cpu_us_per_sub=<c>
published_subs_per_s=<p>` (c: the shard processes' and PostgreSQL's CPU, to the outbox), with
`history_cpu_us_per_sub=<h> history_ratio=<h/c>` after it with `--history-months`.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import queue
import random
import resource
import shutil
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import asyncpg

from bench import billing_history
from bench.billing_relay import RelayProcess
from bench.cpu import postmaster_pid, tree_cpu_s
from bench.fixtures import copy_rows, metered_tenant
from billing.config import Settings
from billing.devstack import LocalPostgres, LocalStack, free_port
from billing.domain.periods import add_interval
from billing.domain.plans import IntervalUnit
from billing.runtime import tune_gc
from billing.services import billing_runs, run_execution
from billing.services.context import Caller
from billing.store.db import Database, init_connection
from billing.store.migrations import migrate


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


async def setup(settings: Settings, subscriptions: int, seed: int = 1) -> uuid.UUID:
    """A tenant with a plan (10.00 in arrears + 0.0025 per call) and `subscriptions` due ones.

    Like real anniversary billing, every subscription has its own anchor (its start, spread
    over five days, to the second) and its own usage, so no two periods or amounts are
    alike: nothing a run computes can be shared between subscriptions."""
    rnd = random.Random(seed)
    admin = await asyncpg.connect(settings.admin_database_url)
    await init_connection(admin)
    tenant, plan_id = await metered_tenant(admin, "bench", base_fee="10.00", unit_price="0.0025")
    tid = tenant.tenant_id
    earliest = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(days=40)
    subs = []
    for _ in range(subscriptions):
        start = earliest + timedelta(seconds=rnd.randrange(5 * 86400))
        subs.append((uuid.uuid4(), start, add_interval(start, IntervalUnit.MONTH, 1)))
    await copy_rows(
        admin, "subscriptions",
        ["tenant_id", "id", "customer_id", "plan_id", "status", "created_at", "start_at", "billing_anchor",
         "trial_days", "current_period_start", "current_period_end"],
        [(tid, s, f"customer-{i}", plan_id, "active", start, start, start, 0, start, end)
                 for i, (s, start, end) in enumerate(subs)])
    await copy_rows(
        admin, "usage_totals",
        ["tenant_id", "subscription_id", "metric_code", "period_start", "period_end", "quantity_sum",
         "event_count", "quantity_max", "latest_quantity", "latest_at", "latest_event_id"],
        [(tid, s, "calls", start, end, rnd.randrange(1, 1_000_000), 10, 500, 7, start, "e")
                 for s, start, end in subs])
    await admin.execute("analyze subscriptions; analyze usage_totals")
    await admin.close()
    return tid


async def bill(settings: Settings, tenant_id: uuid.UUID, chunk_size: int, workers: int,
               processes: int = 1, pg_pid: int | None = None, relay=None) -> tuple[float, dict]:
    """One run, timed from its start to completed. With `processes` > 1 the run is split into
    that many shards, each executed by a process of its own (what as many billing consumers
    of one group do), all at once. The processes are started, and connected, before the
    clock starts: a billing consumer is running already when a run request arrives.

    Also measured with `processes` > 1: the CPU time of the run, the shard processes' own
    (`time.process_time` around `execute_run`) and PostgreSQL's (the process tree of `pg_pid`,
    the bench's own server, while the shards' connections are still open; None without it),
    per subscription billed. The machine is a shared VM whose
    speed varies by the hour: CPU per subscription tells a slower code from a slower hour."""
    db = await Database.connect(settings.worker_database_url, min_size=1, max_size=workers + 2)
    try:
        caller = Caller(tenant_id, "bench")
        key = str(uuid.uuid4())
        run = await billing_runs.run_billing(db, caller, key, key, None, shards=processes)
        if processes == 1:
            tune_gc()  # as `billing serve` does for the billing consumer
            started = time.perf_counter()
            done = await run_execution.execute_run(db, tenant_id, run.id, chunk_size=chunk_size, workers=workers)
        else:
            ctx = multiprocessing.get_context("spawn")
            ready, go, measured, cpu = ctx.Barrier(processes + 1), ctx.Event(), ctx.Event(), ctx.Queue()
            procs = [ctx.Process(target=_shard, args=(settings.worker_database_url, tenant_id, run.id, shard, chunk_size,
                                                      workers, ready, go, measured, cpu))
                     for shard in range(processes)]
            for p in procs:
                p.start()
            ready.wait()
            published_s = None
            pg_before = tree_cpu_s(pg_pid)
            relay_before = tree_cpu_s(relay.pid) if relay is not None else None
            started = time.perf_counter()
            go.set()
            python_cpu = await asyncio.get_running_loop().run_in_executor(None, _cpu_of_shards, cpu, procs)
            pg_after = tree_cpu_s(pg_pid)
            measured.set()
            for p in procs:
                p.join()
            seconds = time.perf_counter() - started
            done = await billing_runs.get_billing_run(db, caller, str(run.id))
            if relay is not None:
                published_s = await relay.wait_published(db, tenant_id, started)
                relay_cpu = (tree_cpu_s(relay.pid) or 0) - (relay_before or 0)
                pg_published = tree_cpu_s(pg_pid)
            billed = max(1, done.subscriptions_billed)
            cpu_per_sub = {"python": round(python_cpu / billed * 1e6),
                           "postgres": None if pg_before is None or pg_after is None else round((pg_after - pg_before) / billed * 1e6)}
            if relay is not None:
                cpu_per_sub["relay"] = round(relay_cpu / billed * 1e6)
                # PostgreSQL from the run's start to the last request on the topic: the run's
                # statements and the relay's (its fetches and marking), both.
                cpu_per_sub["postgres_to_topic"] = (None if pg_before is None or pg_published is None
                                                    else round((pg_published - pg_before) / billed * 1e6))
        if processes == 1:
            seconds = time.perf_counter() - started
            cpu_per_sub = None
            published_s = None
    finally:
        await db.close()
    return seconds, {"status": done.status, "billed": done.subscriptions_billed, "failed": done.subscriptions_failed,
                     "totals": dict(done.totals), "cpu_us_per_sub": cpu_per_sub, "published_s": published_s}


def _cpu_of_shards(cpu, procs) -> float:
    """The sum of the CPU seconds each shard process reports when its execution returned."""
    total, reported = 0.0, 0
    while reported < len(procs):
        try:
            total += cpu.get(timeout=1)
            reported += 1
        except queue.Empty:
            if not all(p.is_alive() for p in procs):
                raise RuntimeError("a shard process ended without reporting (see its traceback above)") from None
    return total


def _shard(url: str, tenant_id: uuid.UUID, run_id: uuid.UUID, shard: int, chunk_size: int, workers: int,
           ready, go, measured, cpu) -> None:
    tune_gc()  # as `billing serve` does for the billing consumer

    async def run():
        db = await Database.connect(url, min_size=workers + 1, max_size=workers + 2)
        try:
            ready.wait()
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, go.wait)
            before = time.process_time()
            await run_execution.execute_run(db, tenant_id, run_id, shard=shard, chunk_size=chunk_size, workers=workers)
            cpu.put(time.process_time() - before)
            await loop.run_in_executor(None, measured.wait)  # connections open until PostgreSQL's CPU is read
        finally:
            await db.close()
    asyncio.run(run())


def _cpu_us(run: dict) -> int:
    cpu = run["cpu_us_per_sub"]
    return cpu["python"] + (cpu["postgres"] or 0)


def measure_history(settings: Settings, args, pg) -> dict:
    """The same run over a tenant with `--history-months` of history (written first, not
    measured); its CPU per subscription against the run without history just measured."""
    log(f"setting up {args.subscriptions:,} due subscriptions with {args.history_months} months of history")
    tenant = asyncio.run(setup(settings, args.subscriptions, seed=2))
    stored = asyncio.run(billing_history.with_history(settings.admin_database_url, tenant, args.history_months,
                                                      args.history_churn, args.history_events, log,
                                                      pg.superuser_url if pg else None))
    log(f"history stored in {stored['setup_s']} s: {stored['rows']}; running")
    seconds, run = asyncio.run(bill(settings, tenant, args.chunk, args.workers, args.processes,
                                    postmaster_pid(pg.data_dir) if pg is not None else None))
    return {"months": args.history_months, "churn": args.history_churn, **stored, "seconds": round(seconds, 2),
            "subs_per_s": round(args.subscriptions / seconds), "run": run}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subscriptions", type=int, default=100_000)
    parser.add_argument("--naive-subscriptions", type=int, default=1_000)
    parser.add_argument("--chunk", type=int, default=run_execution.CHUNK_SIZE)
    parser.add_argument("--workers", type=int, default=run_execution.WORKERS)
    parser.add_argument("--no-publish", dest="publish", action="store_false",
                        help="no Kafka and no relay: the run is measured to the outbox only")
    parser.add_argument("--processes", type=int, default=2,
                        help="shards of the run, each executed by a process of its own (like billing consumers)")
    parser.add_argument("--history-months", type=int, default=0,
                        help="also bill a tenant with this many months of history, and report the CPU ratio")
    parser.add_argument("--history-churn", type=float, default=0.02,
                        help="subscriptions canceled per month of history, as a share of the due ones")
    parser.add_argument("--history-events", type=int, default=2, help="raw usage events per past period")
    args = parser.parse_args()
    if args.history_months:
        if args.processes < 2:
            parser.error("--history-months compares CPU per subscription: it needs --processes 2 or more")
        args.publish = False  # both runs to the outbox: what the history could change

    pg, stack, relay, finished = None, None, None, False
    if os.environ.get("BILLING_DATABASE_URL"):
        settings = Settings()
    elif args.publish:
        base = Settings()
        state = Path(tempfile.mkdtemp(prefix="bench-billing-"))
        stack = LocalStack.create(state, pg_port=free_port(), kafka_port=free_port(), controller_port=free_port(),
                                  kafka_version=base.kafka_version, kafka_cache_dir=base.kafka_cache_dir)
        log(f"starting PostgreSQL and Kafka in {state}")
        stack.start()
        pg = stack.postgres
        settings = Settings(**stack.settings_kwargs())
    else:
        pg = LocalPostgres(data_dir=Path(tempfile.mkdtemp(prefix="bench-billing-")) / "postgres", port=free_port())
        log(f"starting PostgreSQL in {pg.data_dir}")
        pg.start()
        settings = Settings(database_url=pg.app_url, worker_database_url=pg.worker_url, admin_database_url=pg.admin_url)
    try:
        asyncio.run(migrate(settings.admin_database_url, settings.migrations_dir))
        log(f"setting up {args.subscriptions:,} due subscriptions with usage")
        tenant = asyncio.run(setup(settings, args.subscriptions))
        if args.history_months:
            asyncio.run(billing_history.settled(settings.admin_database_url, pg.superuser_url if pg else None))
        if args.publish and args.processes > 1:
            relay = RelayProcess.start(settings)
        log(f"running: one billing run in {args.processes} shard process(es)")
        seconds, run = asyncio.run(bill(settings, tenant, args.chunk, args.workers, args.processes,
                                        postmaster_pid(pg.data_dir) if pg is not None else None, relay))
        rate = args.subscriptions / seconds
        history = measure_history(settings, args, pg) if args.history_months else None
        if history:
            empty_cpu, history_cpu = _cpu_us(run), _cpu_us(history["run"])
            history.update(cpu_us=history_cpu, ratio=round(history_cpu / empty_cpu, 2))
            log(f"CPU per subscription, µs (Python + PostgreSQL): without history {run['cpu_us_per_sub']}, "
                f"with {history['run']['cpu_us_per_sub']}; load average {os.getloadavg()[0]:.1f}")
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        log(f"baseline: {args.naive_subscriptions:,} subscriptions, one per transaction")
        naive_tenant = asyncio.run(setup(settings, args.naive_subscriptions))
        naive_seconds, naive_run = asyncio.run(bill(settings, naive_tenant, 1, 1))
        naive = args.naive_subscriptions / naive_seconds
        print(json.dumps({"subscriptions": args.subscriptions, "seconds": round(seconds, 2), "run": run,
                          "subs_per_s": round(rate), "chunk": args.chunk, "workers": args.workers,
                          "processes": args.processes,
                          "peak_rss_mb": round(peak_mb), "load_avg_1m": os.getloadavg()[0],
                          "naive_subscriptions": args.naive_subscriptions,
                          "naive_subs_per_s": round(naive), "naive_run": naive_run,
                          **({"history": history} if history else {})}))
        line = f"billing_subs_per_s={rate:.0f} ratio_vs_naive={rate / naive:.1f}"
        cpu = run["cpu_us_per_sub"] or {}
        if cpu:
            line += f" cpu_us_per_sub={cpu['python'] + (cpu['postgres'] or 0)}"
        if run["published_s"]:
            line += f" published_subs_per_s={args.subscriptions / run['published_s']:.0f}"
            log(f"to the topic, µs of CPU per subscription: shards {cpu['python']}, relay {cpu['relay']}, "
                f"PostgreSQL {cpu['postgres_to_topic']}; load average {os.getloadavg()[0]:.1f}")
        if history:
            line += f" history_cpu_us_per_sub={history['cpu_us']} history_ratio={history['ratio']}"
        print(line)
        finished = True
    finally:
        if relay is not None:
            relay.stop()
        if stack is not None:
            stack.kafka.stop()
        if pg is not None:
            pg.stop(quiet=True)
            # The database is ~0.7 GB per 100,000 subscriptions: removed, unless the run failed.
            if finished:
                shutil.rmtree(pg.data_dir.parent, ignore_errors=True)
            else:
                log(f"data kept in {pg.data_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
