"""The one Kafka consumer runner the command, usage and billing consumers share.

A consumer is a `BatchStrategy`: one coroutine that gets a PostgreSQL connection inside
an open transaction and a batch of `Message`s, does its effects on that connection and
returns a `BatchResult` naming the messages it gives up on (dead letters). Everything
else (fetching, batching, offsets, dead letters, backoff, rebalances, shutdown) is here.

Commit order of every batch
---------------------------
The runner opens ONE transaction on a pooled connection (no tenant set) and then:

  0. locks the batch's rows in `consumer_offsets` (SELECT ... FOR UPDATE) and checks
     they still hold what this runner expects (see fencing below);
  1. `strategy.process(conn, batch)`: the effects, in that transaction;
  2. produces the dead letters to the DLQ topic and WAITS until the broker confirmed
     every one of them (idempotent producer, acks=all);
  3. upserts the next offsets (last offset + 1 per partition of the batch) into
     `consumer_offsets` for (group, topic, partition), in the same transaction;
  4. commits the transaction.

Effects and offsets commit atomically, so they never diverge: a crash or error anywhere
before (4) rolls both back and the batch is read again from the stored offsets (by this
runner after a retry, or by whichever consumer owns the partition next). Only the DLQ is
outside the transaction: a batch that dead-lettered and then failed before (4) produces
its dead letters again when it is replayed, so the DLQ is at-least-once and may hold
duplicates (same dlq.topic/dlq.partition/dlq.offset); deduplicate on those if needed.
Kafka's own offset commit is never used (enable.auto.commit and auto offset store are
forced off): offsets live only in PostgreSQL.

Offsets are fenced: a partition's row must still hold the value this runner read at
assignment (or stored itself), checked under a row lock before processing (0) and again
by the upsert (3), for a row that did not exist yet at (0). If another consumer of the
group stored an offset in between (a zombie that overran max.poll.interval.ms, an
operator's reset, or our own commit whose acknowledgement was lost with the connection),
the batch rolls back before any effect and the runner re-reads the stored offset and
seeks there. So no batch is ever applied twice, even across a rebalance.

Threads and rebalances
----------------------
The confluent-kafka consumer is only ever touched from one dedicated worker thread;
`consume()` blocks there while the event loop stays free. The rebalance callbacks run in
that thread, inside `consume()`. On assignment the stored offsets are read from
PostgreSQL (a coroutine run on the event loop with `run_coroutine_threadsafe`) and the
partitions are assigned at those offsets; a partition without a stored offset starts at
the beginning. Assignment is eager (range/roundrobin; cooperative-sticky is refused):
every rebalance revokes everything and assigns afresh.

While a batch is processed, the runner task keeps fetching the next one through the
consumer thread, so the fetch and the database round trip overlap. A rebalance can
therefore arrive mid-batch; fencing keeps that safe: the offset rows are locked before any
effect, so of two owners of a partition one commits and the other is fenced before it
applies anything. Messages of revoked partitions that were fetched but not committed are
simply dropped (their offsets were never stored, so the new owner reads them again).

Batching, backpressure, retries
-------------------------------
A batch is up to `max_batch_size` messages or what arrived within `max_batch_wait_s`.
`Backpressure` (raised by a strategy: "not now") and transient database or DLQ errors
(lost connection, too many connections, serialization failure, deadlock, ...) are never
dead-lettered: the transaction rolls back, all assigned partitions are paused, and the
same batch is retried after an exponential backoff (0.1 s doubling up to 5 s) during
which the consumer keeps polling, so heartbeats and rebalances are served. Partitions
revoked meanwhile are dropped from the held batch. Once a retry commits, the partitions
are resumed. Any other exception from a strategy is a bug: the batch rolls back and
`run()` raises it (restart replays the batch from the stored offsets).

Dead letters are limited: when more than `max_bad_share` of the last `bad_window`
messages (at least `bad_min_sample` of them) would be dead-lettered, `run()` raises
`TooManyBadMessages` without committing that batch.

Observability
-------------
Every commit attempt is one span (`process <topic>`, kind CONSUMER) linking to the trace
contexts (`traceparent` headers) of up to 100 messages of the batch; the strategy's work runs
inside it, and strategies that handle messages one by one open a child span per message that
continues the message's own trace (tracing.start_message_span). `observer` (a RunnerObserver,
billing.ops.metrics.ConsumerMetrics in the service) hears of every committed batch (messages,
dead letters by reason, the strategy's counters, seconds) and of the lag of every assigned
partition: its high watermark (as last fetched) minus the next offset stored in PostgreSQL,
refreshed after each commit and at least every `lag_interval_s`.

Shutdown: `stop()` lets the batch in hand finish and commit (a batch waiting in backoff
is abandoned, to be replayed by the next owner), then closes the consumer so the group
rebalances at once, and `run()` returns.
"""
from __future__ import annotations

