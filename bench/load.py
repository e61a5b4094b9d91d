"""bench/load: sustained usage ingestion together with gRPC reads and a billing run.

    make bench-load                          # 60 s under load (--seconds 15 while developing)

1. Starts its own PostgreSQL and Kafka (the local stack, in a temporary directory) unless
   BILLING_{,WORKER_,ADMIN_}DATABASE_URL and BILLING_KAFKA_BOOTSTRAP_SERVERS point at
   servers of yours; migrates; creates a tenant with --subscriptions active
   subscriptions (the ones usage is sent for and read back) and --due subscriptions whose
   period has ended (what the billing run bills).
2. Runs the service as an operator would on one machine: one process per kind of work,
   `billing serve --roles api`, `--roles usage` (x --consumers) and `--roles billing,relay`.
3. Baseline: gRPC reads only (GetSubscription, GetUsage, ListSubscriptions, spread evenly
   at --rps calls per second over --clients concurrent clients, from a process of their
   own) for --baseline-seconds, nothing else running.
4. Under load, for --seconds: usage events produced at a steady --rate per second
   (`billing produce-usage`, --producers processes of their own sharing the rate, random
   UUIDv4 event ids unless --sequential-ids, 2% duplicates) and consumed by the usage
   role, the same gRPC reads, and one billing run over the due subscriptions (RunBilling
   over gRPC after the first fifth of the phase, not counted among the reads).

Prints the ingestion rate (messages whose offsets the usage consumer committed per second
over the phase, and the lag left at its end), gRPC latency p50/p90/p99/max per method and
overall, errors by status, baseline and under load, and the billing run's duration. Last
line: `load_events_per_s grpc_p99_ms errors p99_while_billing_run_ms api_cpu_us_per_read
baseline_api_cpu_us_per_read baseline_postgres_cpu_us_per_read` (errors: failed reads under load,
timeouts included; CPU per read of the bench's own processes, bench/cpu.py).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing
import os
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import asyncpg

from bench.cpu import CpuMeter, per_read, postmaster_pid
from bench.fixtures import copy_rows, metered_tenant, stop_processes, stop_stack
from billing.config import Settings
from billing.devstack import LocalStack, free_port
from billing.kafka import ensure_topics
from billing.runtime import USAGE_GROUP
from billing.store.db import init_connection
from billing.store.migrations import migrate

METHODS = ("GetSubscription", "GetUsage", "ListSubscriptions")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)



async def setup_tenant(settings: Settings, active: int, due: int) -> tuple[str, str, list[str]]:
    admin = await asyncpg.connect(settings.admin_database_url)
    await init_connection(admin)
    tenant, plan_id = await metered_tenant(admin, "load", base_fee="10.00", unit_price="0.001")
    tid = tenant.tenant_id
    now = datetime.now(timezone.utc)
    columns = ["tenant_id", "id", "customer_id", "plan_id", "status", "created_at", "start_at", "billing_anchor",
               "trial_days", "current_period_start", "current_period_end"]
    start = now - timedelta(days=1)
    subs = [uuid.uuid4() for _ in range(active)]
    await copy_rows(admin, "subscriptions", columns, [
        (tid, s, f"customer-{i % 97}", plan_id, "active", start, start, start, 0, start, start + timedelta(days=30))
        for i, s in enumerate(subs)])
    old = now - timedelta(days=40)
    await copy_rows(admin, "subscriptions", columns, [
        (tid, uuid.uuid4(), "due", plan_id, "active", old, old, old, 0, old, old + timedelta(days=30))
        for _ in range(due)])
    await admin.execute("analyze subscriptions")
    await admin.close()
    return str(tid), tenant.api_key, [str(s) for s in subs]


def start_role(roles: str, env: dict, log_dir: Path, nice: int = 0, **extra) -> tuple[subprocess.Popen, int]:
    http_port = free_port()
    proc = subprocess.Popen(["nice", "-n", str(nice), sys.executable, "-m", "billing.cli", "serve", "--roles", roles],
                            env={**env, "BILLING_HTTP_PORT": str(http_port), **extra},
                            stdout=subprocess.DEVNULL, stderr=open(log_dir / f"{roles.replace(',', '+')}.log", "a"))
    return proc, http_port


def wait_ready(procs: list[tuple[subprocess.Popen, int]], timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    for proc, port in procs:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"a service process exited with {proc.returncode} at start-up")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
                    if json.loads(resp.read()).get("ready"):
                        break
            except Exception:  # noqa: BLE001 - not up yet
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"a service process was not ready within {timeout_s:.0f}s")
            time.sleep(0.3)



def _client_process(address: str, api_key: str, subs: list[str], seconds: float, clients: int, rps: float, out) -> None:
    """Runs in a process of its own: `clients` concurrent clients, together `rps` calls/s."""
    import grpc

    from billing.v1 import billing_pb2 as pb
    from billing.v1 import billing_pb2_grpc

    md = (("authorization", f"Bearer {api_key}"),)
    latencies: dict[str, list[float]] = {m: [] for m in METHODS}
    timeline: list[tuple[float, float]] = []  # (wall-clock start, ms) of every successful call
    errors: Counter = Counter()

    async def client(n: int) -> None:
        rng = random.Random(n)
        interval = clients / rps
        async with grpc.aio.insecure_channel(address) as channel:
            stub = billing_pb2_grpc.BillingServiceStub(channel)
            await channel.channel_ready()
            calls = {
                "GetSubscription": lambda: stub.GetSubscription(
                    pb.GetSubscriptionRequest(id=rng.choice(subs)), metadata=md, timeout=5),
                "GetUsage": lambda: stub.GetUsage(
                    pb.GetUsageRequest(subscription_id=rng.choice(subs)), metadata=md, timeout=5),
                "ListSubscriptions": lambda: stub.ListSubscriptions(
                    pb.ListSubscriptionsRequest(page_size=50), metadata=md, timeout=5),
            }
            started = time.perf_counter() + rng.uniform(0, interval)  # clients out of phase
            i = 0
            while True:
                at = started + i * interval
                if at - started > seconds:
                    return
                delay = at - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                method = METHODS[(i + n) % len(METHODS)]
                t, wall = time.perf_counter(), time.time()
                try:
                    await calls[method]()
                    ms = (time.perf_counter() - t) * 1000
                    latencies[method].append(ms)
                    timeline.append((wall, ms))
                except grpc.aio.AioRpcError as exc:
                    errors[f"{method}:{exc.code().name}"] += 1
                i += 1

    async def main() -> None:
        await asyncio.gather(*(client(n) for n in range(clients)))

    asyncio.run(main())
    out.put({"latencies": latencies, "errors": dict(errors), "timeline": timeline})


def run_clients(address: str, api_key: str, subs: list[str], seconds: float, clients: int, rps: float):
    """Start the client process; returns a function that waits for and returns its result."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_client_process, args=(address, api_key, subs, seconds, clients, rps, queue),
                       daemon=True)
    proc.start()

    def result() -> dict:
        got = queue.get(timeout=seconds + 120)
        proc.join(timeout=30)
        return got

    return result


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))  # nearest rank
    return ordered[k]


