"""bench/grpc_usage: synchronous usage over gRPC, RecordUsage with group commit and
RecordUsageBatch, against one transaction per call measured in the same run.

    make bench-grpc-usage                         # 50 clients, 30 s per phase
    python -m bench.grpc_usage --seconds 10 --clients 20

Starts its own PostgreSQL (the local stack's, in a temporary directory) and, per phase, an
API server (`billing serve --roles api`, its own process); no Kafka is needed. `--clients`
(default 50) concurrent calls, each a new UUIDv4 event id on one of 1,000 subscriptions, for
`--seconds`. The RecordUsage phases are driven by ghz (`--client ghz`, the default;
bench/ghz.py: one Go process, `--connections` channels) or by Python processes (`--client
python`: one process per client, each calling in a loop, one call at a time); the batch
phase always by Python processes, each building its request's bytes once and writing fresh
random UUIDv4 ids into them per call (bench/batch_request.py), and checking every answer
(one outcome per event, the first and last ids, no refusal, no duplicate: else an error):

1. baseline: RecordUsage with BILLING_USAGE_GROUP_COMMIT_MS=0 (one transaction per call),
   for `--baseline-seconds` (default: `--seconds`);
2. RecordUsage with group commit (BILLING_USAGE_GROUP_COMMIT_MS, default 2);
3. RecordUsageBatch with `--batch-size` events per call (default 1,000, the RPC's limit: a producer
   batching its usage sends full batches).

`--server-processes N` runs the server as N API processes on one port (BILLING_GRPC_PROCESSES).

CPU is counted for the bench's own processes only (bench/cpu.py): the server's (all its API
processes) and its PostgreSQL's process trees, per call (per event for the batch phase); the
clients' apart (ghz: its whole process's CPU). Errors: every call not answered OK.

The last line is `grpc_usage_calls_per_s=<n> p99_ms=<x> batch_events_per_s=<b> errors=<k>
ratio_vs_per_call=<r> cpu_us_per_call=<c> client=<ghz|python> client_cpu_us=<u>
batch_cpu_us_per_event=<e> batch_server_us=<s> batch_postgres_us=<p> batch_client_us=<k>` (c:
server + PostgreSQL, u: the load generator, per call, group commit phase; e = s + p, and k,
per event stored by the batch phase).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import queue
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import asyncpg

from bench import ghz
from bench.batch_request import BatchRequests
from bench.cpu import CpuMeter, postmaster_pid
from bench.fixtures import copy_rows, metered_tenant
from billing.devstack import LocalPostgres, free_port
from billing.store.db import init_connection
from billing.store.migrations import migrate
from billing.config import Settings


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


async def setup(settings: Settings, subscriptions: int) -> tuple[str, list[str]]:
    admin = await asyncpg.connect(settings.admin_database_url)
    await init_connection(admin)
    tenant, plan_id = await metered_tenant(admin, "bench-grpc", base_fee="0", unit_price="0.001")
    start = datetime.now(timezone.utc) - timedelta(days=1)
    subs = [uuid.uuid4() for _ in range(subscriptions)]
    await copy_rows(admin, "subscriptions",
                    ["tenant_id", "id", "customer_id", "plan_id", "status", "created_at", "start_at", "billing_anchor",
                     "trial_days", "current_period_start", "current_period_end"],
                    [(tenant.tenant_id, s, "bench", plan_id, "active", start, start, start, 0, start,
                      start + timedelta(days=30)) for s in subs])
    await admin.close()
    return tenant.api_key, [str(s) for s in subs]


def _client(address: str, api_key: str, subs: list[str], mode: str, batch_size: int, seconds: float,
            ready, go, out) -> None:
    import grpc

    from billing.v1 import billing_pb2 as pb
    from billing.v1 import billing_pb2_grpc

    md = (("authorization", f"Bearer {api_key}"),)
    rnd = random.Random()
    latencies: list[float] = []
    calls = events = errors = duplicates = 0
    with grpc.insecure_channel(address) as channel:
        stub = billing_pb2_grpc.BillingServiceStub(channel)
        # The batch's bytes built once, fresh ids written per call (bench/batch_request.py), sent as they are.
        batches = BatchRequests([rnd.choice(subs) for _ in range(batch_size)], "calls", "1",
                                datetime.now(timezone.utc)) if mode == "batch" else None
        send_batch = channel.unary_unary("/billing.v1.BillingService/RecordUsageBatch", request_serializer=None,
                                         response_deserializer=pb.RecordUsageBatchResponse.FromString)
        ready.wait()
        go.wait()
        cpu0 = time.process_time()
        end = time.perf_counter() + seconds
        while (now := time.perf_counter()) < end:
            try:
                if batches is not None:
                    data, _ = batches.next()
                    resp = send_batch(data, metadata=md, timeout=30)
                    # Every event answered once, in order (the first and last ids checked): else
                    # the call counts as an error; a refused event counts as one.
                    if (len(resp.outcomes) != batch_size
                            or resp.recorded + resp.duplicates + resp.rejected != batch_size
                            or resp.outcomes[0].recorded.event_id != batches.event_id(0)
                            or resp.outcomes[-1].recorded.event_id != batches.event_id(batch_size - 1)):
                        errors += 1
                        continue
                    events += resp.recorded
                    duplicates += resp.duplicates  # fresh random ids: a duplicate is a wrong answer
                    errors += resp.rejected + resp.duplicates
                else:
                    at = datetime.now(timezone.utc)
                    req = pb.RecordUsageRequest(request_id=str(uuid.uuid4()), subscription_id=rnd.choice(subs),
                                                metric_code="calls", quantity="1")
                    req.occurred_at.FromDatetime(at)
                    stub.RecordUsage(req, metadata=md, timeout=30)
                    events += 1
                calls += 1
                latencies.append(time.perf_counter() - now)
            except grpc.RpcError:
                errors += 1
        out.put({"calls": calls, "events": events, "duplicates": duplicates, "errors": errors, "latencies": latencies,
                 "cpu_s": time.process_time() - cpu0})


def _wait_port(port: int, proc: subprocess.Popen, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the API server exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError("the API server did not listen in time")


def _per_event(cpu: dict, per: int, clients_us: float | None) -> dict:
    return {"server": round(cpu["server"] / per * 1e6, 1),
            "postgres": None if cpu["postgres"] is None else round(cpu["postgres"] / per * 1e6, 1),
            "clients": clients_us}


def ghz_requests(subs: list[str]) -> list[dict]:
    """RecordUsage requests for ghz, round-robin over the subscriptions in a random order; ghz
    fills a fresh UUIDv4 request id (the event id too, left empty) and the time per call."""
    order = random.sample(subs, len(subs))
    return [{"request_id": "{{.UUID}}", "subscription_id": s, "metric_code": "calls", "quantity": "1",
             "occurred_at": "{{.Timestamp}}"} for s in order]


def phase(settings: Settings, pg: LocalPostgres, api_key: str, subs: list[str], *, mode: str, group_ms: float,
          clients: int, seconds: float, batch_size: int, server_processes: int = 1,
          ghz_binary: Path | None = None, connections: int = 10) -> dict:
    port = free_port()
    env = {**os.environ, "BILLING_DATABASE_URL": settings.database_url,
           "BILLING_WORKER_DATABASE_URL": settings.worker_database_url,
           "BILLING_ADMIN_DATABASE_URL": settings.admin_database_url, "BILLING_GRPC_PORT": str(port),
           "BILLING_HTTP_PORT": str(free_port()), "BILLING_READINESS_REQUIRES_KAFKA": "false",
           "BILLING_USAGE_GROUP_COMMIT_MS": str(group_ms), "BILLING_DB_POOL_MAX": "20",
           "BILLING_LOG_LEVEL": "WARNING", "BILLING_GRPC_PROCESSES": str(server_processes)}
    server = subprocess.Popen([sys.executable, "-m", "billing.cli", "serve", "--roles", "api"], env=env,
                              stdout=subprocess.DEVNULL,
                              stderr=open(Path(tempfile.gettempdir()) / "bench-grpc-usage-server.log", "w"))
    if ghz_binary is not None and mode == "single":
        try:
            _wait_port(port, server)
            meter = CpuMeter(server=server.pid, postgres=postmaster_pid(pg.data_dir))
            before = meter.read()
            r = ghz.run(ghz_binary, f"127.0.0.1:{port}", "RecordUsage", ghz_requests(subs), api_key,
                        concurrency=clients, connections=connections, seconds=seconds, templates=True)
            cpu = CpuMeter.used(before, meter.read())
        finally:
            server.terminate()
            server.wait(timeout=30)
        per = max(1, r["ok"])
        return {"mode": mode, "group_ms": group_ms, "client": "ghz", "seconds": r["seconds"], "calls": r["ok"],
                "events": r["ok"], "errors": r["errors"], "error_codes": r["error_codes"],
                "error_messages": r["error_messages"], "calls_per_s": r["ok_per_s"], "events_per_s": r["ok_per_s"],
                "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"],
                "cpu_us_per_event": _per_event(cpu, per, r["cpu_us_per_call"])}
    ctx = multiprocessing.get_context("spawn")
    ready, go, out = ctx.Barrier(clients + 1), ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_client, args=(f"127.0.0.1:{port}", api_key, subs, mode, batch_size, seconds,
                                               ready, go, out)) for _ in range(clients)]
    try:
        _wait_port(port, server)
        for p in procs:
            p.start()
        ready.wait()
        meter = CpuMeter(server=server.pid, postgres=postmaster_pid(pg.data_dir))
        before = meter.read()
        started = time.perf_counter()
        go.set()
        results = []
        while len(results) < clients:
            try:
                results.append(out.get(timeout=5))
            except queue.Empty:
                if not any(p.is_alive() for p in procs):
                    raise RuntimeError("client processes ended without reporting") from None
        elapsed = time.perf_counter() - started
        cpu = CpuMeter.used(before, meter.read())
    finally:
        for p in procs:
            p.join(timeout=30)
        server.terminate()
        server.wait(timeout=30)
    lat = sorted(x for r in results for x in r["latencies"])
    calls, events = sum(r["calls"] for r in results), sum(r["events"] for r in results)
    per = max(1, events)
    return {"mode": mode, "group_ms": group_ms, "client": "python", "seconds": round(elapsed, 1), "calls": calls,
            "events": events,
            "errors": sum(r["errors"] for r in results), "duplicates": sum(r.get("duplicates", 0) for r in results),
            "calls_per_s": round(calls / elapsed), "events_per_s": round(events / elapsed),
            "p50_ms": round(lat[len(lat) // 2] * 1000, 1) if lat else None,
            "p99_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000, 1) if lat else None,
            "cpu_us_per_event": _per_event(cpu, per, round(sum(r["cpu_s"] for r in results) / per * 1e6, 1))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--baseline-seconds", type=float, default=None)
    parser.add_argument("--client", choices=("ghz", "python"), default="ghz",
                        help="load generator of the RecordUsage phases: ghz (bench/ghz.py) or Python processes; "
                             "the batch phase always runs Python processes (default ghz)")
    parser.add_argument("--clients", type=int, default=50, help="concurrent calls; python: processes (default 50)")
    parser.add_argument("--connections", type=int, default=10, help="ghz's gRPC connections (default 10)")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--group-ms", type=float, default=2.0)
    parser.add_argument("--subscriptions", type=int, default=1000)
    parser.add_argument("--server-processes", type=int, default=1,
                        help="API processes on the port (BILLING_GRPC_PROCESSES; default 1)")
    args = parser.parse_args()

    ghz_binary = ghz.ensure_ghz() if args.client == "ghz" else None
    pg = LocalPostgres(data_dir=Path(tempfile.mkdtemp(prefix="bench-grpc-usage-")) / "postgres", port=free_port())
    log(f"starting PostgreSQL in {pg.data_dir}")
    pg.start()
    finished = False
    settings = Settings(database_url=pg.app_url, worker_database_url=pg.worker_url, admin_database_url=pg.admin_url)
    try:
        asyncio.run(migrate(settings.admin_database_url, settings.migrations_dir))
        api_key, subs = asyncio.run(setup(settings, args.subscriptions))
        common = dict(clients=args.clients, batch_size=args.batch_size, server_processes=args.server_processes,
                      ghz_binary=ghz_binary, connections=args.connections)
        log(f"baseline: RecordUsage, one transaction per call, {args.clients} clients")
        base = phase(settings, pg, api_key, subs, mode="single", group_ms=0,
                     seconds=args.baseline_seconds or args.seconds, **common)
        log(f"RecordUsage with group commit ({args.group_ms} ms)")
        grouped = phase(settings, pg, api_key, subs, mode="single", group_ms=args.group_ms, seconds=args.seconds,
                        **common)
        log(f"RecordUsageBatch, {args.batch_size} events per call")
        batch = phase(settings, pg, api_key, subs, mode="batch", group_ms=args.group_ms, seconds=args.seconds,
                      **common)
        print(json.dumps({"baseline": base, "group_commit": grouped, "batch": batch,
                          "server_processes": args.server_processes, "load_avg_1m": os.getloadavg()[0]}))
        ratio = grouped["calls_per_s"] / max(1, base["calls_per_s"])
        cpu, bcpu = grouped["cpu_us_per_event"], batch["cpu_us_per_event"]
        print(f"grpc_usage_calls_per_s={grouped['calls_per_s']} p99_ms={grouped['p99_ms']} "
              f"batch_events_per_s={batch['events_per_s']} errors={grouped['errors'] + batch['errors']} "
              f"ratio_vs_per_call={ratio:.1f} cpu_us_per_call={cpu['server'] + (cpu['postgres'] or 0):.0f} "
              f"client={args.client} client_cpu_us={cpu['clients']} "
              f"batch_cpu_us_per_event={bcpu['server'] + (bcpu['postgres'] or 0):.1f} "
              f"batch_server_us={bcpu['server']} batch_postgres_us={bcpu['postgres']} "
              f"batch_client_us={bcpu['clients']}")
        finished = True
    finally:
        pg.stop(quiet=True)
        if finished:
            shutil.rmtree(pg.data_dir.parent, ignore_errors=True)
        else:
            log(f"data kept in {pg.data_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
