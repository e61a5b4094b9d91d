"""The one Kafka consumer runner the command, usage and billing consumers share.

A consumer is a `BatchStrategy` (consumers/strategy.py). The runner fetches, batches,
commits (consumers/commit.py: effects, dead letters and offsets in one transaction, offsets
fenced in PostgreSQL), retries, and serves rebalances through its Kafka thread
(consumers/kafka_thread.py). docs/kafka.md tells the whole story.

While a batch is committed the next one is fetched, so the fetch and the database round
trip overlap; a rebalance can arrive mid-batch, and fencing keeps that safe. Backpressure
and transient errors are never dead-lettered: the batch rolls back, every assigned
partition is paused, and the same batch is retried after a backoff during which the
consumer keeps polling (heartbeats, rebalances). Any other exception from a strategy is a
bug: `run()` raises it and a restart replays the batch from the stored offsets.

`stop()` lets the batch in hand commit (a batch waiting in backoff is abandoned for the
next owner), then closes the consumer so the group rebalances at once.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

import asyncpg

from consumers.batches import FetchBuffer, partitions_of, topics_of, without
from consumers.commit import BatchCommit, Committed, Fenced, load_stored, reasons
from consumers.dlq import DeadLetterDeliveryError, DeadLetterProducer
from consumers.dlq_limit import DlqLimit, DlqLimitState, TooManyBadMessages
from consumers.kafka_thread import Event, KafkaThread
from consumers.positions import Positions
from consumers.retry import Retry, is_retriable
from consumers.runner_config import Batching, ConsumerSource, DeadLetterPolicy
from consumers.strategy import (
    Backpressure, BatchResult, BatchStrategy, DeadLetter, Message, RunnerObserver, RunnerStats, TopicPartition,
)

__all__ = [
    "Backpressure", "BatchResult", "BatchStrategy", "Batching", "ConsumerRunner", "ConsumerSource", "DeadLetter",
    "DeadLetterDeliveryError", "DeadLetterPolicy", "DlqLimit", "Message", "Retry", "RunnerObserver", "RunnerStats",
    "TooManyBadMessages",
]

log = logging.getLogger(__name__)
_LOGGED_DEAD_LETTERS = 20  # per batch, one line each; the rest in one line


class _Abandoned(Exception):
    """The held batch was given up (stop requested during backoff)."""


class ConsumerRunner:
    """Runs `strategy` over `source` until `stop()`. `observer` hears of every committed
    batch and of the lag of every assigned partition (at least every `lag_interval_s`);
    `on_batch(messages, dead_letters, seconds)` is a plain callback for tests and benches."""

    def __init__(self, pool: asyncpg.Pool, source: ConsumerSource, strategy: BatchStrategy, *,
                 batching: Batching | None = None, retry: Retry | None = None,
                 dead_letters: DeadLetterPolicy | None = None, observer: RunnerObserver | None = None,
                 on_batch: Callable[[int, int, float], None] | None = None, lag_interval_s: float = 1.0):
        batching, retry, dead_letters = batching or Batching(), retry or Retry(), dead_letters or DeadLetterPolicy()
        if dead_letters.topic in source.topics:
            raise ValueError("the dead-letter topic must not be one of the consumed topics")
        self.group_id = source.group_id
        self._pool = pool
        self._source = source
        self._strategy = strategy
        self._predecode: Callable[[list[Message]], None] | None = getattr(strategy, "predecode", None)
        self._batching = batching
        self._retry = retry
        self._dead_letters = dead_letters
        self._limit = DlqLimitState(dead_letters.limit)
        self._observer = observer
        self._on_batch = on_batch
        self._lag_interval_s = lag_interval_s
        # Optional on an observer: `waited(fetched_s, age_s)` as each batch starts.
        self._waited: Callable[[float | None, float | None], None] | None = getattr(observer, "waited", None)
        self.stats = RunnerStats()
        # Set while at least one partition is assigned (tests and readiness wait on it).
        self.assigned = asyncio.Event()
        self._assignment_view: frozenset[TopicPartition] = frozenset()
        self._kafka = KafkaThread(source, self._load_offsets, self.stats, on_assignment=self._set_assignment_view,
                                  lag_interval_s=lag_interval_s if observer is not None else None)
        self._buffer = FetchBuffer()
        self._positions = Positions()
        self._commit: BatchCommit | None = None
        self._dlq: DeadLetterProducer | None = None
        self._stopping = False
        self._started = False

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
        topics = ",".join(self._source.topics)
        try:
            d = self._dead_letters
            if d.topic:
                self._dlq = DeadLetterProducer(dict(d.producer_config or {}), d.topic, self.group_id,
                                               timeout_s=d.timeout_s)
            self._commit = BatchCommit(self._pool, self.group_id, self._strategy, dlq=self._dlq, limit=self._limit,
                                       max_message_bytes=self._batching.max_message_bytes)
            await self._kafka.start()
            log.info("consumer started", extra={"group": self.group_id, "topic": topics})
            while not self._stopping:
                await self._fill()
                if len(self._buffer):
                    await self._process_with_prefetch()
        except Exception as exc:
            log.error("consumer failed: %s: %s", type(exc).__name__, exc, extra={"group": self.group_id, "topic": topics})
            raise
        finally:
            await self._shutdown()

    # ------------------------------------------------------------------ fetching

    async def _fill(self) -> None:
        # The window starts at the batch's first message, not here: messages fetched while
        # the previous batch committed have waited that long already (and with them a
        # threshold alert, docs/alerts.md#alert-lag), so they wait at most max_wait_s in all.
        since = self._buffer.since
        deadline = (time.monotonic() if since is None else since) + self._batching.max_wait_s
        while (room := self._buffer.room(self._batching.max_size)) and not self._stopping:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            await self._poll(room, remaining)

    async def _poll(self, max_messages: int, timeout_s: float) -> None:
        events, messages = await self._kafka.poll(max_messages, timeout_s)
        self._apply(events)
        self._buffer.extend(messages, time.monotonic())

    def _apply(self, events: list[Event]) -> None:
        # Callback events come before the messages of the same poll: librdkafka drops
        # fetched messages of an outdated assignment itself, and the Kafka thread keeps
        # only messages of partitions assigned when the poll returned.
        for kind, data in events:
            if kind == "revoke":
                self._buffer.drop(data)
                self._positions.revoked(data)
                for tp in data:
                    self._notify(lambda o, tp=tp: o.forget(*tp))
            elif kind == "assign":
                self._positions.assigned(data)
            elif kind == "watermarks":
                self._positions.watermarks(data)
                self._report_lag(data)

    async def _process_with_prefetch(self) -> None:
        """Commit a batch while the Kafka thread fetches the next one; once the next batch
        is fetched, a strategy with a `predecode(batch)` (pure CPU work, no I/O) does it
        while this batch's transaction is still in PostgreSQL."""
        busy = asyncio.ensure_future(self._process_next_batch())
        try:
            while not busy.done() and not self._stopping and not self._kafka.paused \
                    and (room := self._buffer.room(self._batching.max_size)):
                await self._poll(room, 0.02)
                await asyncio.sleep(0)
            if self._predecode is not None and not busy.done() and not self._stopping:
                self._predecode(self._buffer.peek(self._batching.max_size))
        finally:
            await busy

    # ------------------------------------------------------------------ one batch

    async def _process_next_batch(self) -> None:
        since = self._buffer.since
        batch = self._buffer.take(self._batching.max_size)
        if batch and self._waited is not None:
            first = batch[0].timestamp_ms
            self._notify(lambda o: self._waited(None if since is None else time.monotonic() - since,
                                                None if first is None else time.time() - first / 1000))
        attempt = 0
        try:
            while batch:
                try:
                    done = await self._commit(batch, self._positions.expected(partitions_of(batch)))
                    self._committed(batch, done)
                    await self._refresh_lag()
                    return
                except Fenced as exc:
                    self._buffer.put_back(batch, exc.partitions)
                    if self._kafka.paused:  # seek on running partitions only
                        await self._kafka.resume()
                    await self._resync(exc.partitions)
                    return
                except Exception as exc:
                    if not is_retriable(exc):
                        raise
                    attempt += 1
                    self.stats.retries += 1
                    delay = self._retry.delay(attempt, exc)
                    log.warning("batch not committed (%s: %s); retry %d in %.2fs with partitions paused",
                                type(exc).__name__, exc, attempt, delay,
                                extra={"group": self.group_id, "topic": topics_of(batch), "retry": attempt},
                                exc_info=not isinstance(exc, Backpressure))
                    batch = await self._backoff(delay, batch)
        except _Abandoned:
            log.info("stopping during backoff: %d uncommitted messages left for the next owner", len(batch),
                     extra={"group": self.group_id})
        finally:
            if self._kafka.paused:
                await self._kafka.resume()

    async def _backoff(self, delay_s: float, batch: list[Message]) -> list[Message]:
        """Wait with every assigned partition paused, serving rebalances; return the held
        batch minus messages of partitions revoked meanwhile."""
        if not self._kafka.paused:
            await self._kafka.pause()
            self.stats.pauses += 1
        deadline = time.monotonic() + delay_s
        while True:
            if self._stopping:
                raise _Abandoned()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return batch
            events, messages = await self._kafka.poll(1000, min(remaining, 0.1))
            gone = set().union(*(data for kind, data in events if kind == "revoke"))
            if gone and len(kept := without(batch, gone)) != len(batch):
                log.info("dropped %d held messages of revoked partitions", len(batch) - len(kept),
                         extra={"group": self.group_id})
                batch = kept
            self._apply(events)
            # Paused partitions return nothing new; whatever was already on its way is kept
            # in order behind the held batch.
            self._buffer.extend(messages, time.monotonic())

    def _committed(self, batch: list[Message], done: Committed) -> None:
        self._positions.stored(done.offsets)
        self.stats.batches += 1
        self.stats.messages += len(batch)
        self.stats.dead_letters += len(done.dead)
        self.stats.counters.update(done.counters)
        # A line per dead letter, up to a bound per batch: a flood of bad input would
        # otherwise cost more in log lines than in ingestion (the DLQ keeps every one).
        for d in done.dead[:_LOGGED_DEAD_LETTERS]:
            log.warning("dead-lettered: %s", d.reason, extra={
                "group": self.group_id, "topic": d.message.topic, "partition": d.message.partition,
                "offset": d.message.offset, "reason": d.reason, "detail": d.detail[:500]})
        if len(done.dead) > _LOGGED_DEAD_LETTERS:
            log.warning("dead-lettered %d more messages of the batch: %s", len(done.dead) - _LOGGED_DEAD_LETTERS,
                        reasons(done.dead[_LOGGED_DEAD_LETTERS:]), extra={"group": self.group_id})
        if log.isEnabledFor(logging.DEBUG):
            log.debug("batch committed: %d messages, %d dead letters, %.3fs", len(batch), len(done.dead), done.seconds,
                      extra={"group": self.group_id, "topic": topics_of(batch)})
        if self._on_batch is not None:
            try:
                self._on_batch(len(batch), len(done.dead), done.seconds)
            except Exception:
                log.exception("on_batch callback failed", extra={"group": self.group_id})
        self._notify(lambda o: o.batch(len(batch), reasons(done.dead), done.counters, done.seconds))
        self._report_lag(done.offsets)

    async def _resync(self, partitions: set[TopicPartition]) -> None:
        """Another writer moved these partitions' stored offsets: drop what we fetched of
        them and continue from the stored offsets."""
        self.stats.fenced += 1
        self._buffer.drop(partitions)
        stored = await self._load_offsets(sorted(partitions))
        for tp in partitions:
            log.warning("stored offset moved by another writer; seeking to %s", stored.get(tp, "beginning"),
                        extra={"group": self.group_id, "topic": tp[0], "partition": tp[1]})
        positions = {tp: stored.get(tp) for tp in partitions}
        self._positions.stored(positions)
        await self._kafka.seek(positions)

    async def _load_offsets(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        deadline = time.monotonic() + self._source.assign_timeout_s
        attempt = 0
        while True:
            try:
                return await load_stored(self._pool, self.group_id, partitions)
            except Exception as exc:
                attempt += 1
                if not is_retriable(exc) or time.monotonic() > deadline or self._stopping:
                    raise
                delay = self._retry.raw_delay(attempt)
                log.warning("reading stored offsets failed (%s); retry in %.2fs", exc, delay,
                            extra={"group": self.group_id})
                await asyncio.sleep(delay)

    # ------------------------------------------------------------------ reporting

    async def _refresh_lag(self) -> None:
        """Watermarks between batches too: while a backlog is worked off the buffer stays
        full, so the Kafka thread is not polled and would not read them."""
        if self._observer is None or time.monotonic() - self._kafka.watermarks_at < self._lag_interval_s:
            return
        self._kafka.watermarks_at = time.monotonic()
        marks = await self._kafka.watermarks()
        self._positions.watermarks(marks)
        self._report_lag(marks)

    def _report_lag(self, partitions) -> None:
        for tp, messages in self._positions.lag(partitions):
            self._notify(lambda o, tp=tp, n=messages: o.lag(tp[0], tp[1], n))

    def _notify(self, call: Callable[[RunnerObserver], None]) -> None:
        if self._observer is None:
            return
        try:
            call(self._observer)
        except Exception:
            log.exception("observer failed", extra={"group": self.group_id})

    def _set_assignment_view(self, view: frozenset[TopicPartition]) -> None:
        self._assignment_view = view
        if view:
            self.assigned.set()
        else:
            self.assigned.clear()

    async def _shutdown(self) -> None:
        await self._kafka.close()
        if self._dlq is not None:
            await asyncio.to_thread(self._dlq.close)
        self._set_assignment_view(frozenset())
        self._buffer.clear()
        for tp in self._positions.owned():
            self._notify(lambda o, tp=tp: o.forget(*tp))
        log.info("consumer stopped", extra={"group": self.group_id, "topic": ",".join(self._source.topics)})
