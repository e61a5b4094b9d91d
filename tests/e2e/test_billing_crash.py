"""SIGKILL the billing consumer in the middle of a run over many subscriptions, restart it:
exactly one invoice request per subscription and period (ids unique), and the run completes."""
from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import uuid
from datetime import datetime, timedelta, timezone

from billing import codec
from billing.devstack import free_port
from billing.domain.periods import add_interval
from billing.domain.plans import IntervalUnit
from billing.v1 import billing_pb2 as pb
from tests.e2e.test_process import _env
from tests.integration.test_plans_api import plan_request
from tests.integration.test_subscriptions_api import rid
from tests.kafka_helpers import TopicReader

SUBS = 8000  # four chunks of 2,000 (two in flight at once): a kill lands between chunks or inside one


def _start(env, log_path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "billing.cli", "serve", "--roles", "billing,relay"], env=env,
                            stdout=open(log_path, "a"), stderr=subprocess.STDOUT)


async def test_sigkill_mid_run_bills_each_period_once(migrated, stub, tenant, admin_conn, tmp_path):
    plan = (await stub.CreatePlan(plan_request(base_fee="10.00", trial_days=0, usage_charges=[],
                                               billing_timing=pb.BILLING_TIMING_IN_ARREARS),
                                  metadata=tenant.md)).plan
    tid = uuid.UUID(tenant.id)
    start = datetime.now(timezone.utc) - timedelta(days=40)
    first_end = add_interval(start, IntervalUnit.MONTH, 1)
    # Setup straight in the database (1,500 subscriptions over gRPC would only slow the test):
    # active, first period [start, start + 1 month), which ended about ten days ago.
    await admin_conn.executemany(
        """insert into subscriptions (tenant_id, id, customer_id, plan_id, status, created_at, start_at, billing_anchor,
                                      trial_days, current_period_start, current_period_end)
           values ($1, $2, 'crash', $3, 'active', $4, $4, $4, 0, $4, $5)""",
        [(tid, uuid.uuid4(), uuid.UUID(plan.id), start, first_end) for _ in range(SUBS)])
    run = (await stub.RunBilling(pb.RunBillingRequest(request_id=rid()), metadata=tenant.md)).run

    env = _env(migrated, BILLING_HTTP_PORT=str(free_port()), BILLING_LOG_LEVEL="WARNING")
    log_path = tmp_path / "billing.log"

    async def billed() -> int:
        return await admin_conn.fetchval("select count(*) from billed_periods where tenant_id = $1", tid)

    proc = _start(env, log_path)
    try:
        for _ in range(1200):
            if await billed() > 0:
                break
            await asyncio.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed_at = await billed()
        assert 0 < killed_at < SUBS  # the kill landed in the middle of the run
        proc = _start(env, log_path)
        for _ in range(1200):
            status = await admin_conn.fetchval("select status from billing_runs where id = $1", uuid.UUID(run.id))
            unpublished = await admin_conn.fetchval(
                "select count(*) from outbox where tenant_id = $1 and published_at is null", tid)
            if status == "completed" and unpublished == 0:
                break
            await asyncio.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log_path.read_text()[-3000:]

    got = (await stub.GetBillingRun(pb.GetBillingRunRequest(id=run.id), metadata=tenant.md)).run
    assert got.status == pb.BILLING_RUN_STATUS_COMPLETED
    assert await billed() == SUBS
    rows = await admin_conn.fetch("select key, payload from outbox where tenant_id = $1 and stream = 'invoice_requests'",
                                  tid)
    ids = [codec.decode(codec.Schema.INVOICE_REQUEST, r["payload"])["invoice_request_id"] for r in rows]
    assert len(ids) == SUBS and len(set(ids)) == SUBS  # one invoice request per subscription and period

    def read() -> list[str]:
        reader = TopicReader(migrated, migrated.topics.invoice_requests)
        want = set(ids)
        try:
            msgs = reader.until(lambda ms: want <= {m.key().decode() for m in ms}, timeout_s=120)
        finally:
            reader.close()
        return [m.key().decode() for m in msgs if m.key().decode() in want]

    seen = await asyncio.to_thread(read)
    assert set(seen) == set(ids)  # every invoice request published; a duplicate only repeats its id
    print(f"subscriptions={SUBS} billed_before_kill={killed_at} published={len(seen)} "
          f"duplicates={len(seen) - len(ids)}")
