"""The batch window runs from the batch's first message (consumers/runner.py `_fill`):
messages fetched while the previous batch was being committed have waited already, so
they do not wait a whole window more (a threshold alert's lag, docs/alerts.md)."""
from __future__ import annotations

import asyncio
import time
import uuid

import asyncpg
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from billing.kafka import consumer_config, producer_config
from billing.store.db import init_connection
from consumers.runner import BatchResult, Batching, ConsumerRunner, ConsumerSource

pytestmark = pytest.mark.integration

WAIT_S = 2.0  # the batch window; the first batch takes longer than that


@pytest.fixture
async def pool(migrated):
    pool = await asyncpg.create_pool(migrated.worker_database_url, min_size=1, max_size=2, init=init_connection)
    yield pool
    await pool.close()


def new_topic(settings) -> str:
    name = f"window-test-{uuid.uuid4().hex[:12]}"
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap_servers})
    for future in admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1)]).values():
        future.result(30)
    return name


def produce(settings, topic: str, values: list[str]) -> None:
    producer = Producer(producer_config(settings))
    for value in values:
        producer.produce(topic, value=value.encode(), partition=0)
    assert producer.flush(30) == 0


class SlowFirstBatch:
    """Notes each batch's start and end; while the first one runs, more messages are
    produced and it takes longer than the window."""

    def __init__(self, settings, topic: str):
        self.settings, self.topic = settings, topic
        self.batches: list[tuple[float, float, list[str]]] = []

    async def process(self, conn, batch):
        started = time.monotonic()
        if not self.batches:
            await asyncio.to_thread(produce, self.settings, self.topic, ["during-1", "during-2"])
            await asyncio.sleep(WAIT_S + 1.0)
        self.batches.append((started, time.monotonic(), [m.value.decode() for m in batch]))
        return BatchResult()


async def test_messages_fetched_during_a_commit_do_not_wait_another_window(migrated, pool):
    topic = new_topic(migrated)
    group = f"g-{uuid.uuid4().hex[:8]}"
    produce(migrated, topic, ["first"])
    strategy = SlowFirstBatch(migrated, topic)
    cfg = consumer_config(migrated, group, **{"session.timeout.ms": 6000, "heartbeat.interval.ms": 500})
    runner = ConsumerRunner(pool, ConsumerSource(cfg, (topic,), group), strategy,
                            batching=Batching(max_size=1000, max_wait_s=WAIT_S))
    task = asyncio.create_task(runner.run())
    try:
        deadline = time.monotonic() + 30
        while sum(len(b[2]) for b in strategy.batches) < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    finally:
        runner.stop()
        await asyncio.wait_for(task, 15)

    assert [b[2] for b in strategy.batches] == [["first"], ["during-1", "during-2"]]
    (_, first_end, _), (second_start, _, _) = strategy.batches
    # Fetched during the first batch, more than a window ago: the second batch starts at
    # once (a window from the end of the first one would make this gap WAIT_S).
    assert second_start - first_end < WAIT_S / 2
