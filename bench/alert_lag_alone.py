"""bench/alert_lag_alone: the threshold alert lag of bench/entitlements.py (issue 23) with
nothing else running: no CheckEntitlement clients, no bulk load. Where the alert path itself
spends its time, apart from the CPU that bench's load takes from it.

    make bench-alert-lag                                    # 20 s at 200 events/s
    python -m bench.alert_lag_alone --seconds 20 --rate 200 --subscriptions 100 --step 4

Starts its own PostgreSQL (with track_commit_timestamp, for the stages) and Kafka, a tenant
with `--subscriptions` subscriptions, each with recurring thresholds every `--step` units
of `calls`, then `billing serve --roles usage` and `--roles relay`, each a process of its
own; the probe of bench/alert_lag.py produces events of quantity 1 to them at `--rate`
events/s for `--seconds`, and reads the alerts. The service's settings come from the
environment (BILLING_USAGE_BATCH_WAIT_MS, say).

stderr: the lag per stage (bench/alert_lag.py's docstring) and the means of the roles'
histograms (a usage batch's wait from its first message fetched, that message's age, the
batch; the relay's delivery delay). stdout: a JSON line (the probe's summary, those means, CPU
per probe event of the usage role, the relay and PostgreSQL, the load average),
then `alert_lag_p99_ms=<x> alert_lag_p50_ms=<y> alerts=<a> alerts_missing=<m>
usage_cpu_us=<u> relay_cpu_us=<r> postgres_cpu_us=<p>`.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.alert_lag import AlertProbe, histogram_means, statements_per_batch, wait_assigned
from bench.cpu import CpuMeter, postmaster_pid
from bench.entitlements import log, setup_tenant
from bench.fixtures import run_sql, stop_processes, stop_stack
from bench.load import start_role, wait_ready
from billing.config import Settings
from billing.devstack import LocalStack, free_port
from billing.kafka import ensure_topics
from billing.store.migrations import migrate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20, help="how long the probe produces (default 20)")
    parser.add_argument("--rate", type=float, default=200, help="probe events/s (default 200)")
    parser.add_argument("--subscriptions", type=int, default=100, help="subscriptions with thresholds (default 100)")
    parser.add_argument("--step", type=int, default=4, help="a threshold every this many units (default 4)")
    parser.add_argument("--drain-seconds", type=float, default=60, help="wait for the alerts still due (default 60)")
    parser.add_argument("--statements", action="store_true",
                        help="pg_stat_statements: the top statements by time per usage batch, on stderr")
    args = parser.parse_args()

    base = Settings()
    state = Path(tempfile.mkdtemp(prefix="bench-alert-lag-"))
    stack = LocalStack.create(state, pg_port=free_port(), kafka_port=free_port(), controller_port=free_port(),
                              kafka_version=base.kafka_version, kafka_cache_dir=base.kafka_cache_dir)
    stack.postgres.extra_options = "-c track_commit_timestamp=on" + (
        " -c shared_preload_libraries=pg_stat_statements" if args.statements else "")
    log(f"starting the local stack in {state}")
    stack.start()
    settings = Settings(**stack.settings_kwargs())
    env = {**os.environ, **stack.env(), "BILLING_LOG_LEVEL": "WARNING", "BILLING_SCHEDULER_INTERVAL_S": "0"}
    roles: list[tuple[subprocess.Popen, int]] = []
    finished = False
    try:
        asyncio.run(migrate(settings.admin_database_url, settings.migrations_dir))
        ensure_topics(settings)
        tenant_id, _, _, subs = asyncio.run(setup_tenant(settings, 0, args.subscriptions))
        probe = AlertProbe(settings, tenant_id, subs, args.step, args.rate)
        log(f"{asyncio.run(probe.create_thresholds())} thresholds on {len(subs)} subscriptions")
        roles.append(start_role("usage", env, state))
        roles.append(start_role("relay", env, state))
        wait_ready(roles)
        wait_assigned(roles[0][1])  # the probe times the path, not the usage group's join
        probe.start_reader()
        meter = CpuMeter(usage=roles[0][0].pid, relay=roles[1][0].pid,
                         postgres=postmaster_pid(stack.postgres.data_dir))
        su = stack.postgres.superuser_url.rsplit("/", 1)[0] + "/billing"
        if args.statements:
            asyncio.run(run_sql(su, "create extension if not exists pg_stat_statements",
                             "select pg_stat_statements_reset()"))
        before = meter.read()
        probe.run(args.seconds, "alone")
        probe.wait_for_alerts(args.drain_seconds)
        cpu = CpuMeter.used(before, meter.read())
        means_ms = {**histogram_means(roles[0][1], ("billing_consumer_batch_duration_seconds",
                                                    "billing_consumer_batch_wait_seconds",
                                                    "billing_consumer_batch_age_seconds")),
                    **histogram_means(roles[1][1], ("billing_outbox_delivery_delay_seconds",))}
        if args.statements:
            log(asyncio.run(statements_per_batch(su)))
        probe.stop_reader()
        asyncio.run(probe.load_commit_times())
        log(probe.stage_line("alone") + f"\nmeans (ms) of the roles' histograms: {means_ms}")
        for proc, _ in roles:
            if proc.poll() is not None:
                raise RuntimeError(f"a service process died (exit {proc.returncode}); logs in {state}")
        events = max(1, int(args.rate * args.seconds))
        us = {k: None if v is None else round(v / events * 1e6, 1) for k, v in cpu.items()}
        summary = probe.summary("alone")
        print(json.dumps({"alert_lag": summary, "repeated": probe.repeats, "cpu_us_per_probe_event": us, "mean_ms": means_ms,
                          "rate": args.rate, "seconds": args.seconds, "subscriptions": len(subs), "step": args.step,
                          "batch_wait_ms": Settings().usage_batch_wait_ms,
                          "load_avg": [round(x, 2) for x in os.getloadavg()]}))
        print(f"alert_lag_p99_ms={summary['lag']['p99_ms']} alert_lag_p50_ms={summary['lag']['p50_ms']} "
              f"alerts={summary['alerts']} alerts_missing={summary['missing']} usage_cpu_us={us['usage']} "
              f"relay_cpu_us={us['relay']} postgres_cpu_us={us['postgres']}")
        finished = True
    finally:
        stop_processes(roles)
        stop_stack(stack, state, finished, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