from typing import NamedTuple

import asyncio
import concurrent.futures
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import asyncpg
from confluent_kafka import OFFSET_BEGINNING, TIMESTAMP_NOT_AVAILABLE, Consumer, KafkaError, KafkaException
from confluent_kafka import Message as KafkaMessage
from confluent_kafka import TopicPartition as KafkaTopicPartition
from opentelemetry.trace import SpanKind

from billing.ops import tracing

from billing.store import offsets as offset_store
from consumers.limits import UndecompressableTracker, is_undecompressable, placeholder, split_too_large
from consumers.dlq import (
    BadShareWindow,
    DeadLetterDeliveryError,
    DeadLetterProducer,
    TooManyBadMessages,
)

__all__ = [
    "Backpressure", "BatchResult", "BatchStrategy", "ConsumerRunner", "DeadLetter", "Message",
    "RunnerObserver", "RunnerStats", "TooManyBadMessages", "DeadLetterDeliveryError",
]

log = logging.getLogger(__name__)

TopicPartition = tuple[str, int]


# ---------------------------------------------------------------------------- the interface

class Message(NamedTuple):
    """One Kafka record, detached from the client. A NamedTuple, not a frozen dataclass:
    it is built for every message, and this is ten times cheaper (0.3 vs 3 us)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]  # last value wins when a header repeats; see header_list
    timestamp_ms: int | None
    # The headers exactly as received (order, repeats, null values); the DLQ copies these.
    header_list: tuple[tuple[str, bytes | None], ...] = ()

    @classmethod
    def from_kafka(cls, msg: KafkaMessage) -> "Message":
        raw = msg.headers()
        raw = tuple(raw) if raw else ()
        ts_type, ts = msg.timestamp()
        return cls(msg.topic(), msg.partition(), msg.offset(), msg.key(), msg.value(),
                   {k: v for k, v in raw if v is not None} if raw else {},
                   None if ts_type == TIMESTAMP_NOT_AVAILABLE else ts, raw)

    @property
    def tp(self) -> TopicPartition:
        return self.topic, self.partition


@dataclass(frozen=True, slots=True)
class DeadLetter:
    message: Message
    reason: str  # short machine-readable code, e.g. "undecodable", "unknown_schema"
    detail: str = ""  # free text for a human


@dataclass
class BatchResult:
    dead_letters: list[DeadLetter] = field(default_factory=list)
    # Free-form counts a strategy wants summed up (e.g. {"duplicates": 3}); see RunnerStats.
    counters: dict[str, int] = field(default_factory=dict)


@runtime_checkable
class BatchStrategy(Protocol):
    async def process(self, conn: asyncpg.Connection, batch: list[Message]) -> BatchResult: ...


class RunnerObserver(Protocol):
    """What the runner reports for metrics (billing.ops.metrics.ConsumerMetrics)."""

    def batch(self, messages: int, dead_letters: dict[str, int], counters: dict[str, int],
              seconds: float) -> None: ...

    def lag(self, topic: str, partition: int, messages: int) -> None: ...

    def forget(self, topic: str, partition: int) -> None: ...


class Backpressure(Exception):
    """Raised by a strategy (or anything under it): "not now, retry this batch later".

    The batch rolls back and is retried as is after a backoff; `retry_after_s`, when
    given, is the least time to wait.
    """

    def __init__(self, message: str = "backpressure", *, retry_after_s: float | None = None):
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass
class RunnerStats:
    batches: int = 0  # committed batches
    messages: int = 0  # messages whose offsets were committed (dead letters included)
    dead_letters: int = 0
    retries: int = 0  # failed attempts that were retried (backpressure, transient errors)
    pauses: int = 0  # times the assigned partitions were paused for a backoff
    fenced: int = 0  # batches rolled back because another writer moved the stored offsets
    rebalances: int = 0  # assignments received
    counters: Counter = field(default_factory=Counter)  # summed BatchResult.counters


# ------------------------------------------------------------------------------ internals

_RETRIABLE: tuple[type[BaseException], ...] = (
    Backpressure,
    DeadLetterDeliveryError,
    OSError,  # includes ConnectionError and TimeoutError (asyncio's too)
    asyncpg.PostgresConnectionError,  # class 08, includes ConnectionDoesNotExistError
    asyncpg.InterfaceError,  # client-side: connection closed or being released
    asyncpg.TooManyConnectionsError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.SerializationError,
    asyncpg.DeadlockDetectedError,
    asyncpg.LockNotAvailableError,
)


def is_retriable(exc: BaseException) -> bool:
    return isinstance(exc, _RETRIABLE)


# How often a partition without a cached high watermark has it asked of the broker.
_WATERMARK_QUERY_S = 10.0


class _Fenced(Exception):
    def __init__(self, partitions: set[TopicPartition]):
        super().__init__(f"stored offsets moved by another writer: {sorted(partitions)}")
        self.partitions = partitions


class _Abandoned(Exception):
    """The held batch was given up (stop requested during backoff)."""


class ConsumerRunner:
    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        kafka_config: dict,
        topics: Sequence[str],
        group_id: str,
        strategy: BatchStrategy,
        dlq_topic: str | None = None,
        producer_config: dict | None = None,
        max_batch_size: int = 5000,
        max_batch_wait_s: float = 0.2,
        max_bad_share: float = 0.5,
        bad_window: int = 1000,
        bad_min_sample: int = 100,
        backoff_initial_s: float = 0.1,
        backoff_max_s: float = 5.0,
        dlq_timeout_s: float = 30.0,
        assign_timeout_s: float = 60.0,
        rejoin_timeout_s: float = 60.0,
        on_batch: Callable[[int, int, float], None] | None = None,
        observer: RunnerObserver | None = None,
        lag_interval_s: float = 1.0,
        max_message_bytes: int | None = None,
    ):
        if not topics:
            raise ValueError("topics must not be empty")
        if max_batch_size < 1 or max_batch_wait_s <= 0:
            raise ValueError("max_batch_size must be >= 1 and max_batch_wait_s > 0")
        if dlq_topic and producer_config is None:
            raise ValueError("dlq_topic needs a producer_config (billing.kafka.producer_config)")
        if dlq_topic in topics:
            raise ValueError("dlq_topic must not be one of the consumed topics")
        cfg = dict(kafka_config)
        if cfg.get("group.id", group_id) != group_id:
            raise ValueError(f"kafka_config group.id {cfg['group.id']!r} != group_id {group_id!r}")
        if "cooperative" in str(cfg.get("partition.assignment.strategy", "")):
            raise ValueError("the runner supports eager assignment only (range/roundrobin)")
        cfg.update({"group.id": group_id, "enable.auto.commit": False, "enable.auto.offset.store": False})
        self._kafka_config = cfg
        self._pool = pool
        self._topics = list(topics)
        self.group_id = group_id
        self._strategy = strategy
        self._dlq_topic = dlq_topic
        self._producer_config = producer_config
        self._max_batch_size = max_batch_size
        self._max_batch_wait_s = max_batch_wait_s
        self._window = BadShareWindow(bad_window, max_bad_share, bad_min_sample)
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._dlq_timeout_s = dlq_timeout_s
        self._assign_timeout_s = assign_timeout_s
        self._rejoin_timeout_s = rejoin_timeout_s
        self._lost_at: float | None = None  # consumer thread: partitions lost, no assignment since
        self._on_batch = on_batch
        self._observer = observer
        self._lag_interval_s = lag_interval_s
        # Larger values, and batches librdkafka would not decompress, are dead-lettered as
        # too_large before the strategy sees them (consumers/limits.py).
        self._max_message_bytes = max_message_bytes
        self._undecompressable = UndecompressableTracker()  # consumer thread
        self._watermarks_at = 0.0  # consumer thread: when watermarks were last read
        self._watermark_queried: dict[TopicPartition, float] = {}  # consumer thread: last broker query
        self._high: dict[TopicPartition, tuple[int, int]] = {}  # runner task: (low, high) as last fetched

        self.stats = RunnerStats()
        # Set while at least one partition is assigned (tests and readiness wait on it).
        self.assigned = asyncio.Event()
        self._assignment_view: frozenset[TopicPartition] = frozenset()

        self._stopping = False
        self._started = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._dlq: DeadLetterProducer | None = None

        # Owned by the consumer thread (callbacks and _consume_sync).
        self._consumer: Consumer | None = None
        self._assignment: set[TopicPartition] = set()
        self._paused = False
        self._events: list[tuple[str, object]] = []

        # Owned by the runner task.
        self._buffer: list[Message] = []  # fetched, not yet in a batch
        self._expected: dict[TopicPartition, int | None] = {}  # stored next offset per owned partition

    # ------------------------------------------------------------------------ public

    @property
    def assignment(self) -> frozenset[TopicPartition]:
        """The (topic, partition) pairs currently assigned to this runner."""
        return self._assignment_view

    def stop(self) -> None:
        """Finish the batch in hand, commit it, close the consumer; `run()` then returns.
        Safe to call from a signal handler and more than once."""
        self._stopping = True

    async def run(self) -> None:
        if self._started:
            raise RuntimeError("a ConsumerRunner runs once; create a new one")
        self._started = True
        self._loop = asyncio.get_running_loop()
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"consumer-{self.group_id}")
        try:
            if self._dlq_topic:
                self._dlq = DeadLetterProducer(self._producer_config, self._dlq_topic, self.group_id,
                                               timeout_s=self._dlq_timeout_s)
            await self._in_consumer_thread(self._open_sync)
            log.info("consumer started", extra={"group": self.group_id, "topic": ",".join(self._topics)})
            while not self._stopping:
                await self._fill()
                if self._buffer:
                    await self._process_with_prefetch()
        except Exception as exc:
            log.error("consumer failed: %s: %s", type(exc).__name__, exc,
                      extra={"group": self.group_id, "topic": ",".join(self._topics)})
            raise
        finally:
            await self._shutdown()

    # ------------------------------------------------------------------ runner task

    async def _fill(self) -> None:
        deadline = time.monotonic() + self._max_batch_wait_s
        while len(self._buffer) < self._max_batch_size and not self._stopping:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            await self._poll(self._max_batch_size - len(self._buffer), remaining)

    async def _poll(self, max_messages: int, timeout_s: float) -> None:
        events, messages = await self._in_consumer_thread(self._consume_sync, max_messages, timeout_s)
        self._apply_events(events)
        self._buffer.extend(messages)

    def _apply_events(self, events: list[tuple[str, object]]) -> None:
        # Callback events come before the messages of the same consume() call: librdkafka
        # drops fetched messages of an outdated assignment itself, and _consume_sync keeps
        # only messages of partitions assigned when it returned.
        for kind, data in events:
            if kind == "revoke":
                gone = data  # set of TopicPartition
                self._buffer = [m for m in self._buffer if m.tp not in gone]
                for tp in gone:
                    self._expected.pop(tp, None)
                    self._high.pop(tp, None)
                    if self._observer is not None:
                        self._observer.forget(*tp)
            elif kind == "assign":
                self._expected.update(data)  # type: ignore[arg-type]
            elif kind == "watermarks":
                self._high.update(data)  # type: ignore[arg-type]
                self._report_lag(data)  # type: ignore[arg-type]

    async def _refresh_lag(self) -> None:
        """Watermarks between batches too: while a backlog is worked off the buffer stays full,
        so the consumer thread is not polled and would not read them (see _consume_sync)."""
        if self._observer is None or time.monotonic() - self._watermarks_at < self._lag_interval_s:
            return
        self._watermarks_at = time.monotonic()
        data = await self._in_consumer_thread(self._watermarks_sync)
        self._high.update(data)
        self._report_lag(data)

    def _report_lag(self, partitions) -> None:
        if self._observer is None:
            return
        for tp in partitions:
            if tp not in self._expected or tp not in self._high:
                continue
            low, high = self._high[tp]
            position = self._expected[tp]
            if position is None:  # nothing stored yet: the whole retained log is ahead
                position = max(low, 0)
            try:
                self._observer.lag(tp[0], tp[1], high - position)
            except Exception:
                log.exception("observer failed", extra={"group": self.group_id})

    async def _process_with_prefetch(self) -> None:
        """Process a batch while the consumer thread fetches the next one, so the database
        round trip and the fetch overlap. Safe across rebalances thanks to fencing: a batch
        whose partition moved meanwhile either commits first (the new owner is then fenced
        and seeks past it) or is fenced itself, before any effect."""
        busy = asyncio.ensure_future(self._process_next_batch())
        try:
            while not busy.done() and not self._stopping and not self._paused \
                    and len(self._buffer) < self._max_batch_size:
                await self._poll(self._max_batch_size - len(self._buffer), 0.02)
                await asyncio.sleep(0)
        finally:
            await busy

    async def _process_next_batch(self) -> None:
        batch = self._buffer[:self._max_batch_size]
        del self._buffer[:len(batch)]
        attempt = 0
        try:
            while batch:
                try:
                    await self._commit(batch)
                    await self._refresh_lag()
                    return
                except _Fenced as exc:
                    # The other partitions of the batch were not the problem: they go back
                    # to the front of the buffer, in order, for the next batch.
                    self._buffer[:0] = [m for m in batch if m.tp not in exc.partitions]
                    if self._paused:  # seek on running partitions only
                        await self._in_consumer_thread(self._resume_sync)
                    await self._resync(exc.partitions)
                    return
                except Exception as exc:
                    if not is_retriable(exc):
                        raise
                    attempt += 1
                    self.stats.retries += 1
                    delay = min(self._backoff_max_s, self._backoff_initial_s * 2 ** (attempt - 1))
                    delay *= random.uniform(0.8, 1.0)
                    if isinstance(exc, Backpressure) and exc.retry_after_s:
                        delay = max(delay, exc.retry_after_s)
                    log.warning("batch not committed (%s: %s); retry %d in %.2fs with partitions paused",
                                type(exc).__name__, exc, attempt, delay,
                                extra={"group": self.group_id, "topic": _topics_of(batch), "retry": attempt},
                                exc_info=not isinstance(exc, Backpressure))
                    batch = await self._backoff(delay, batch)
        except _Abandoned:
            log.info("stopping during backoff: %d uncommitted messages left for the next owner", len(batch),
                     extra={"group": self.group_id})
        finally:
            if self._paused:
                await self._in_consumer_thread(self._resume_sync)

    async def _backoff(self, delay_s: float, batch: list[Message]) -> list[Message]:
        """Wait with every assigned partition paused, serving rebalances; return the held
        batch minus messages of partitions revoked meanwhile."""
        if not self._paused:
            await self._in_consumer_thread(self._pause_sync)
            self.stats.pauses += 1
        deadline = time.monotonic() + delay_s
        while True:
            if self._stopping:
                raise _Abandoned()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            events, messages = await self._in_consumer_thread(self._consume_sync, 1000, min(remaining, 0.1))
            gone: set[TopicPartition] = set()
            for kind, data in events:
                if kind == "revoke":
                    gone |= data  # type: ignore[operator]
            if gone:
                before = len(batch)
                batch = [m for m in batch if m.tp not in gone]
                if len(batch) != before:
                    log.info("dropped %d held messages of revoked partitions", before - len(batch),
                             extra={"group": self.group_id})
            self._apply_events(events)
            # Paused partitions return nothing new; whatever was already on its way is kept
            # in order behind the held batch.
            self._buffer.extend(messages)
        return batch

    async def _commit(self, batch: list[Message]) -> None:
        topics = _topics_of(batch)
        with tracing.tracer.start_as_current_span(
            f"process {topics}", kind=SpanKind.CONSUMER,
            links=tracing.message_links(m.headers for m in batch),
            attributes={"messaging.system": "kafka", "messaging.destination.name": topics,
                        "messaging.consumer.group.name": self.group_id, "messaging.operation.type": "process",
                        "messaging.batch.message_count": len(batch)},
        ) as span:
            dead = await self._commit_in_span(batch)
            if dead:
                span.set_attribute("billing.dead_letters", dead)

    async def _commit_in_span(self, batch: list[Message]) -> int:
        started = time.perf_counter()
        next_offsets: dict[TopicPartition, int] = {}
        for m in batch:
            if m.offset + 1 > next_offsets.get(m.tp, -1):
                next_offsets[m.tp] = m.offset + 1
        expected = {tp: self._expected[tp] for tp in next_offsets if tp in self._expected}

        async with self._pool.acquire() as conn:
            async with conn.transaction():
                # (0) lock this batch's offset rows and check nobody moved them
                current = await offset_store.lock(conn, self.group_id, next_offsets)
                moved = {tp for tp, value in expected.items() if current.get(tp) != value}
                if moved:
                    raise _Fenced(moved)
                work, too_large = split_too_large(batch, self._max_message_bytes)
                result = await self._strategy.process(conn, work) if work else None  # (1)
                if result is None:
                    result = BatchResult()
                dead = too_large + list(result.dead_letters)
                flags = self._dead_flags(batch, dead)
                over, bad, sample = self._window.exceeded(flags)
                if over:
                    raise TooManyBadMessages(group=self.group_id, bad=bad, sample=sample,
                                             limit=self._window.max_bad_share,
                                             reasons=dict(Counter(d.reason for d in dead)))
                if dead:  # (2)
                    if self._dlq is None:
                        raise RuntimeError(f"strategy dead-lettered {len(dead)} messages but consumer group "
                                           f"{self.group_id!r} has no dlq_topic")
                    await asyncio.to_thread(self._dlq.send, dead)
                # (3) checked again: a row that did not exist at (0) may have been inserted since
                fenced = await offset_store.store(conn, self.group_id, next_offsets, expected)
                if fenced:
                    raise _Fenced(fenced)
            # (4) committed
        seconds = time.perf_counter() - started

        self._window.record(flags)
        self._expected.update(next_offsets)
        self.stats.batches += 1
        self.stats.messages += len(batch)
        self.stats.dead_letters += len(dead)
        self.stats.counters.update(result.counters)
        for d in dead:
            log.warning("dead-lettered: %s", d.reason, extra={
                "group": self.group_id, "topic": d.message.topic, "partition": d.message.partition,
                "offset": d.message.offset, "reason": d.reason, "detail": d.detail[:500]})
        log.debug("batch committed: %d messages, %d dead letters, %.3fs", len(batch), len(dead), seconds,
                  extra={"group": self.group_id, "topic": _topics_of(batch)})
        if self._on_batch is not None:
            try:
                self._on_batch(len(batch), len(dead), seconds)
            except Exception:
                log.exception("on_batch callback failed", extra={"group": self.group_id})
        if self._observer is not None:
            try:
                self._observer.batch(len(batch), dict(Counter(d.reason for d in dead)), dict(result.counters), seconds)
            except Exception:
                log.exception("observer failed", extra={"group": self.group_id})
            self._report_lag(next_offsets)
        return len(dead)

    @staticmethod
    def _dead_flags(batch: list[Message], dead: list[DeadLetter]) -> list[bool]:
        index = {(m.topic, m.partition, m.offset): i for i, m in enumerate(batch)}
        flags = [False] * len(batch)
        for d in dead:
            i = index.get((d.message.topic, d.message.partition, d.message.offset))
            if i is None:
                raise ValueError(f"dead letter for a message not in the batch: {d.message!r}")
            flags[i] = True
        return flags

    async def _resync(self, partitions: set[TopicPartition]) -> None:
        """Another writer moved these partitions' stored offsets: drop what we fetched of
        them and continue from the stored offsets."""
        self.stats.fenced += 1
        self._buffer = [m for m in self._buffer if m.tp not in partitions]
        stored = await self._load_offsets(sorted(partitions))
        for tp in partitions:
            log.warning("stored offset moved by another writer; seeking to %s", stored.get(tp, "beginning"),
                        extra={"group": self.group_id, "topic": tp[0], "partition": tp[1]})
            self._expected[tp] = stored.get(tp)
        await self._in_consumer_thread(self._seek_sync, {tp: stored.get(tp) for tp in partitions})

    async def _load_offsets(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        by_topic: dict[str, list[int]] = {}
        for topic, partition in partitions:
            by_topic.setdefault(topic, []).append(partition)
        deadline = time.monotonic() + self._assign_timeout_s
        attempt = 0
        while True:
            try:
                out: dict[TopicPartition, int] = {}
                async with self._pool.acquire() as conn:
                    for topic, parts in by_topic.items():
                        for p, off in (await offset_store.load(conn, self.group_id, topic, parts)).items():
                            out[(topic, p)] = off
                return out
            except Exception as exc:
                attempt += 1
                if not is_retriable(exc) or time.monotonic() > deadline or self._stopping:
                    raise
                delay = min(self._backoff_max_s, self._backoff_initial_s * 2 ** (attempt - 1))
                log.warning("reading stored offsets failed (%s); retry in %.2fs", exc, delay,
                            extra={"group": self.group_id})
                await asyncio.sleep(delay)

    async def _in_consumer_thread(self, fn, *args):
        return await self._loop.run_in_executor(self._executor, fn, *args)

    def _set_assignment_view(self, view: frozenset[TopicPartition]) -> None:
        self._assignment_view = view
        if view:
            self.assigned.set()
        else:
            self.assigned.clear()

    async def _shutdown(self) -> None:
        if self._executor is not None:
            try:
                await asyncio.shield(self._in_consumer_thread(self._close_sync))
            except Exception:
                log.exception("closing the consumer failed", extra={"group": self.group_id})
            self._executor.shutdown(wait=False)
        if self._dlq is not None:
            await asyncio.to_thread(self._dlq.close)
        self._set_assignment_view(frozenset())
        self._buffer.clear()
        if self._observer is not None:
            for tp in list(self._expected):
                self._observer.forget(*tp)
        log.info("consumer stopped", extra={"group": self.group_id, "topic": ",".join(self._topics)})

    # --------------------------------------------------------------- consumer thread

    def _open_sync(self) -> None:
        self._consumer = Consumer(self._kafka_config)
        self._consumer.subscribe(self._topics, on_assign=self._on_assign, on_revoke=self._on_revoke,
                                 on_lost=self._on_lost)

    def _close_sync(self) -> None:
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            consumer.close()  # leaves the group now (revokes), so the others rebalance at once

    def _consume_sync(self, max_messages: int, timeout_s: float) -> tuple[list, list[Message]]:
        if self._lost_at is not None and time.monotonic() - self._lost_at > self._rejoin_timeout_s:
            self._rebuild_sync()
        raw = self._consumer.consume(num_messages=max_messages, timeout=timeout_s)
        out: list[Message] = []
        for msg in raw:
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                if is_undecompressable(err) and (msg.topic(), msg.partition()) in self._assignment:
                    out.append(self._placeholder_sync(msg, err))
                    continue
                if err.fatal():
                    raise KafkaException(err)
                log.warning("consumer error: %s", err, extra={
                    "group": self.group_id, "topic": msg.topic(), "partition": msg.partition()})
                continue
            if (msg.topic(), msg.partition()) in self._assignment:
                out.append(Message.from_kafka(msg))
        if self._observer is not None and self._assignment:
            now = time.monotonic()
            if now - self._watermarks_at >= self._lag_interval_s:
                self._watermarks_at = now
                self._events.append(("watermarks", self._watermarks_sync()))
        events, self._events = self._events, []
        return events, out

    def _placeholder_sync(self, msg: KafkaMessage, err: KafkaError) -> Message:
        """librdkafka would report this batch forever: stand in for its next offset, move on."""
        offset = self._undecompressable.next_offset(msg.topic(), msg.partition(), msg.offset())
        self._consumer.seek(KafkaTopicPartition(msg.topic(), msg.partition(), offset + 1))
        return placeholder(msg.topic(), msg.partition(), offset, err.str())

    def _rebuild_sync(self) -> None:
        """The partitions were lost (session timeout) and no assignment came back within
        `rejoin_timeout_s`. Seen in the chaos suite after a broker restart: the client kept
        polling but never sent JoinGroup again, so its group stayed empty for good (an
        assignment always follows a rejoin, an empty one for a member without partitions).
        A new client joins afresh; the old one is closed in the background (closing may hang
        as well) and its callbacks are ignored from now on."""
        log.error("consumer did not rejoin its group within %.0fs of losing its partitions; "
                  "recreating the Kafka client", self._rejoin_timeout_s, extra={"group": self.group_id})
        old = self._consumer
        self._lost_at = time.monotonic()  # the new client gets as long
        self._paused = False  # a held batch went with the lost partitions
        self._open_sync()
        threading.Thread(target=old.close, name=f"close-{self.group_id}", daemon=True).start()

    def _watermarks_sync(self) -> dict[TopicPartition, tuple[int, int]]:
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

    def _pause_sync(self) -> None:
        parts = self._consumer.assignment()
        if parts:
            self._consumer.pause(parts)
        self._paused = True

    def _resume_sync(self) -> None:
        parts = self._consumer.assignment()
        if parts:
            self._consumer.resume(parts)
        self._paused = False

    def _seek_sync(self, positions: dict[TopicPartition, int | None]) -> None:
        self._undecompressable.forget()
        for (topic, partition), offset in positions.items():
            if (topic, partition) in self._assignment:
                # Failing here would skip messages; raise instead (restart resumes from PG).
                self._consumer.seek(KafkaTopicPartition(
                    topic, partition, OFFSET_BEGINNING if offset is None else offset))

    def _on_assign(self, consumer: Consumer, partitions: list) -> None:
        if consumer is not self._consumer:
            return  # a client given up by _rebuild_sync
        self._lost_at = None
        self._undecompressable.forget()
        keys = [(tp.topic, tp.partition) for tp in partitions]
        future = asyncio.run_coroutine_threadsafe(self._load_offsets(keys), self._loop)
        try:
            stored = future.result(timeout=self._assign_timeout_s + 5)
        except BaseException:
            future.cancel()
            log.exception("reading stored offsets for the assignment failed", extra={"group": self.group_id})
            raise
        for tp in partitions:
            tp.offset = stored.get((tp.topic, tp.partition), OFFSET_BEGINNING)
        consumer.assign(partitions)
        if self._paused and partitions:
            consumer.pause(partitions)  # a backoff is under way: new partitions wait too
        self._assignment = set(keys)
        self._events.append(("assign", {k: stored.get(k) for k in keys}))
        self._loop.call_soon_threadsafe(self._set_assignment_view, frozenset(self._assignment))
        self.stats.rebalances += 1
        for tp in partitions:
            log.info("partition assigned, starting at %s", "beginning" if tp.offset == OFFSET_BEGINNING else tp.offset,
                     extra={"group": self.group_id, "topic": tp.topic, "partition": tp.partition})

    def _on_revoke(self, consumer: Consumer, partitions: list, *, lost: bool = False) -> None:
        if consumer is not self._consumer:
            return  # a client given up by _rebuild_sync
        keys = {(tp.topic, tp.partition) for tp in partitions}
        self._assignment -= keys
        self._events.append(("revoke", keys))
        self._loop.call_soon_threadsafe(self._set_assignment_view, frozenset(self._assignment))
        for tp in partitions:
            log.log(logging.WARNING if lost else logging.INFO, "partition %s", "lost" if lost else "revoked",
                    extra={"group": self.group_id, "topic": tp.topic, "partition": tp.partition})

    def _on_lost(self, consumer: Consumer, partitions: list) -> None:
        if consumer is self._consumer:
            self._lost_at = time.monotonic()
        self._on_revoke(consumer, partitions, lost=True)


def _topics_of(batch: Sequence[Message]) -> str:
    return ",".join(sorted({m.topic for m in batch}))
