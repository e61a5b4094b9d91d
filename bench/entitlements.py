"""bench/entitlements: CheckEntitlement over gRPC while usage ingests, against the same
checks with no ingestion, measured in the same run (issue 23).

    make bench-entitlements                            # 50 clients, 30 s under ingestion
    make bench-entitlements ARGS=--floor               # the grpc.aio floor alone (bench/grpc_floor.py)
    python -m bench.entitlements --seconds 10 --clients 10 --rate 5000

1. Starts its own PostgreSQL and Kafka (the local stack, in a temporary directory);
   migrates; creates a tenant with one plan (metric "calls", sum) listing three features,
   `sso` (boolean), `tier` (static "gold") and `calls` (metered on "calls", a hard limit no
   run reaches), and --subscriptions active subscriptions.
2. Runs the service as one machine would: `billing serve --roles api` and `--roles usage`,
   each a process of its own, all at the same priority by default: the issue asks for checks
   while usage ingests at the rate, and a consumer at nice 10 (bench/load.py's default)
   beside 50 client processes ingests a fraction of it (--nice 10 to measure that).
3. Clients (--client): `ghz` (the default; bench/ghz.py), one Go process with --clients
   concurrent calls over --connections channels, requests round-robin from a shuffled list of
   every (subscription, feature) pair; or `python`, --clients processes, each one synchronous
   channel calling in a loop, one call at a time, on random subscriptions, the three features
   in turn. A third of the checks read live usage. The Python clients also fail a check that
   answers allowed = false; ghz sees only the status, so every feature is checked on a few
   subscriptions with a Python client before the run.
4. Baseline: the checks alone for --baseline-seconds (default 10). Then, for --seconds
   (default 30): usage produced to billing.usage.v1 at --rate events/s (default 20,000;
   `billing produce-usage`, uuid4 ids) and consumed by the usage role, with the same checks.

CPU is counted for the bench's own processes only (bench/cpu.py): the api server, its
PostgreSQL, the usage role and the broker, per check; the clients apart (ghz: its process's
whole CPU; python: the client processes' CPU while calling). Under ingestion,
PostgreSQL's CPU includes the ingestion's, so the baseline's figure is the check's own.

The threshold alert lag (issue 23; bench/alert_lag.py): --alert-subscriptions more
subscriptions (not in the bulk load, not checked), each with recurring thresholds on `calls`
every --alert-step units; `billing serve --roles relay` publishes the alerts. A probe
produces events of quantity 1 to them at --alert-rate events/s in both phases; lag = the
time the crossing event was produced -> its alert read from billing.usage-alerts.v1. After
the phase under ingestion, the bulk producer stops and the bench waits up to
--alert-drain-seconds for the alerts still due (those that never came are `alerts_missing`).

The last line is `entitlement_checks_per_s=<n> p99_ms=<x> p50_ms=<y> errors=<k>
ingest_events_per_s=<i> cpu_us_per_check=<c> server_us=<s> postgres_us=<p>
ratio_vs_no_ingest=<r> baseline_p99_ms=<b> alert_lag_p99_ms=<l> alert_lag_p50_ms=<m> alerts=<a>
alerts_missing=<x> alert_lag_alone_p99_ms=<z> client=<ghz|python> client_cpu_us=<u>` (under
ingestion; c = s + p measured in the baseline phase, where PostgreSQL serves the checks and
the probe's 200 events/s only; alert_lag_alone: the probe's alerts in the baseline phase, with
no bulk ingestion; u: the load generator's CPU per check under ingestion).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import queue
import random
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import asyncpg

from bench import ghz, grpc_floor
from bench.alert_lag import AlertProbe, histogram_means, statements_per_batch, wait_assigned
from bench.cpu import CpuMeter, kafka_pid, postmaster_pid
from bench.fixtures import copy_rows, run_sql, stop_processes, stop_stack
from bench.load import high_watermark, percentile, start_role, stored_offsets, wait_ready
from billing.config import Settings
from billing.devstack import LocalStack, free_port
from billing.domain.entitlements import FeatureInput
from billing.domain.plan_storage import plan_to_dict
from billing.domain.plan_validation import parse_plan
from billing.domain.plans import PlanInput, UsageChargeInput
from billing.kafka import ensure_topics
from billing.services.tenants import create_tenant
from billing.store.db import init_connection
from billing.store.migrations import migrate

FEATURES = ("sso", "tier", "calls")  # boolean, static, metered


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


async def setup_tenant(settings: Settings, subscriptions: int,
                       extra: int = 0) -> tuple[str, str, list[str], list[str]]:
    """(tenant id, API key, subscription ids, `extra` more subscription ids), written straight
    into the database as the owner."""
    admin = await asyncpg.connect(settings.admin_database_url)
    await init_connection(admin)
    tenant = await create_tenant(admin, f"bench-ent-{uuid.uuid4().hex[:6]}")
    spec = parse_plan(PlanInput(
        code="entitled", name="Entitled", currency="EUR", interval="month", interval_count=1, base_fee="0",
        billing_timing="in_arrears", trial_days=0,
        usage_charges=[UsageChargeInput("calls", "sum", "per_unit", unit_price="0.001")],
        features=[FeatureInput("sso", "boolean"), FeatureInput("tier", "static", value="gold"),
                  FeatureInput("calls", "metered", metric_code="calls", limit="1000000000000", limit_mode="hard")]))
    plan_id = uuid.uuid4()
    await admin.execute("insert into plans (tenant_id, id, code, spec) values ($1, $2, 'entitled', $3)",
                        tenant.tenant_id, plan_id, plan_to_dict(spec))
    start = datetime.now(timezone.utc) - timedelta(days=1)
    subs = [uuid.uuid4() for _ in range(subscriptions + extra)]
    await copy_rows(admin, "subscriptions",
                    ["tenant_id", "id", "customer_id", "plan_id", "status", "created_at", "start_at", "billing_anchor",
                     "trial_days", "current_period_start", "current_period_end"],
                    [(tenant.tenant_id, s, "bench", plan_id, "active", start, start, start, 0, start,
                      start + timedelta(days=30)) for s in subs])
    await admin.execute("analyze subscriptions")
    await admin.close()
    ids = [str(s) for s in subs]
    return str(tenant.tenant_id), tenant.api_key, ids[:subscriptions], ids[subscriptions:]


def _client(address: str, api_key: str, subs: list[str], phases: list[float], ready, gos, out) -> None:
    """A process of its own: one channel, one call at a time; one report per phase."""
    import grpc

    from billing.v1 import billing_pb2 as pb
    from billing.v1 import billing_pb2_grpc

    md = (("authorization", f"Bearer {api_key}"),)
    rnd = random.Random()
    with grpc.insecure_channel(address) as channel:
        stub = billing_pb2_grpc.BillingServiceStub(channel)
        stub.CheckEntitlement(pb.CheckEntitlementRequest(subscription_id=subs[0], feature_code="sso"),
                              metadata=md, timeout=30)  # connected and warm before the clock starts
        ready.wait()
        for seconds, go in zip(phases, gos):
            go.wait()
            latencies: dict[str, list[float]] = {f: [] for f in FEATURES}
            errors: dict[str, int] = {}
            i = rnd.randrange(len(FEATURES))
            cpu0 = time.process_time()
            end = time.perf_counter() + seconds
            while (now := time.perf_counter()) < end:
                feature = FEATURES[i % len(FEATURES)]
                i += 1
                try:
                    resp = stub.CheckEntitlement(
                        pb.CheckEntitlementRequest(subscription_id=rnd.choice(subs), feature_code=feature),
                        metadata=md, timeout=10)
                    if not resp.entitlement.allowed:  # every check of this bench must be allowed
                        errors[f"not_allowed:{resp.entitlement.reason}"] = errors.get(
                            f"not_allowed:{resp.entitlement.reason}", 0) + 1
                        continue
                    latencies[feature].append(time.perf_counter() - now)
                except grpc.RpcError as exc:
                    errors[exc.code().name] = errors.get(exc.code().name, 0) + 1
            out.put({"latencies": latencies, "errors": errors, "cpu_s": time.process_time() - cpu0})


def collect(out, clients: int, procs) -> list[dict]:
    results: list[dict] = []
    while len(results) < clients:
        try:
            results.append(out.get(timeout=5))
        except queue.Empty:
            if not any(p.is_alive() for p in procs):
                raise RuntimeError("client processes ended without reporting") from None
    return results


def summarize(results: list[dict], elapsed: float, cpu: dict) -> dict:
    every = [x * 1000 for r in results for v in r["latencies"].values() for x in v]
    errors: dict[str, int] = {}
    for r in results:
        for k, n in r["errors"].items():
            errors[k] = errors.get(k, 0) + n
    checks = len(every)
    per = max(1, checks)
    us = {k: None if v is None else round(v / per * 1e6, 1) for k, v in cpu.items()}
    us["clients"] = round(sum(r["cpu_s"] for r in results) / per * 1e6, 1)
    by_feature = {}
    for f in FEATURES:
        values = [x * 1000 for r in results for x in r["latencies"][f]]
        by_feature[f] = {"n": len(values), "p50_ms": round(percentile(values, 50), 2),
                         "p99_ms": round(percentile(values, 99), 2)}
    return {"seconds": round(elapsed, 1), "checks": checks, "checks_per_s": round(checks / elapsed),
            "errors": sum(errors.values()), "error_codes": errors,
            "p50_ms": round(percentile(every, 50), 2), "p90_ms": round(percentile(every, 90), 2),
            "p99_ms": round(percentile(every, 99), 2), "max_ms": round(max(every), 1) if every else None,
            "by_feature": by_feature, "cpu_us_per_check": us}


def measured(go, out, clients: int, procs, meter: CpuMeter) -> dict:
    before = meter.read()
    started = time.perf_counter()
    go.set()
    results = collect(out, clients, procs)
    elapsed = time.perf_counter() - started
    return summarize(results, elapsed, CpuMeter.used(before, meter.read()))


def check_answers(address: str, api_key: str, subs: list[str]) -> None:
    """ghz sees the status of a call, not its answer: every feature on a few subscriptions
    must answer allowed before the run, as the Python clients require of every check."""
    import grpc

    from billing.v1 import billing_pb2 as pb
    from billing.v1 import billing_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        stub = billing_pb2_grpc.BillingServiceStub(channel)
        for sub in subs[:3]:
            for feature in FEATURES:
                resp = stub.CheckEntitlement(pb.CheckEntitlementRequest(subscription_id=sub, feature_code=feature),
                                             metadata=(("authorization", f"Bearer {api_key}"),), timeout=30)
                if not resp.entitlement.allowed:
                    raise RuntimeError(f"{feature} of {sub} not allowed: {resp.entitlement.reason}")


def ghz_measured(binary: Path, address: str, api_key: str, requests: list[dict], args, seconds: float,
                 meter: CpuMeter, workdir: Path) -> dict:
    """One phase driven by ghz, in summarize()'s shape (no per-feature split)."""
    before = meter.read()
    r = ghz.run(binary, address, "CheckEntitlement", requests, api_key, concurrency=args.clients,
                connections=args.connections, seconds=seconds, workdir=workdir)
    cpu = CpuMeter.used(before, meter.read())
    per = max(1, r["ok"])
    us = {k: None if v is None else round(v / per * 1e6, 1) for k, v in cpu.items()}
    us["clients"] = r["cpu_us_per_call"]
    return {"seconds": r["seconds"], "checks": r["ok"], "checks_per_s": r["ok_per_s"], "errors": r["errors"],
            "error_codes": r["error_codes"], "error_messages": r["error_messages"], "p50_ms": r["p50_ms"],
            "p90_ms": r["p90_ms"], "p99_ms": r["p99_ms"], "max_ms": r["max_ms"], "cpu_us_per_check": us}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30, help="checks under ingestion (default 30)")
    parser.add_argument("--baseline-seconds", type=float, default=10, help="checks alone (default 10)")
    parser.add_argument("--rate", type=float, default=20_000, help="usage events produced per second (default 20000)")
    parser.add_argument("--client", choices=("ghz", "python"), default="ghz",
                        help="load generator: ghz (bench/ghz.py) or Python processes (default ghz)")
    parser.add_argument("--clients", type=int, default=50, help="concurrent calls; python: processes (default 50)")
    parser.add_argument("--connections", type=int, default=10, help="ghz's gRPC connections (default 10)")
    parser.add_argument("--subscriptions", type=int, default=1000)
    parser.add_argument("--alert-subscriptions", type=int, default=100, help="subscriptions with thresholds")
    parser.add_argument("--alert-rate", type=float, default=200, help="probe events/s to them (default 200)")
    parser.add_argument("--alert-step", type=int, default=4, help="a threshold every this many units (default 4)")
    parser.add_argument("--alert-drain-seconds", type=float, default=120,
                        help="how long to wait for the alerts still due after the load (default 120)")
    parser.add_argument("--nice", type=int, default=0,
                        help="CPU niceness of the usage role and the load generator; the api keeps 0 (default 0)")
    parser.add_argument("--statements", action="store_true",
                        help="pg_stat_statements under ingestion: the top statements per usage batch, on stderr")
    parser.add_argument("--floor", action="store_true",
                        help="only the grpc.aio floor: a trivial server under the same ghz load (bench/grpc_floor.py)")
    grpc_floor.add_arguments(parser)
    args = parser.parse_args()
    if args.floor:
        grpc_floor.report(grpc_floor.measure(args.baseline_seconds, args.clients, args.connections,
                                             args.floor_processes, args.poll_strategy, args.uvloop))
        return 0

    base = Settings()
    ghz_binary = ghz.ensure_ghz(base.kafka_cache_dir) if args.client == "ghz" else None
    state = Path(tempfile.mkdtemp(prefix="bench-entitlements-"))
    stack = LocalStack.create(state, pg_port=free_port(), kafka_port=free_port(), controller_port=free_port(),
                              kafka_version=base.kafka_version, kafka_cache_dir=base.kafka_cache_dir)
    # the alert lag's stages (bench/alert_lag.py); --statements: the batch's statements
    stack.postgres.extra_options = "-c track_commit_timestamp=on" + (
        " -c shared_preload_libraries=pg_stat_statements" if args.statements else "")
    log(f"starting the local stack in {state}")
    stack.start()
    settings = Settings(**{k.removeprefix("BILLING_").lower(): v for k, v in stack.env().items()})
    grpc_port = free_port()
    env = {**os.environ, "BILLING_DATABASE_URL": settings.database_url,
           "BILLING_WORKER_DATABASE_URL": settings.worker_database_url,
           "BILLING_ADMIN_DATABASE_URL": settings.admin_database_url,
           "BILLING_KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
           "BILLING_KAFKA_REPLICATION_FACTOR": str(settings.kafka_replication_factor),
           "BILLING_KAFKA_MIN_INSYNC_REPLICAS": str(settings.kafka_min_insync_replicas), "BILLING_LOG_LEVEL": "WARNING",
           "BILLING_SCHEDULER_INTERVAL_S": "0"}
    roles: list[tuple[subprocess.Popen, int]] = []
    clients: list = []
    producer = None
    finished = False
    try:
        asyncio.run(migrate(settings.admin_database_url, settings.migrations_dir))
        ensure_topics(settings)
        tenant_id, api_key, subs, alert_subs = asyncio.run(setup_tenant(settings, args.subscriptions,
                                                                        args.alert_subscriptions))
        probe = AlertProbe(settings, tenant_id, alert_subs, args.alert_step, args.alert_rate)
        log(f"{asyncio.run(probe.create_thresholds())} thresholds on {len(alert_subs)} subscriptions")
        roles.append(start_role("api", env, state, BILLING_GRPC_PORT=str(grpc_port)))
        roles.append(start_role("usage", env, state, nice=args.nice))
        roles.append(start_role("relay", env, state))
        wait_ready(roles)
        wait_assigned(roles[1][1])  # the probe times the path, not the usage group's join
        probe.start_reader()
        address = f"127.0.0.1:{grpc_port}"
        meter = CpuMeter(server=roles[0][0].pid, postgres=postmaster_pid(stack.postgres.data_dir),
                         usage=roles[1][0].pid, kafka=kafka_pid(stack.kafka.data_dir))
        if ghz_binary is not None:
            check_answers(address, api_key, subs)
            requests = [{"subscription_id": s, "feature_code": f} for s in subs for f in FEATURES]
            random.shuffle(requests)

            def run_phase(i: int, seconds: float) -> dict:
                return ghz_measured(ghz_binary, address, api_key, requests, args, seconds, meter, state)
        else:
            ctx = multiprocessing.get_context("spawn")
            ready, gos, out = ctx.Barrier(args.clients + 1), [ctx.Event(), ctx.Event()], ctx.Queue()
            clients = [ctx.Process(target=_client, args=(address, api_key, subs, [args.baseline_seconds, args.seconds],
                                                         ready, gos, out)) for _ in range(args.clients)]
            for p in clients:
                p.start()
            ready.wait(timeout=300)

            def run_phase(i: int, seconds: float) -> dict:
                return measured(gos[i], out, args.clients, clients, meter)
        log(f"{args.clients} concurrent {args.client} clients; baseline: checks alone for {args.baseline_seconds:.0f}s")
        probing = threading.Thread(target=probe.run, args=(args.baseline_seconds, "alone"), daemon=True)
        probing.start()
        baseline = run_phase(0, args.baseline_seconds)
        probing.join()
        log(f"baseline {baseline['checks_per_s']} checks/s p99 {baseline['p99_ms']} ms; under ingestion: "
            f"{args.rate:.0f} events/s produced, the same checks, for {args.seconds:.0f}s")
        subs_file = state / "subscriptions.txt"
        subs_file.write_text("\n".join(subs))
        producer = subprocess.Popen(
            ["nice", "-n", str(args.nice), sys.executable, "-m", "billing.cli", "produce-usage",
             "--count", str(int(args.rate * (args.seconds + 10))), "--tenant-id", tenant_id,
             "--subscriptions-file", str(subs_file), "--metric", "calls", "--rate", str(args.rate),
             "--ids", "uuid4", "--duplicates", "0", "--seed", "1", "--no-progress"],
            env=env, stdout=subprocess.DEVNULL, stderr=open(state / "producer.log", "a"))
        probing = threading.Thread(target=probe.run, args=(args.seconds + 3, "ingest"), daemon=True)
        probing.start()
        time.sleep(3)  # ingestion at its steady state before the clock starts
        su = stack.postgres.superuser_url.rsplit("/", 1)[0] + "/billing"
        if args.statements:
            asyncio.run(run_sql(su, "create extension if not exists pg_stat_statements",
                                "select pg_stat_statements_reset()"))
        marks0, offsets0, t0 = high_watermark(settings), asyncio.run(stored_offsets(settings)), time.perf_counter()
        loaded = run_phase(1, args.seconds)
        marks1, offsets1, t1 = high_watermark(settings), asyncio.run(stored_offsets(settings)), time.perf_counter()
        probing.join()
        if args.statements:
            log(asyncio.run(statements_per_batch(su)))
        producer.terminate()  # the bulk load stops; the alerts still due are waited for
        producer.wait(timeout=30)
        log(f"waiting up to {args.alert_drain_seconds:.0f}s for the alerts still due")
        probe.wait_for_alerts(args.alert_drain_seconds)
        probe.stop_reader()
        asyncio.run(probe.load_commit_times())
        log(probe.stage_line("alone") + "\n" + probe.stage_line("ingest"))
        means_ms = {**histogram_means(roles[1][1], ("billing_consumer_batch_duration_seconds",
                                                    "billing_consumer_batch_wait_seconds",
                                                    "billing_consumer_batch_age_seconds")),
                    **histogram_means(roles[2][1], ("billing_outbox_delivery_delay_seconds",
                                                    "billing_outbox_publish_duration_seconds"))}
        alerts = {"mean_ms": means_ms, "under_ingestion": probe.summary("ingest"), "alone": probe.summary("alone"),
                  "repeated": probe.repeats, "subscriptions": len(alert_subs), "rate": args.alert_rate,
                  "step": args.alert_step}
        for proc, _ in roles:
            if proc.poll() is not None:
                raise RuntimeError(f"a service process died (exit {proc.returncode}); logs in {state}")
        ingest = {"produced_per_s": round((marks1 - marks0) / (t1 - t0)),
                  "consumed_per_s": round((offsets1 - offsets0) / (t1 - t0)), "lag_at_end": marks1 - offsets1}
        ratio = loaded["checks_per_s"] / max(1, baseline["checks_per_s"])
        figures = {"client": args.client, "clients": args.clients, "connections": args.connections,
                   "subscriptions": args.subscriptions, "rate_asked": args.rate, "ingest": ingest,
                   "under_ingestion": loaded, "baseline_no_ingestion": baseline,
                   "ratio_vs_no_ingest": round(ratio, 2), "alert_lag": alerts,
                   "load_avg": [round(x, 2) for x in os.getloadavg()]}
        print(json.dumps(figures))
        cpu = baseline["cpu_us_per_check"]
        print(f"entitlement_checks_per_s={loaded['checks_per_s']} p99_ms={loaded['p99_ms']} "
              f"p50_ms={loaded['p50_ms']} errors={loaded['errors'] + baseline['errors']} "
              f"ingest_events_per_s={ingest['consumed_per_s']} "
              f"cpu_us_per_check={cpu['server'] + (cpu['postgres'] or 0):.0f} server_us={cpu['server']:.0f} "
              f"postgres_us={cpu['postgres'] or 0:.0f} ratio_vs_no_ingest={ratio:.2f} "
              f"baseline_p99_ms={baseline['p99_ms']} alert_lag_p99_ms={alerts['under_ingestion']['lag']['p99_ms']} "
              f"alert_lag_p50_ms={alerts['under_ingestion']['lag']['p50_ms']} "
              f"alerts={alerts['under_ingestion']['alerts']} alerts_missing={alerts['under_ingestion']['missing']} "
              f"alert_lag_alone_p99_ms={alerts['alone']['lag']['p99_ms']} client={args.client} "
              f"client_cpu_us={loaded['cpu_us_per_check']['clients']}")
        finished = True
    finally:
        for p in clients:
            p.join(timeout=30 if finished else 0)
            if p.is_alive():
                p.kill()
        if producer is not None and producer.poll() is None:
            producer.terminate()
            producer.wait(timeout=30)
        stop_processes(roles)
        stop_stack(stack, state, finished, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
