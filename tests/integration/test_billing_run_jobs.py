"""Billing run shards as durable jobs: the consumer's recording (once, refused for an
unknown run or shard) and the executor's lease (a crashed executor's shard is claimed again
once its lease ran out, and billed once)."""
from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timezone

import pytest

from billing.services import billing_runs
from billing.services.billing_runs import ShardRequest, record_shard_request
from billing.services.context import Caller
from billing.services.run_executor import ExecutorSettings, RunExecutor
from billing.store import billing_runs as runs_store
from billing.store.db import ConnectionScope
from billing.v1 import billing_pb2 as pb
from tests.integration.test_billing_runs import _completed, _sub_started, _usage_plan
from tests.integration.test_subscriptions_api import rid

pytestmark = pytest.mark.integration


async def _record(db, tenant_id: uuid.UUID, run_id: uuid.UUID, shard: int, traceparent: str = ""):
    """As the consumer records: inside a batch transaction, through a ConnectionScope."""
    async with db.pool.acquire() as conn, conn.transaction():
        return await record_shard_request(ConnectionScope(conn), tenant_id, run_id, shard, traceparent)


async def test_the_consumer_records_a_shard_once_and_refuses_unknown_ones(tenant, admin_conn, worker_db):
    tid = uuid.UUID(tenant.id)
    run = await billing_runs.run_billing(worker_db, Caller(tid, "test"), rid(), "", datetime.now(timezone.utc),
                                         shards=2)
    first = await _record(worker_db, tid, run.id, 1, "00-" + "a" * 32 + "-" + "b" * 16 + "-01")
    again = await _record(worker_db, tid, run.id, 1)
    assert first.outcome is again.outcome is ShardRequest.RECORDED and first.shard_count == 2
    rows = await admin_conn.fetch("select shard, status, traceparent, lease_until from billing_run_shards "
                                  "where run_id = $1", run.id)
    assert [(r["shard"], r["status"], r["lease_until"]) for r in rows] == [(1, "pending", None)]
    assert rows[0]["traceparent"].startswith("00-aaaa")  # the first recording's, kept
    assert (await _record(worker_db, tid, run.id, 2)).outcome is ShardRequest.UNKNOWN_SHARD
    assert (await _record(worker_db, tid, uuid.uuid4(), 0)).outcome is ShardRequest.UNKNOWN_RUN
    assert (await _record(worker_db, uuid.uuid4(), run.id, 0)).outcome is ShardRequest.UNKNOWN_RUN
    with pytest.raises(Exception, match="shards"):
        await billing_runs.run_billing(worker_db, Caller(tid, "test"), rid(), "", None, shards=0)


async def test_a_crashed_executors_shard_is_claimed_again_once_its_lease_ran_out(service, stub, tenant,
                                                                                 admin_conn, worker_db):
    plan = await _usage_plan(stub, tenant, timing=pb.BILLING_TIMING_IN_ARREARS)
    sub = await _sub_started(stub, tenant, plan, days_ago=40)
    tid = uuid.UUID(tenant.id)
    run = await billing_runs.run_billing(worker_db, Caller(tid, "test"), rid(), "", datetime.now(timezone.utc))
    assert (await _record(worker_db, tid, run.id, 0)).outcome is ShardRequest.RECORDED
    # An executor claims the shard and dies at once: it never renews its lease.
    async with worker_db.tenant_tx(tid) as conn:
        assert await runs_store.claim_shard(conn, tid, run.id, 0, "dead", 2.0) == ""
        assert await runs_store.claim_shard(conn, tid, run.id, 0, "other", 2.0) is None  # leased: not twice
    executor = RunExecutor(worker_db, ExecutorSettings(lease_s=5.0, renew_s=1.0, poll_s=0.05))
    task = asyncio.create_task(executor.run())
    try:
        await asyncio.sleep(0.5)
        assert await admin_conn.fetchval("select executed_by from billing_run_shards where run_id = $1",
                                         run.id) == "dead"  # the lease still holds
        done = await _completed(stub, tenant, str(run.id))
        assert (done.subscriptions_due, done.subscriptions_billed, done.subscriptions_failed) == (1, 1, 0)
    finally:
        executor.stop()
        await asyncio.wait_for(task, 30)
    shard = await admin_conn.fetchrow("select status, executed_by from billing_run_shards where run_id = $1",
                                      run.id)
    assert (shard["status"], shard["executed_by"]) == ("completed", executor.name)
    assert await admin_conn.fetchval("select count(*) from billed_periods where subscription_id = $1",
                                     uuid.UUID(sub.id)) == 1
