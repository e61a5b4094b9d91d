"""The runner hands the next batch's messages to the strategy's `predecode` as they are
fetched, while the current batch commits (consumers/runner.py `_process_with_prefetch`): every
message once, in order, each run starting where the one before ended, so the next batch's
decoding is off its path to the transaction (a threshold alert's lag, docs/alerts.md). Not
under a backlog (a batch taken from a full buffer): the next one is fetched after the commit."""
from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from consumers.runner import BatchResult, Batching, ConsumerRunner, ConsumerSource
from billing.kafka import consumer_config
from tests.integration.test_consumer_batch_window import new_topic, pool, produce  # noqa: F401 - fixture

pytestmark = pytest.mark.integration


class Recording:
    """Notes what predecode was handed (per batch begun: the offsets, in calls) and each batch."""

    def __init__(self, settings, topic: str):
        self.settings, self.topic = settings, topic
        self.begun: list[list[list[int]]] = []
        self.batches: list[list[int]] = []

    def predecode(self, messages, start: int) -> None:
        if start == 0:
            self.begun.append([])
        assert self.begun and sum(map(len, self.begun[-1])) == start
        self.begun[-1].append([m.offset for m in messages])

    async def process(self, conn, batch):
        self.batches.append([m.offset for m in batch])
        if len(self.batches) < 3:  # more arrives while the first two batches commit
            n = len(self.batches)
            await asyncio.to_thread(produce, self.settings, self.topic, [f"late-{n}-{i}" for i in range(800 - 100 * n)])
        await asyncio.sleep(0.5)
        return BatchResult()


async def test_the_next_batch_is_handed_to_predecode_while_the_current_one_commits(migrated, pool):  # noqa: F811
    topic = new_topic(migrated)
    group = f"g-{uuid.uuid4().hex[:8]}"
    produce(migrated, topic, [f"early-{i}" for i in range(1000)])  # a backlog: the first batch is full
    strategy = Recording(migrated, topic)
    cfg = consumer_config(migrated, group, **{"session.timeout.ms": 6000, "heartbeat.interval.ms": 500})
    runner = ConsumerRunner(pool, ConsumerSource(cfg, (topic,), group), strategy,
                            batching=Batching(max_size=1000, max_wait_s=0.2))
    task = asyncio.create_task(runner.run())
    try:
        deadline = time.monotonic() + 30
        while sum(map(len, strategy.batches)) < 2300 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    finally:
        runner.stop()
        await asyncio.wait_for(task, 15)

    assert [len(b) for b in strategy.batches] == [1000, 700, 600]
    decoded = [o for parts in strategy.begun for part in parts for o in part]
    assert len(decoded) == len(set(decoded))  # no message handed twice
    # The first batch was taken from a full buffer: what came during it was fetched after its
    # commit. The third batch, fetched while the second committed, was handed over whole, in
    # order, in runs of at least 500 messages, before it was processed.
    assert [[o for part in parts for o in part] for parts in strategy.begun] == strategy.batches[2:]
    assert all(len(part) >= 500 for parts in strategy.begun for part in parts)
