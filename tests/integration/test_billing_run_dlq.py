"""Bad billing-run requests go to the billing-runs DLQ with the reason, through the real
broker, and the requests behind them are still executed; a database outage during a run
is retried, never dead-lettered."""
from __future__ import annotations

import asyncio
import os
import time
import uuid

import asyncpg
import pytest
from confluent_kafka.admin import AdminClient, NewTopic
from prometheus_client import REGISTRY

from billing import codec
from billing.devstack import free_port
from billing.kafka import consumer_config, producer_config
from billing.runtime import BILLING_GROUP
from billing.services.run_executor import ExecutorSettings, RunExecutor
from billing.store.db import Database, init_connection
from billing.v1 import billing_pb2 as pb
from consumers.billing import BillingRunStrategy
from consumers.runner import Batching, ConsumerRunner, ConsumerSource, DeadLetterPolicy, Retry
from tests.integration.test_billing_runs import _completed, _sub_started, _usage_plan
from tests.kafka_helpers import TopicReader, produce, running_roles, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
async def kafka_roles(migrated):
    """The billing consumer (and its executor) and the outbox relay, running in this process;
    stopped after the test, so that no executor but the next test's own runs meanwhile."""
    async with running_roles(migrated, ("billing", "relay")) as svc:
        yield svc


async def _recorded_run(admin_conn, tenant_id: str, shards: int = 1) -> uuid.UUID:
    """A run recorded as RunBilling records it, but without its requests in the outbox:
    the test produces them itself, so nothing but the test's own messages can execute it."""
    run_id = uuid.uuid4()
    await admin_conn.execute(
        "insert into billing_runs (tenant_id, id, idempotency_key, as_of, shard_count) values ($1, $2, $3, now(), $4)",
        uuid.UUID(tenant_id), run_id, f"test-{run_id}", shards)
    return run_id


def _request(tenant_id: str, run_id: str, shard: int = 0, shard_count: int = 1) -> bytes:
    now_us = time.time_ns() // 1000
    return codec.encode(codec.Schema.BILLING_RUN_REQUEST, {
        "run_id": run_id, "tenant_id": tenant_id, "as_of_us": now_us, "shard": shard, "shard_count": shard_count,
        "requested_at_us": now_us})


def _dead_letters(settings, key: bytes, wanted: int) -> list:
    """The DLQ messages with this key, one per source offset (the DLQ is at least once)."""
    reader = TopicReader(settings, settings.topics.billing_runs_dlq)

    def mine(ms):
        return {dict(m.headers())["dlq.offset"]: m for m in ms if m.key() == key}

    try:
        reader.until(lambda ms: len(mine(ms)) >= wanted)
        return sorted(mine(reader.messages).values(), key=lambda m: int(dict(m.headers())["dlq.offset"]))
    finally:
        reader.close()


def _dead_letter_count(reason: str) -> float:
    return REGISTRY.get_sample_value("billing_consumer_dead_letters_total",
                                     {"group": BILLING_GROUP, "reason": reason}) or 0.0


async def test_bad_run_requests_are_dead_lettered_and_the_next_request_runs(kafka_roles, migrated, stub, tenant,
                                                                             admin_conn):
    plan = await _usage_plan(stub, tenant)
    sub = await _sub_started(stub, tenant, plan, days_ago=40)  # one period has ended: due
    run_id = await _recorded_run(admin_conn, tenant.id)
    topic = migrated.topics.billing_runs
    # One key for all: one partition, so the good request is read after every bad one.
    key = f"{run_id}/0".encode()
    bad = [
        ("undecodable", b"\x00not a billing run request" + os.urandom(16)),
        ("invalid_request", _request(tenant.id, "not-a-uuid")),
        ("invalid_request", _request("not-a-tenant", str(run_id))),
        ("unknown_run", _request(tenant.id, str(uuid.uuid4()))),
        ("unknown_run", _request(str(uuid.uuid4()), str(run_id))),  # another (unknown) tenant's view
        ("unknown_shard", _request(tenant.id, str(run_id), shard=1, shard_count=2)),
        ("unknown_shard", _request(tenant.id, str(run_id), shard=-1)),
    ]
    before = {reason: _dead_letter_count(reason) for reason, _ in bad}
    headers = [("x-test-origin", b"poison"), ("content-type", b"application/octet-stream")]
    await asyncio.to_thread(produce, migrated, topic, [(key, value) for _, value in bad]
                            + [(key, _request(tenant.id, str(run_id)))], headers)

    done = await _completed(stub, tenant, str(run_id))
    assert (done.subscriptions_due, done.subscriptions_billed, done.subscriptions_failed) == (1, 1, 0)
    got = await asyncio.to_thread(_dead_letters, migrated, key, len(bad))
    assert [(dict(m.headers())["dlq.reason"].decode(), m.value()) for m in got] == bad  # in order, bytes as sent
    offsets = [int(dict(m.headers())["dlq.offset"]) for m in got]
    assert offsets == list(range(offsets[0], offsets[0] + len(bad)))  # consecutive: the good one came after
    for m in got:
        h = dict(m.headers())
        assert m.key() == key
        assert m.headers()[:2] == headers  # the original headers first, unchanged
        assert h["dlq.topic"].decode() == topic and h["dlq.consumer_group"].decode() == BILLING_GROUP
        assert int(h["dlq.partition"]) >= 0 and h["dlq.detail"] and h["dlq.at"]
    details = {dict(m.headers())["dlq.reason"].decode(): dict(m.headers())["dlq.detail"].decode() for m in got}
    assert "has 1 shard(s)" in details["unknown_shard"] and "not-a-" in details["invalid_request"]

    # The dead letters are counted by reason; the good run left the subscription billed.
    for reason in set(before):
        expected = sum(1 for r, _ in bad if r == reason)
        await wait_until(lambda reason=reason, expected=expected:
                         _true(_dead_letter_count(reason) - before[reason] >= expected))
        assert _dead_letter_count(reason) - before[reason] == expected
    assert await admin_conn.fetchval("select count(*) from billed_periods where subscription_id = $1",
                                     uuid.UUID(sub.id)) == 1