def summarize(result: dict) -> dict:
    everything = [v for values in result["latencies"].values() for v in values]
    out = {"calls": len(everything) + sum(result["errors"].values()), "errors": sum(result["errors"].values()),
           "error_codes": result["errors"]}
    for name, values in [("all", everything)] + list(result["latencies"].items()):
        out[name] = {"n": len(values), "p50_ms": round(percentile(values, 50), 2),
                     "p90_ms": round(percentile(values, 90), 2), "p99_ms": round(percentile(values, 99), 2),
                     "max_ms": round(max(values), 2) if values else None}
    return out



async def stored_offsets(settings: Settings) -> int:
    conn = await asyncpg.connect(settings.admin_database_url)
    try:
        return int(await conn.fetchval("select coalesce(sum(next_offset), 0) from consumer_offsets "
                                       "where consumer_group = $1 and topic = $2", USAGE_GROUP, settings.topics.usage))
    finally:
        await conn.close()


def high_watermark(settings: Settings) -> int:
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": settings.kafka_bootstrap_servers, "group.id": "bench-load-probe"})
    try:
        topic = settings.topics.usage
        md = c.list_topics(topic, timeout=10).topics[topic]
        return sum(c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in md.partitions)
    finally:
        c.close()


async def billing_run(address: str, api_key: str, settings: Settings, tenant_id: str) -> dict:
    import grpc

    from billing.v1 import billing_pb2 as pb
    from billing.v1 import billing_pb2_grpc

    md = (("authorization", f"Bearer {api_key}"),)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = billing_pb2_grpc.BillingServiceStub(channel)
        key = f"load-{uuid.uuid4()}"
        t = time.perf_counter()
        run = (await stub.RunBilling(pb.RunBillingRequest(request_id=key), metadata=md, timeout=10)).run
        while run.status not in (pb.BILLING_RUN_STATUS_COMPLETED, pb.BILLING_RUN_STATUS_FAILED):
            if time.perf_counter() - t > 600:
                break
            await asyncio.sleep(0.5)
            run = (await stub.GetBillingRun(pb.GetBillingRunRequest(id=run.id), metadata=md, timeout=10)).run
        return {"status": pb.BillingRunStatus.Name(run.status), "billed": run.subscriptions_billed,
                "seconds": round(time.perf_counter() - t, 2)}


