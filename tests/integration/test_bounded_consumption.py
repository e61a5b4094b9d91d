"""Bounded consumption through the real broker: a 200 MiB usage message compressed to under
a megabyte (lz4, as an attacker would send it) is dead-lettered as `too_large` without the
consumer's memory following it, a 2 MiB one likewise by the size limit, and the good events
around them are stored.

The usage topic is created with compression.type=zstd (billing.kafka_topics), so the broker
recompresses the lz4 batch into zstd, and librdkafka refuses to decompress a zstd batch past
receive.message.max.bytes (BILLING_KAFKA_FETCH_MAX_BYTES + 512): it never holds the 200 MiB.
The bound asserted is stated in RSS_BOUND below (docs/kafka.md, "Bounded consumption").
"""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import uuid
from datetime import timedelta, timezone
from decimal import Decimal

import psutil
import pytest

from billing.config import Topics
from confluent_kafka import Producer

from billing.kafka import producer_config
from billing.kafka_topics import sync
from billing.runtime import usage_consumer
from tests.integration.test_usage_ingest import _setup
from tests.kafka_helpers import TopicReader, produce

pytestmark = pytest.mark.timeout(300)

MiB = 1024 * 1024
HUGE = 200 * MiB
# The consumer process may grow by at most this much while it meets the 200 MiB message:
# librdkafka's zstd output buffer stops at receive.message.max.bytes (16 MiB by default),
# plus slack for the allocator and the batch in flight.
RSS_BOUND = 64 * MiB

# Produced from a process of its own, so building the 200 MiB value costs the consumer's
# process nothing.
_PRODUCE_HUGE = """
import json, sys
from confluent_kafka import Producer
bootstrap, topic, key, head = sys.argv[1:5]
value = head.encode()[:-2] + b', "junk": "' + b"x" * {huge} + b'"}}}}'
json.loads(value)  # a well-formed CloudEvent, quantity and all: only its size is wrong
p = Producer({{"bootstrap.servers": bootstrap, "compression.type": "lz4", "message.max.bytes": 400 * 1024 * 1024,
              "batch.size": 400 * 1024 * 1024, "enable.idempotence": True, "acks": "all"}})
p.produce(topic, key=key, value=value)
assert p.flush(120) == 0
"""


def cloudevent(tenant_id: str, sub_id: str, quantity: str, at, **data) -> bytes:
    return json.dumps({"specversion": "1.0", "id": str(uuid.uuid4()), "source": "meter/test", "type": "usage",
                       "time": at.isoformat().replace("+00:00", "Z"), "subject": sub_id, "tenantid": tenant_id,
                       "data": {"metric": "calls", "quantity": quantity, **data}}).encode()


class PeakRss:
    """The process's resident set size, sampled every 5 ms in a thread."""

    def __init__(self) -> None:
        self.proc = psutil.Process()
        self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __enter__(self) -> "PeakRss":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


async def test_huge_compressed_message_is_dead_lettered_within_the_memory_bound(migrated, stub, tenant, admin_conn):
    tag = uuid.uuid4().hex[:8]
    topics = Topics(**{key: f"test.bounded.{tag}.{key}" for key in Topics.model_fields})
    settings = migrated.model_copy(update={"topics": topics})
    assert sync(settings).ok
    _, sub = await _setup(stub, tenant)
    at = sub.start_at.ToDatetime(timezone.utc) + timedelta(seconds=5)
    key = sub.id.encode()

    from billing.store.db import Database

    db = await Database.connect(settings.worker_database_url, min_size=1, max_size=2)
    group = f"test-bounded-{tag}"
    runner = usage_consumer(settings, db.pool, group_id=group, max_batch_wait_s=0.05)
    task = asyncio.create_task(runner.run())
    try:
        await asyncio.wait_for(runner.assigned.wait(), 60)
        await asyncio.to_thread(produce, settings, topics.usage, [(key, cloudevent(tenant.id, sub.id, "1", at))])
        await _until(lambda: _total(admin_conn, sub.id), Decimal("1"))
        baseline = psutil.Process().memory_info().rss
        with PeakRss() as rss:
            head = cloudevent(tenant.id, sub.id, "1000000", at).decode()
            proc = await asyncio.to_thread(subprocess.run, [
                sys.executable, "-c", _PRODUCE_HUGE.format(huge=HUGE), settings.kafka_bootstrap_servers,
                topics.usage, sub.id, head], capture_output=True, text=True, timeout=180)
            assert proc.returncode == 0, proc.stderr[-2000:]
            # Separate produce calls: separate batches (a batch is dead-lettered as a whole).
            mid = cloudevent(tenant.id, sub.id, "1000", at, junk="y" * (2 * MiB))
            for value in (cloudevent(tenant.id, sub.id, "2", at), mid, cloudevent(tenant.id, sub.id, "4", at)):
                await asyncio.to_thread(_produce, settings, topics.usage, key, value)
            await _until(lambda: _total(admin_conn, sub.id), Decimal("7"))
            dead = await asyncio.to_thread(_dead_letters, settings, topics.usage_dlq, 2)
        growth = rss.peak - baseline
        assert growth < RSS_BOUND, f"consumer RSS grew by {growth / MiB:.0f} MiB (bound {RSS_BOUND // MiB} MiB)"

        print(f"consumer RSS growth while meeting the 200 MiB message: {growth / MiB:.1f} MiB")
        # By source offset (the placeholder has no key, so the two may be on different DLQ partitions).
        by_offset = {int(dict(m.headers())["dlq.offset"]): m for m in dead}
        assert sorted(by_offset) == [1, 3]
        assert [dict(m.headers())["dlq.reason"] for m in by_offset.values()] == [b"too_large", b"too_large"]
        huge, big = by_offset[1], by_offset[3]
        assert huge.value() is None and huge.key() is None
        assert b"receive.message.max.bytes" in dict(huge.headers())["dlq.detail"]
        assert big.value() == mid and big.key() == key
        assert b"exceeds the limit of 1048576" in dict(big.headers())["dlq.detail"]
        # Only the three good events count: neither quantity of the two large ones.
        row = await admin_conn.fetchrow("select quantity_sum, event_count from usage_totals "
                                        "where subscription_id = $1", uuid.UUID(sub.id))
        assert (row["quantity_sum"], row["event_count"]) == (Decimal("7"), 3)
        assert runner.stats.counters["received"] == 3
    finally:
        runner.stop()
        await asyncio.wait_for(task, 60)
        await db.close()


async def _total(conn, sub_id: str):
    return await conn.fetchval("select quantity_sum from usage_totals where subscription_id = $1", uuid.UUID(sub_id))


async def _until(get, wanted, timeout_s: float = 120.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while (got := await get()) != wanted:
        assert asyncio.get_running_loop().time() < deadline, f"still {got}, wanted {wanted}"
        await asyncio.sleep(0.1)


def _produce(settings, topic: str, key: bytes, value: bytes) -> None:
    producer = Producer(producer_config(settings, **{"message.max.bytes": 8 * MiB}))
    producer.produce(topic, key=key, value=value)
    assert producer.flush(30) == 0


def _dead_letters(settings, topic: str, count: int) -> list:
    reader = TopicReader(settings, topic)
    try:
        return list(reader.until(lambda ms: len(ms) >= count, 120))
    finally:
        reader.close()
