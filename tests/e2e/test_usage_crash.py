"""SIGKILL the usage consumer again and again while a stream with duplicates flows; afterwards
the totals equal exactly the sum over the unique events."""
from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys
import uuid
from collections import defaultdict
from datetime import timezone
from decimal import Decimal

from billing import codec
from billing.devstack import free_port
from billing.services.usage import to_us
from tests.e2e.test_process import _env
from tests.integration.test_usage_ingest import _setup
from tests.kafka_helpers import produce

UNIQUE = 30_000
DUPLICATES = 6_000
SUBS = 20


def _start(env, log_path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "billing.cli", "serve", "--roles", "usage"], env=env,
                            stdout=open(log_path, "a"), stderr=subprocess.STDOUT)


async def test_sigkill_repeatedly_totals_equal_unique_sum(migrated, stub, tenant, admin_conn, tmp_path):
    rng = random.Random(7)
    subs = [(await _setup(stub, tenant))[1] for _ in range(SUBS)]
    start_us = max(to_us(s.start_at.ToDatetime(timezone.utc)) for s in subs)
    expected_sum: dict[str, Decimal] = defaultdict(Decimal)
    expected_count: dict[str, int] = defaultdict(int)
    events = []
    for i in range(UNIQUE):
        sub = rng.choice(subs)
        q = f"{rng.randint(0, 10_000)}.{rng.randint(0, 99):02d}"
        record = {"event_id": f"evt-{uuid.uuid4()}", "tenant_id": tenant.id, "subscription_id": sub.id,
                  "metric_code": "calls", "quantity": q, "occurred_at_us": start_us + i, "properties": {}}
        events.append((sub.id, codec.encode(codec.Schema.USAGE_EVENT, record)))
        expected_sum[sub.id] += Decimal(q)
        expected_count[sub.id] += 1
    stream = events + rng.sample(events, DUPLICATES)  # duplicates: the same bytes, the same event ids
    rng.shuffle(stream)  # duplicates arrive before and after their originals

    env = _env(migrated, BILLING_HTTP_PORT=str(free_port()), BILLING_LOG_LEVEL="WARNING",
               BILLING_USAGE_BATCH_SIZE="1500")
    log_path = tmp_path / "usage.log"
    topic = migrated.topics.usage
    proc = _start(env, log_path)
    kills = 0
    try:
        chunk = len(stream) // 4
        for n in range(4):
            await asyncio.to_thread(produce, migrated, topic, stream[n * chunk:(n + 1) * chunk if n < 3 else None])
            await asyncio.sleep(rng.uniform(1.5, 4.0))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            proc = _start(env, log_path)
        for _ in range(900):
            count = await admin_conn.fetchval("select count(*) from usage_events where tenant_id = $1",
                                              uuid.UUID(tenant.id))
            if count >= UNIQUE:
                break
            await asyncio.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log_path.read_text()[-3000:]

    rows = await admin_conn.fetch(
        "select subscription_id::text as sub, sum(quantity_sum) as total, sum(event_count) as n from usage_totals "
        "where tenant_id = $1 group by 1", uuid.UUID(tenant.id))
    got_sum = {r["sub"]: r["total"] for r in rows}
    got_count = {r["sub"]: r["n"] for r in rows}
    assert got_sum == dict(expected_sum)
    assert got_count == dict(expected_count)
    # The raw events agree with the totals: recomputation from the raw events gives the same.
    raw = await admin_conn.fetch("select subscription_id::text as sub, sum(quantity) as total from usage_events "
                                 "where tenant_id = $1 group by 1", uuid.UUID(tenant.id))
    assert {r["sub"]: r["total"] for r in raw} == dict(expected_sum)
    print(f"events={len(stream)} unique={UNIQUE} duplicates={DUPLICATES} kills={kills}")