async def load_phase(args, settings: Settings, env: dict, tenant_id: str, api_key: str, subs: list[str],
                     address: str, log_dir: Path) -> dict:
    subs_file = log_dir / "subscriptions.txt"
    subs_file.write_text("\n".join(subs))
    # The load comes from --producers processes, each a share of the rate (one Python
    # producer process tops out below the higher rates on a busy machine: the bench must
    # not be what limits ingestion).
    producers = args.producers or max(1, math.ceil(args.rate / 20_000))
    count = int(args.rate * (args.seconds + 5) / producers)
    before_offsets = await stored_offsets(settings)
    procs = [subprocess.Popen(
        ["nice", "-n", str(args.nice), sys.executable, "-m", "billing.cli", "produce-usage", "--count", str(count),
         "--tenant-id", tenant_id, "--subscriptions-file", str(subs_file), "--metric", "calls",
         "--rate", str(args.rate / producers), "--duplicates", "0.02", "--seed", str(1 + k), "--no-progress",
         "--ids", "sequential" if args.sequential_ids else "uuid4"],
        env=env, stdout=subprocess.PIPE, stderr=open(log_dir / "producer.log", "a"), text=True)
        for k in range(producers)]
    await asyncio.sleep(2)  # let ingestion reach its steady state before measuring
    t0 = time.perf_counter()
    offsets0 = await stored_offsets(settings)
    clients = run_clients(address, api_key, subs, args.seconds, args.clients, args.rps)
    await asyncio.sleep(args.seconds / 5)
    run_started = time.time()
    run = await billing_run(address, api_key, settings, tenant_id)
    run_ended = time.time()
    remaining = args.seconds - (time.perf_counter() - t0)
    if remaining > 0:
        await asyncio.sleep(remaining)
    offsets1 = await stored_offsets(settings)
    t1 = time.perf_counter()
    reads = await asyncio.to_thread(clients)
    lag = await asyncio.to_thread(high_watermark, settings) - offsets1
    for producer in procs:
        producer.terminate()
    for producer in procs:
        producer.wait(timeout=30)
    during = [ms for at, ms in reads["timeline"] if run_started <= at <= run_ended]
    outside = [ms for at, ms in reads["timeline"] if not run_started <= at <= run_ended]
    split = {"while_billing_run": {"n": len(during), "p50_ms": round(percentile(during, 50), 2),
                                   "p99_ms": round(percentile(during, 99), 2)},
             "ingestion_only": {"n": len(outside), "p50_ms": round(percentile(outside, 50), 2),
                                "p99_ms": round(percentile(outside, 99), 2)}}
    return {"events_per_s": round((offsets1 - offsets0) / (t1 - t0)), "lag_at_end": lag, "producers": producers,
            "consumed_before_window": offsets0 - before_offsets, "billing_run": run, "reads": summarize(reads),
            "reads_split": split}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60, help="the phase under load (default 60)")
    parser.add_argument("--baseline-seconds", type=float, default=None, help="reads alone (default seconds/4, >= 10)")
    parser.add_argument("--rate", type=float, default=10_000, help="usage events produced per second (default 10000)")
    parser.add_argument("--rps", type=float, default=100, help="gRPC reads per second, all clients (default 100)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent gRPC clients (default 4)")
    parser.add_argument("--subscriptions", type=int, default=1000, help="active subscriptions with usage")
    parser.add_argument("--due", type=int, default=5000, help="subscriptions the billing run bills")
    parser.add_argument("--consumers", type=int, default=0,
                        help="usage consumer processes (default: one per 20,000 events/s of --rate)")
    parser.add_argument("--producers", type=int, default=0,
                        help="load generator processes, each a share of --rate (default: one per 20,000 events/s)")
    parser.add_argument("--sequential-ids", action="store_true",
                        help="event ids <run>-<n> instead of random UUIDv4 (what real producers send)")
    parser.add_argument("--nice", type=int, default=10,
                        help="CPU niceness of the background roles (usage, billing, relay) and of the load "
                             "generator; the api role keeps 0 (default 10; 0 = all equal)")
    args = parser.parse_args()
    baseline_s = args.baseline_seconds or max(10.0, args.seconds / 4)
    # One consumer per 20,000 events/s: each decodes, checks and commits its batches in turn.
    args.consumers = args.consumers or max(1, math.ceil(args.rate / 20_000))

    stack = None
    state = Path(tempfile.mkdtemp(prefix="bench-load-"))
    if os.environ.get("BILLING_DATABASE_URL"):
        settings = Settings()
    else:
        base = Settings()
        stack = LocalStack.create(state, pg_port=free_port(), kafka_port=free_port(), controller_port=free_port(),
                                  kafka_version=base.kafka_version, kafka_cache_dir=base.kafka_cache_dir)
        log(f"starting the local stack in {state}")
        stack.start()
        settings = Settings(**{k.removeprefix("BILLING_").lower(): v for k, v in stack.env().items()})
    grpc_port = free_port()
    address = f"127.0.0.1:{grpc_port}"
    env = {**os.environ, "BILLING_DATABASE_URL": settings.database_url,
           "BILLING_WORKER_DATABASE_URL": settings.worker_database_url,
           "BILLING_ADMIN_DATABASE_URL": settings.admin_database_url,
           "BILLING_KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
           "BILLING_KAFKA_REPLICATION_FACTOR": str(settings.kafka_replication_factor),
           "BILLING_KAFKA_MIN_INSYNC_REPLICAS": str(settings.kafka_min_insync_replicas), "BILLING_LOG_LEVEL": "WARNING",
           "BILLING_SCHEDULER_INTERVAL_S": "0"}
    procs: list[tuple[subprocess.Popen, int]] = []
    finished = False
    try:
        asyncio.run(migrate(settings.admin_database_url, settings.migrations_dir))
        ensure_topics(settings)
        tenant_id, api_key, subs = asyncio.run(setup_tenant(settings, args.subscriptions, args.due))
        procs.append(start_role("api", env, state, BILLING_GRPC_PORT=str(grpc_port)))
        for _ in range(args.consumers):
            procs.append(start_role("usage", env, state, nice=args.nice))
        procs.append(start_role("billing,relay", env, state, nice=args.nice))
        wait_ready(procs)
        log(f"service up (logs in {state}); baseline: {args.rps:.0f} reads/s from {args.clients} clients "
            f"for {baseline_s:.0f}s, no ingestion")
        run_clients(address, api_key, subs, 3, args.clients, args.rps)()  # warm-up, not measured
        meter = CpuMeter(api=procs[0][0].pid, postgres=postmaster_pid(stack.postgres.data_dir) if stack else None)
        before = meter.read()
        baseline = summarize(run_clients(address, api_key, subs, baseline_s, args.clients, args.rps)())
        baseline["cpu_us_per_read"] = per_read(CpuMeter.used(before, meter.read()), baseline["calls"])
        log(f"baseline p50 {baseline['all']['p50_ms']} ms p99 {baseline['all']['p99_ms']} ms; under load: "
            f"{args.rate:.0f} events/s produced, the same reads, a billing run over {args.due} subscriptions, "
            f"for {args.seconds:.0f}s")
        before = meter.read()
        loaded = asyncio.run(load_phase(args, settings, env, tenant_id, api_key, subs, address, state))
        loaded["api_cpu_us_per_read"] = per_read(CpuMeter.used(before, meter.read()), loaded["reads"]["calls"])["api"]
        for proc, _ in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"a service process died under load (exit {proc.returncode}); logs in {state}")
        reads = loaded.pop("reads")
        p99, base99 = reads["all"]["p99_ms"], baseline["all"]["p99_ms"]
        figures = {"seconds": args.seconds, "rate_asked": args.rate, "consumers": args.consumers,
                   **loaded, "grpc_under_load": reads, "grpc_baseline": baseline,
                   "p99_ratio_vs_baseline": round(p99 / base99, 2) if base99 else None}
        print(json.dumps(figures))
        split = loaded["reads_split"]
        print(f"baseline: grpc p50={baseline['all']['p50_ms']}ms p99={base99}ms errors={baseline['errors']}; "
              f"under load: p50={reads['all']['p50_ms']}ms p99={p99}ms ({figures['p99_ratio_vs_baseline']}x) "
              f"[ingestion only: p99={split['ingestion_only']['p99_ms']}ms; "
              f"while the billing run ran: p99={split['while_billing_run']['p99_ms']}ms], "
              f"billing run {loaded['billing_run']}")
        print(f"load_events_per_s={loaded['events_per_s']} grpc_p99_ms={p99} errors={reads['errors']} "
              f"p99_while_billing_run_ms={split['while_billing_run']['p99_ms']} api_cpu_us_per_read="
              f"{loaded['api_cpu_us_per_read']} baseline_api_cpu_us_per_read={baseline['cpu_us_per_read']['api']} "
              f"baseline_postgres_cpu_us_per_read={baseline['cpu_us_per_read']['postgres']}")
        finished = True
    finally:
        stop_processes(procs)
        stop_stack(stack, state, finished, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
