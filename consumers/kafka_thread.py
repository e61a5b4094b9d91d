"""The runner's Kafka client, touched only from one dedicated worker thread.

`consume()` blocks there while the event loop stays free. Rebalance callbacks run in that
thread, inside `consume()`: on assignment the stored offsets are read from PostgreSQL (a
coroutine run on the event loop) and the partitions are assigned at those offsets, a
partition without one at the beginning. Assignment is eager: every rebalance revokes
everything and assigns afresh. What the callbacks learn reaches the runner task as events
returned with the next poll, before that poll's messages.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Sequence

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException
from confluent_kafka import Message as KafkaMessage
from confluent_kafka import TopicPartition as KafkaTopicPartition

from consumers.limits import UndecompressableTracker, is_undecompressable, placeholder
from consumers.runner_config import ConsumerSource
from consumers.strategy import Message, RunnerStats, TopicPartition, detach

log = logging.getLogger(__name__)

# How often a partition without a cached high watermark has it asked of the broker.
_WATERMARK_QUERY_S = 10.0

Event = tuple[str, object]  # ("assign", {tp: stored}), ("revoke", {tp}), ("watermarks", {tp: (low, high)})
LoadOffsets = Callable[[Sequence[TopicPartition]], Awaitable[dict[TopicPartition, int]]]


class KafkaThread:
    def __init__(self, source: ConsumerSource, load_offsets: LoadOffsets, stats: RunnerStats, *,
                 on_assignment: Callable[[frozenset[TopicPartition]], None], lag_interval_s: float | None):
        self._source = source
        self._group = source.group_id
        self._load_offsets = load_offsets
        self._stats = stats
        self._on_assignment = on_assignment  # called on the event loop
        self._lag_interval_s = lag_interval_s  # None: no watermarks wanted
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        # Owned by the consumer thread.
        self._consumer: Consumer | None = None
        self._assignment: set[TopicPartition] = set()
        self._events: list[Event] = []
        self._undecompressable = UndecompressableTracker()
        self._watermark_queried: dict[TopicPartition, float] = {}
        self.lost_at: float | None = None  # partitions lost, no assignment since
        self.paused = False
        self.watermarks_at = 0.0  # when watermarks were last read (either side reads it)

    # ------------------------------------------------------------------ event loop side

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"consumer-{self._group}")
        await self._call(self._open)

    async def poll(self, max_messages: int, timeout_s: float) -> tuple[list[Event], list[Message]]:
        return await self._call(self._consume, max_messages, timeout_s)

    async def pause(self) -> None:
        await self._call(self._pause)

    async def resume(self) -> None:
        await self._call(self._resume)

    async def seek(self, positions: dict[TopicPartition, int | None]) -> None:
        await self._call(self._seek, positions)

    async def watermarks(self) -> dict[TopicPartition, tuple[int, int]]:
        return await self._call(self._watermarks)

    async def close(self) -> None:
        if self._executor is None:
            return
        try:
            await asyncio.shield(self._call(self._close))
        except Exception:
            log.exception("closing the consumer failed", extra={"group": self._group})
        self._executor.shutdown(wait=False)

    async def _call(self, fn, *args):
        return await self._loop.run_in_executor(self._executor, fn, *args)

    # ------------------------------------------------------------------ consumer thread

    def _open(self) -> None:
        self._consumer = Consumer(self._source.client_config())
        self._consumer.subscribe(list(self._source.topics), on_assign=self._on_assign, on_revoke=self._on_revoke,
                                 on_lost=self._on_lost)

    def _close(self) -> None:
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            consumer.close()  # leaves the group now (revokes), so the others rebalance at once

    def _consume(self, max_messages: int, timeout_s: float) -> tuple[list[Event], list[Message]]:
        if self.lost_at is not None and time.monotonic() - self.lost_at > self._source.rejoin_timeout_s:
            self._rebuild()
        fetched = self._consumer.consume(num_messages=max_messages, timeout=timeout_s)
        # The assignment is read after consume(): a rebalance callback inside it may have replaced it.
        out = detach(fetched, self._assignment, self._message)
        if self._lag_interval_s is not None and self._assignment:
            now = time.monotonic()
            if now - self.watermarks_at >= self._lag_interval_s:
                self.watermarks_at = now
                self._events.append(("watermarks", self._watermarks()))
        events, self._events = self._events, []
        return events, out

    def _message(self, msg: KafkaMessage) -> Message | None:
        """The message, a placeholder for one too large to decompress, or None (an error
        to log, or a message of a partition no longer assigned)."""
        tp = (msg.topic(), msg.partition())
        err = msg.error()
        if err is None:
            return Message.from_kafka(msg) if tp in self._assignment else None
        if err.code() == KafkaError._PARTITION_EOF:
            return None
        if is_undecompressable(err) and tp in self._assignment:
            return self._placeholder(msg, err)
        if err.fatal():
            raise KafkaException(err)
        log.warning("consumer error: %s", err, extra={"group": self._group, "topic": tp[0], "partition": tp[1]})
        return None

    def _placeholder(self, msg: KafkaMessage, err: KafkaError) -> Message:
        """librdkafka would report this batch forever: stand in for its next offset, move on."""
        offset = self._undecompressable.next_offset(msg.topic(), msg.partition(), msg.offset())
        self._consumer.seek(KafkaTopicPartition(msg.topic(), msg.partition(), offset + 1))
        return placeholder(msg.topic(), msg.partition(), offset, err.str())

    def _rebuild(self) -> None:
        """The partitions were lost (session timeout) and no assignment came back within
        `rejoin_timeout_s`: a client seen to keep polling without ever rejoining its group
        after a broker restart. A new client joins afresh; the old one is closed in the
        background (closing may hang as well) and its callbacks are ignored from now on."""
        log.error("consumer did not rejoin its group within %.0fs of losing its partitions; "
                  "recreating the Kafka client", self._source.rejoin_timeout_s, extra={"group": self._group})
        old = self._consumer
        self.lost_at = time.monotonic()  # the new client gets as long
        self.paused = False  # a held batch went with the lost partitions
        self._open()
        threading.Thread(target=old.close, name=f"close-{self._group}", daemon=True).start()

    def _watermarks(self) -> dict[TopicPartition, tuple[int, int]]:
        """(low, high) of every assigned partition as last fetched (no broker round trip).
        A partition that never returned a message may have no cached watermark: it is asked
        of the broker instead, at most every `_WATERMARK_QUERY_S` (bounded wait)."""
        out: dict[TopicPartition, tuple[int, int]] = {}
        if self._consumer is None:
            return out
        now = time.monotonic()
        for topic, partition in self._assignment:
            tp = KafkaTopicPartition(topic, partition)
            try:
                low, high = self._consumer.get_watermark_offsets(tp, cached=True)
                if high is None or high < 0:
                    if now - self._watermark_queried.get((topic, partition), 0.0) < _WATERMARK_QUERY_S:
                        continue
                    self._watermark_queried[(topic, partition)] = now
                    low, high = self._consumer.get_watermark_offsets(tp, timeout=0.5, cached=False)
            except KafkaException:
                continue
            if high is not None and high >= 0:
                out[(topic, partition)] = (low, high)
        return out

    def _pause(self) -> None:
        if parts := self._consumer.assignment():
            self._consumer.pause(parts)
        self.paused = True

    def _resume(self) -> None:
        if parts := self._consumer.assignment():
            self._consumer.resume(parts)
        self.paused = False

    def _seek(self, positions: dict[TopicPartition, int | None]) -> None:
        self._undecompressable.forget()
        for (topic, partition), offset in positions.items():
            if (topic, partition) in self._assignment:
                # Failing here would skip messages; raise instead (restart resumes from PG).
                self._consumer.seek(KafkaTopicPartition(
                    topic, partition, OFFSET_BEGINNING if offset is None else offset))

    # ---------------------------------------------------------- rebalance callbacks

    def _on_assign(self, consumer: Consumer, partitions: list) -> None:
        if consumer is not self._consumer:
            return  # a client given up by _rebuild
        self.lost_at = None
        self._undecompressable.forget()
        keys = [(tp.topic, tp.partition) for tp in partitions]
        future = asyncio.run_coroutine_threadsafe(self._load_offsets(keys), self._loop)
        try:
            stored = future.result(timeout=self._source.assign_timeout_s + 5)
        except BaseException:
            future.cancel()
            log.exception("reading stored offsets for the assignment failed", extra={"group": self._group})
            raise
        for tp in partitions:
            tp.offset = stored.get((tp.topic, tp.partition), OFFSET_BEGINNING)
        consumer.assign(partitions)
        if self.paused and partitions:
            consumer.pause(partitions)  # a backoff is under way: new partitions wait too
        self._assignment = set(keys)
        self._events.append(("assign", {k: stored.get(k) for k in keys}))
        self._loop.call_soon_threadsafe(self._on_assignment, frozenset(self._assignment))
        self._stats.rebalances += 1
        for tp in partitions:
            log.info("partition assigned, starting at %s", "beginning" if tp.offset == OFFSET_BEGINNING else tp.offset,
                     extra={"group": self._group, "topic": tp.topic, "partition": tp.partition})

    def _on_revoke(self, consumer: Consumer, partitions: list, *, lost: bool = False) -> None:
        if consumer is not self._consumer:
            return  # a client given up by _rebuild
        keys = {(tp.topic, tp.partition) for tp in partitions}
        self._assignment -= keys
        self._events.append(("revoke", keys))
        self._loop.call_soon_threadsafe(self._on_assignment, frozenset(self._assignment))
        for tp in partitions:
            log.log(logging.WARNING if lost else logging.INFO, "partition %s", "lost" if lost else "revoked",
                    extra={"group": self._group, "topic": tp.topic, "partition": tp.partition})

    def _on_lost(self, consumer: Consumer, partitions: list) -> None:
        if consumer is self._consumer:
            self.lost_at = time.monotonic()
        self._on_revoke(consumer, partitions, lost=True)