async def _true(value: bool) -> bool:
    return value


async def test_a_database_outage_during_a_run_is_retried_not_dead_lettered(migrated, stub, tenant, admin_conn):
    """The executor's database is unreachable (connection refused): the consumer recorded the
    run request and committed its offset at once (a durable job), the executor retries
    until the database comes back, nothing is dead-lettered, and the run then completes."""
    plan = await _usage_plan(stub, tenant)
    await _sub_started(stub, tenant, plan, days_ago=40)
    run_id = await _recorded_run(admin_conn, tenant.id)
    topic = f"billing-run-dlq-test-{uuid.uuid4().hex[:12]}"
    admin = AdminClient({"bootstrap.servers": migrated.kafka_bootstrap_servers})
    for future in admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)]).values():
        future.result(30)

    pool = await asyncpg.create_pool(migrated.worker_database_url, min_size=1, max_size=4, init=init_connection)
    # Nothing listens there: every connection attempt of the run fails with an OSError.
    away = await asyncpg.create_pool(f"postgresql://billing_app:billing_app@127.0.0.1:{free_port()}/billing",
                                     min_size=0, max_size=2, init=init_connection)
    strategy = BillingRunStrategy()
    executor = RunExecutor(Database(away), ExecutorSettings(backoff_s=0.1, max_backoff_s=0.5, poll_s=0.05))
    group = f"billing-run-dlq-test-{uuid.uuid4().hex[:8]}"
    runner = ConsumerRunner(
        pool, ConsumerSource(consumer_config(migrated, group, **{"session.timeout.ms": 6000}), (topic,), group),
        strategy, batching=Batching(max_size=10, max_wait_s=0.05), retry=Retry(max_s=0.3),
        dead_letters=DeadLetterPolicy(migrated.topics.billing_runs_dlq, producer_config(migrated)))
    task = asyncio.create_task(runner.run())
    executing = asyncio.create_task(executor.run())
    try:
        await asyncio.to_thread(produce, migrated, topic, [(f"{run_id}/0".encode(), _request(tenant.id, str(run_id)))])
        await wait_until(lambda: _true(executor.stats.retries >= 3), timeout_s=30)
        await wait_until(lambda: _true(runner.stats.messages == 1))  # recorded and committed at once
        assert runner.stats.dead_letters == 0 and runner.stats.counters["runs"] == 1
        assert await admin_conn.fetchval("select status from billing_run_shards where run_id = $1", run_id) \
            == "pending"  # the job is durable; nothing executed, nothing lost
        status = await admin_conn.fetchval("select status from billing_runs where id = $1", run_id)
        assert status == "pending"
        assert executor.stats.executed == 0

        executor.db = Database(pool)  # the database is back
        done = await _completed(stub, tenant, str(run_id))
        assert (done.status, done.subscriptions_billed) == (pb.BILLING_RUN_STATUS_COMPLETED, 1)
        await wait_until(lambda: _true(executor.stats.executed == 1))
        assert runner.stats.dead_letters == 0 and runner.stats.messages == 1
    finally:
        runner.stop()
        executor.stop()
        await asyncio.wait_for(task, 30)
        await asyncio.wait_for(executing, 30)
        await away.close()
        await pool.close()
        admin.delete_topics([topic])
    assert await admin_conn.fetchval("select next_offset from consumer_offsets where consumer_group = $1",
                                     group) == 1
