"""One batch committed: effects, dead letters and offsets in one PostgreSQL transaction."""
from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import asyncpg
from opentelemetry.trace import SpanKind

from billing.ops import tracing
from billing.store import offsets as offset_store
from consumers.batches import distinct_headers, next_offsets, topics_of
from consumers.dlq import DeadLetterProducer
from consumers.dlq_limit import DlqLimitState, dead_flags
from consumers.limits import split_too_large
from consumers.strategy import BatchResult, BatchStrategy, DeadLetter, Message, TopicPartition


class Fenced(Exception):
    """Another writer moved these partitions' stored offsets: the batch rolled back."""

    def __init__(self, partitions: set[TopicPartition]):
        super().__init__(f"stored offsets moved by another writer: {sorted(partitions)}")
        self.partitions = partitions


@dataclass(frozen=True)
class Committed:
    offsets: dict[TopicPartition, int]  # the next offsets now stored
    dead: list[DeadLetter]
    counters: dict[str, int]
    seconds: float


class BatchCommit:
    """Commits a batch. On a pooled connection (no tenant set), in ONE transaction:

      1. lock the batch's rows in `consumer_offsets` (SELECT ... FOR UPDATE) and check they
         still hold what this runner expects; otherwise raise `Fenced` before any effect;
      2. dead-letter values over the size limit, and `strategy.process(conn, rest)`: the
         effects, on that connection;
      3. judge the dead letters against the limit (`DlqLimit`): over it, raise
         `TooManyBadMessages` and commit nothing;
      4. produce the dead letters and WAIT until the broker confirmed every one;
      5. upsert the next offsets (last offset + 1 per partition), fenced again for a row
         that did not exist at step 1;
      6. commit the transaction, and only then count the batch's outcomes in the limit.

    Effects and offsets commit together, so they never diverge: a failure before 6 rolls
    both back and the batch is read again from the stored offsets. The DLQ alone is outside
    the transaction, so a batch replayed after step 4 produces its dead letters again:
    at least once, duplicates share dlq.topic/dlq.partition/dlq.offset.
    """

    def __init__(self, pool: asyncpg.Pool, group_id: str, strategy: BatchStrategy, *,
                 dlq: DeadLetterProducer | None, limit: DlqLimitState, max_message_bytes: int | None):
        self._pool = pool
        self._group = group_id
        self._strategy = strategy
        self._dlq = dlq
        self._limit = limit
        self._max_message_bytes = max_message_bytes

    async def __call__(self, batch: Sequence[Message],
                       expected: Mapping[TopicPartition, int | None]) -> Committed:
        topics = topics_of(batch)
        with tracing.tracer.start_as_current_span(
            f"process {topics}", kind=SpanKind.CONSUMER,
            links=tracing.message_links(distinct_headers(batch)),
            attributes={"messaging.system": "kafka", "messaging.destination.name": topics,
                        "messaging.consumer.group.name": self._group, "messaging.operation.type": "process",
                        "messaging.batch.message_count": len(batch)},
        ) as span:
            done = await self._commit(list(batch), expected)
            if done.dead:
                span.set_attribute("billing.dead_letters", len(done.dead))
            return done

    async def _commit(self, batch: list[Message], expected: Mapping[TopicPartition, int | None]) -> Committed:
        started = time.perf_counter()
        offsets = next_offsets(batch)
        expected = {tp: v for tp, v in expected.items() if tp in offsets}
        async with self._pool.acquire() as conn:
            async with conn.transaction():
                await self._lock(conn, offsets, expected)  # 1
                dead, result = await self._process(conn, batch)  # 2
                flags = dead_flags(batch, dead)
                if breach := self._limit.judge(flags):  # 3
                    raise self._limit.error(breach, self._group, dead)
                await self._send(dead)  # 4
                fenced = await offset_store.store(conn, self._group, offsets, expected)  # 5
                if fenced:
                    raise Fenced(fenced)
                if hasattr(conn, "reset_with_commit"):  # a TenantConnection (store/db.py): the pool's
                    conn.reset_with_commit()  # reset travels with COMMIT, no round trip on release
        self._limit.record(flags)  # 6: committed
        return Committed(offsets, dead, dict(result.counters), time.perf_counter() - started)

    async def _lock(self, conn: asyncpg.Connection, offsets: dict[TopicPartition, int],
                    expected: Mapping[TopicPartition, int | None]) -> None:
        current = await offset_store.lock(conn, self._group, offsets)
        moved = {tp for tp, value in expected.items() if current.get(tp) != value}
        if moved:
            raise Fenced(moved)

    async def _process(self, conn: asyncpg.Connection, batch: list[Message]) -> tuple[list[DeadLetter], BatchResult]:
        work, too_large = split_too_large(batch, self._max_message_bytes)
        result = (await self._strategy.process(conn, work) if work else None) or BatchResult()
        return too_large + list(result.dead_letters), result

    async def _send(self, dead: list[DeadLetter]) -> None:
        if not dead:
            return
        if self._dlq is None:
            raise RuntimeError(f"strategy dead-lettered {len(dead)} messages but consumer group "
                               f"{self._group!r} has no dlq_topic")
        await asyncio.to_thread(self._dlq.send, dead)


def reasons(dead: Sequence[DeadLetter]) -> dict[str, int]:
    return dict(Counter(d.reason for d in dead))


async def load_stored(pool: asyncpg.Pool, group_id: str,
                      partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
    """The next offsets stored for these partitions (none for a partition never committed)."""
    by_topic: dict[str, list[int]] = {}
    for topic, partition in partitions:
        by_topic.setdefault(topic, []).append(partition)
    out: dict[TopicPartition, int] = {}
    async with pool.acquire() as conn:
        for topic, parts in by_topic.items():
            for p, off in (await offset_store.load(conn, group_id, topic, parts)).items():
                out[(topic, p)] = off
    return out
