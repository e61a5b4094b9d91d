"""SIGKILL the command consumer mid-stream, restart it: every command applied exactly once,
every event published (duplicates on the topic only ever repeat an event id)."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid

from billing import codec
from billing.devstack import free_port
from tests.e2e.test_process import _env
from tests.integration.test_subscriptions_api import make_plan
from tests.kafka_helpers import TopicReader, command, produce

SUBS = 150
STEPS = ("CreateSubscription", "PauseSubscription", "ResumeSubscription")


def _start(env: dict, log_path) -> subprocess.Popen:
    log = open(log_path, "a")
    return subprocess.Popen([sys.executable, "-m", "billing.cli", "serve", "--roles", "commands,relay"], env=env,
                            stdout=log, stderr=subprocess.STDOUT)


async def _audit_count(admin_conn, tenant_id) -> int:
    return await admin_conn.fetchval(
        "select count(*) from audit_events where tenant_id = $1 and entity_type = 'subscription'", uuid.UUID(tenant_id))


async def test_sigkill_mid_stream_applies_every_command_once(migrated, stub, tenant, admin_conn, tmp_path):
    plan = await make_plan(stub, tenant)
    subs = [str(uuid.uuid4()) for _ in range(SUBS)]
    bodies = {
        "CreateSubscription": lambda: {"customer_id": "c", "plan_id": plan.id, "activate": True, "metadata": {}},
        "PauseSubscription": lambda: {"resumes_at_us": None},
        "ResumeSubscription": lambda: {},
    }
    messages = []
    for step in STEPS:
        for sub in subs:
            value = command(tenant.id, sub, step, bodies[step]())
            messages.append((sub, value))
            if len(messages) % 10 == 0:
                messages.append((sub, value))  # the same command (same command_id) produced twice
    topic = migrated.topics.subscription_commands
    env = _env(migrated, BILLING_HTTP_PORT=str(free_port()), BILLING_LOG_LEVEL="WARNING")
    log_path = tmp_path / "consumer.log"
    expected_audit = SUBS * 4  # created, activated, paused, resumed

    kills = 0
    proc = _start(env, log_path)
    try:
        third = len(messages) // 3
        await asyncio.to_thread(produce, migrated, topic, messages[:third])
        while await _audit_count(admin_conn, tenant.id) == 0:
            await asyncio.sleep(0.05)
        await asyncio.to_thread(produce, migrated, topic, messages[third:2 * third])
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        await asyncio.to_thread(produce, migrated, topic, messages[2 * third:])
        proc = _start(env, log_path)
        await asyncio.sleep(2.5)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        proc = _start(env, log_path)
        for _ in range(1200):
            unpublished = await admin_conn.fetchval(
                "select count(*) from outbox where tenant_id = $1 and published_at is null", uuid.UUID(tenant.id))
            if await _audit_count(admin_conn, tenant.id) >= expected_audit and unpublished == 0:
                break
            await asyncio.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log_path.read_text()[-3000:]
    assert kills == 2

    # Exactly once: four audit rows per subscription, in order, and the final state.
    rows = await admin_conn.fetch(
        "select entity_id, array_agg(action order by id) as actions from audit_events where tenant_id = $1 "
        "and entity_type = 'subscription' group by entity_id", uuid.UUID(tenant.id))
    assert len(rows) == SUBS
    outbox_types = await admin_conn.fetch("select payload from outbox where tenant_id = $1", uuid.UUID(tenant.id))
    rejected = [e for e in (codec.decode(codec.Schema.SUBSCRIPTION_EVENT, r["payload"]) for r in outbox_types)
                if e["type"] == "command.rejected"]
    assert not rejected, rejected[:3]
    for r in rows:
        assert r["actions"] == ["subscription.created", "subscription.activated", "subscription.paused",
                                "subscription.resumed"], r
    statuses = await admin_conn.fetch("select status, count(*) from subscriptions where tenant_id = $1 group by 1",
                                      uuid.UUID(tenant.id))
    assert [(s["status"], s["count"]) for s in statuses] == [("active", SUBS)]

    # Every event published; the topic holds each expected event id, and nothing else.
    outbox = await admin_conn.fetch("select payload from outbox where tenant_id = $1", uuid.UUID(tenant.id))
    expected_ids = {codec.decode(codec.Schema.SUBSCRIPTION_EVENT, r["payload"])["event_id"] for r in outbox}
    assert len(expected_ids) == SUBS * 4

    def read() -> list[dict]:
        reader = TopicReader(migrated, migrated.topics.subscription_events)
        wanted = set(subs)
        try:
            msgs = reader.until(lambda ms: len({codec.decode(codec.Schema.SUBSCRIPTION_EVENT, m.value())["event_id"]
                                                for m in ms if m.key().decode() in wanted}) >= len(expected_ids),
                                timeout_s=120)
        finally:
            reader.close()
        return [codec.decode(codec.Schema.SUBSCRIPTION_EVENT, m.value()) for m in msgs if m.key().decode() in wanted]

    seen = await asyncio.to_thread(read)
    assert {e["event_id"] for e in seen} == expected_ids
    duplicates = len(seen) - len(expected_ids)
    print(f"commands={len(messages)} kills={kills} events={len(seen)} duplicates={duplicates}")
    assert os.path.exists(log_path)
