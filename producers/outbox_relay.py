"""The outbox relay: publishes outbox rows to Kafka, then marks them published.

Services write an outbox row (`billing.store.outbox.enqueue`) in the same transaction as
the change it announces. The leader of a relay group (producers/relay_lease.py) reads
unpublished rows in id order, produces them with an idempotent producer and waits until
Kafka confirmed every one (producers/relay_publisher.py), then marks exactly the confirmed
rows published in one statement. Rows are never deleted (audit trail); `published_at` is
the only column the relay writes. Failed rows wait with backoff, and so does everything
behind them of their key or stream; rows Kafka refuses for good are parked
(producers/relay_holds.py). docs/kafka.md, "The outbox relay", tells the guarantees.

Streams and topics
    A row names a logical stream; `stream_topics(settings)` maps it to the configured topic.
    A row of an unknown stream is logged as an error and left unpublished (retried with
    backoff, e.g. after a deploy that knows the stream); the loop never crashes on it.

Message
    key = the row's key bytes (None stays None), value = the payload bytes (in the Confluent
    wire format if BILLING_KAFKA_WIRE_FORMAT=confluent), headers = the row's headers plus
    CloudEvents binary-mode `ce_*` headers (producers/relay_format.py), `outbox-id` (the row
    id, decimal) and `tenant-id` (the tenant uuid).

Delivery: at least once, in order per key
    A row is marked published only after its delivery report said OK. A duplicate reaches
    the topic only if the relay dies between Kafka's confirmation and the marking, or is
    stopped with deliveries unconfirmed; it carries the same `outbox-id`, so consumers
    deduplicate on it (or the event id). Each cycle starts again from the lowest unpublished
    id, so no row is skipped for good. Per-key order follows id order, which is commit order
    only if writers lock the entity before `enqueue`, as the services do.

Wake-ups
    The `outbox_notify` trigger notifies channel `outbox` at the commit of every insert; the
    leader LISTENs on it and runs a cycle at once, and polls every `poll_interval_s`.

Metrics
    `on_published(count, seconds)` after each batch that marked rows (seconds from the first
    produce to the end of the marking); `on_delivered(delays)`: (seconds from writing to
    delivery confirmed, rows delivered with that delay) pairs, one per writing time (the
    rows of one transaction share theirs, so a chunk's thousand rows are one pair); `on_parked(reason)` per row parked.
"""
from __future__ import annotations

import asyncio
import threading
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone

import asyncpg
from confluent_kafka import Producer
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span

from billing.config import Settings
from billing.domain.events import Stream
from billing.kafka import producer_config
from billing.ops import tracing
from billing.store import outbox_relay as sql
from billing.store.outbox_relay import PendingRow
from producers.relay_format import relay_format
from producers.relay_holds import PARK_REASONS, Failure, HoldBook, PublishResult, key_hold
from producers.relay_lease import LeaderLease, LeaseSettings
from producers.relay_publisher import OUTBOX_ID_HEADER, TENANT_ID_HEADER, Publisher

__all__ = ["OUTBOX_ID_HEADER", "PARK_REASONS", "TENANT_ID_HEADER", "OutboxRelay", "backlog", "oldest_pending_age_s",
           "parked", "stream_topics"]

log = logging.getLogger(__name__)

# The relay's own producer settings on top of billing.kafka.producer_config. Its topics are
# created before it runs, so a topic that does not exist is a misconfiguration: fail those
# rows after 5 s (librdkafka waits 30 s by default) rather than stall every batch.
RELAY_PRODUCER_DEFAULTS = {
    "topic.metadata.propagation.max.ms": 5000,
    "message.timeout.ms": 30000,
}


@dataclass
class _Flight:
    """A batch being published: its rows, the publishing task, its span, its keys (as holds)."""
    rows: list[PendingRow]
    task: asyncio.Task[PublishResult]
    span: Span
    keys: set[Hashable]

    @property
    def last_id(self) -> int:
        return self.rows[-1].id


def stream_topics(settings: Settings) -> dict[str, str]:
    """Logical outbox stream -> Kafka topic."""
    t = settings.topics
    return {
        Stream.SUBSCRIPTION_EVENTS: t.subscription_events,
        Stream.INVOICE_REQUESTS: t.invoice_requests,
        Stream.BILLING_RUNS: t.billing_runs,
        Stream.USAGE_ALERTS: t.usage_alerts,
    }


async def backlog(pool: asyncpg.Pool | asyncpg.Connection) -> int:
    """Unpublished outbox rows across all tenants (for a gauge; works as the worker role)."""
    return await sql.backlog(pool)


async def parked(pool: asyncpg.Pool | asyncpg.Connection) -> int:
    """Parked (unpublished, refused for good) outbox rows across all tenants, for a gauge."""
    return await sql.parked_count(pool)


async def oldest_pending_age_s(pool: asyncpg.Pool | asyncpg.Connection) -> float:
    """Seconds since the oldest unpublished row was written (0 when none), for a gauge."""
    return await sql.oldest_pending_age_s(pool)


class OutboxRelay:
    """Relays the outbox to Kafka while it is the leader of its group; a standby otherwise.

    pool: the worker role's pool (used by `backlog()` only; the relay's own SQL runs on its
      lock session). listen_dsn: a direct session to PostgreSQL as the worker role (not through
      a transaction-pooling bouncer: the advisory lock and LISTEN live in the session).
    batch_size: rows per produce/confirm/mark round. max_in_flight: batches published at
      once (the next is produced while the previous one's deliveries are awaited and marked;
      never two sharing a key or stream). poll_interval_s: the polling fallback.
    group: relays of one group elect one leader. standby_retry_s: how often a standby tries
      the lock. retry_backoff_s .. max_retry_backoff_s: backoff of failed rows (doubling),
      and of reconnecting. stop_grace_s: how long stop() waits for unconfirmed deliveries.
    max_scan_pages: pages of held-back rows one cycle reads past before it waits.
    producer_overrides: librdkafka settings on top of billing.kafka.producer_config.
    topics: stream -> topic, by default `stream_topics(settings)`.
    on_published(count, seconds): called after every batch that marked rows.
    on_parked(reason): called for every row parked (reason: one of PARK_REASONS).
    """

    def __init__(self, *, pool: asyncpg.Pool, listen_dsn: str, settings: Settings, batch_size: int = 500,
                 max_in_flight: int = 2,
                 poll_interval_s: float = 1.0, group: str = "default", standby_retry_s: float = 3.0,
                 retry_backoff_s: float = 1.0, max_retry_backoff_s: float = 30.0, stop_grace_s: float = 10.0,
                 max_scan_pages: int = 10, producer_overrides: dict | None = None,
                 topics: Mapping[str, str] | None = None,
                 on_published: Callable[[int, float], None] | None = None,
                 on_delivered: Callable[[list[tuple[float, int]]], None] | None = None,
                 on_parked: Callable[[str], None] | None = None):
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self._max_in_flight = max_in_flight
        self._pool = pool
        self._batch_size = batch_size
        self._poll_interval_s = poll_interval_s
        self._group = group
        self._max_scan_pages = max_scan_pages
        self._producer_conf = producer_config(settings, **{
            "client.id": f"billing-outbox-relay-{group}", **RELAY_PRODUCER_DEFAULTS, **(producer_overrides or {}),
        })
        self._on_published = on_published
        self._on_delivered = on_delivered
        self._on_parked = on_parked
        self._is_leader = False
        self._stopping = threading.Event()   # read by the publishing thread too
        self._stop_event = asyncio.Event()
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._holds = HoldBook(retry_backoff_s, max_retry_backoff_s, group)
        self._publisher = Publisher(dict(topics) if topics is not None else stream_topics(settings), self._holds,
                                    self._stopping, stop_grace_s, relay_format(settings))
        self._lease = LeaderLease(
            LeaseSettings(listen_dsn, group, standby_retry_s, retry_backoff_s, max_retry_backoff_s),
            self._stopping, self._sleep, self._wake.set)

    # -- public ------------------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        return self._is_leader

    async def backlog(self) -> int:
        return await backlog(self._pool)

    def stop(self) -> None:
        """Ask `run()` to return: the batch in flight is finished (its confirmed rows are
        marked; deliveries still unconfirmed after `stop_grace_s` are left unpublished),
        the lock is released, and the connection closed. Safe from any thread."""
        self._stopping.set()
        loop = self._loop
        if loop is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._signal_stop()
        elif not loop.is_closed():
            loop.call_soon_threadsafe(self._signal_stop)

    async def run(self) -> None:
        """Campaign for leadership and relay while leader, until `stop()`."""
        self._loop = asyncio.get_running_loop()
        if self._stopping.is_set():
            self._signal_stop()
        await self._lease.run(self._lead)
        log.info("outbox relay stopped", extra={"group": self._group})

    # -- leadership --------------------------------------------------------------------

    async def _lead(self, conn: asyncpg.Connection) -> None:
        self._is_leader = True
        self._holds.clear()
        log.info("outbox relay is leader", extra={"group": self._group})
        await conn.add_listener(sql.NOTIFY_CHANNEL, self._on_notify)
        producer = Producer(self._producer_conf)
        in_flight: deque[_Flight] = deque()
        try:
            while not self._stopping.is_set():
                self._wake.clear()
                launched = False
                if len(in_flight) < self._max_in_flight:
                    launched = await self._launch(conn, producer, in_flight)
                if in_flight and (not launched or len(in_flight) >= self._max_in_flight):
                    fatal = await self._finish(conn, in_flight.popleft())
                    if fatal:
                        # A fatal producer error (idempotence state lost) makes it unusable.
                        while in_flight:
                            await self._finish(conn, in_flight.popleft())
                        await asyncio.to_thread(producer.flush, 1.0)
                        producer = Producer(self._producer_conf)
                if conn.is_closed():
                    raise ConnectionError("the relay's database session was closed")
                if not launched and not in_flight and not self._stopping.is_set():
                    await self._wait_for_work()
        finally:
            self._is_leader = False
            try:
                while in_flight and not conn.is_closed():  # stopping: confirmed rows are still marked
                    await self._finish(conn, in_flight.popleft())
            except Exception:
                log.exception("outbox relay: finishing the batches in flight failed", extra={"group": self._group})
            try:
                if not conn.is_closed():
                    await conn.remove_listener(sql.NOTIFY_CHANNEL, self._on_notify)
            except Exception:
                pass
            await asyncio.to_thread(producer.flush, 1.0)

    async def _wait_for_work(self) -> None:
        timeout = self._poll_interval_s
        retry_in = self._holds.next_retry_in(time.monotonic())
        if retry_in is not None:
            timeout = min(timeout, max(0.0, retry_in) + 0.01)
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    # -- one cycle: scan, produce, confirm, mark -------------------------------------------

    async def _launch(self, conn: asyncpg.Connection, producer: Producer, in_flight: deque[_Flight]) -> bool:
        """Scan the next batch and start publishing it (in a worker thread); False when there
        is none, or when it shares a key or stream with a batch in flight (then it waits for
        that batch: a failure there must hold the rest of its key, in order; rows of one
        stream but other keys have no order between them)."""
        after_id = in_flight[-1].last_id if in_flight else 0
        batch = await self._scan(conn, after_id)
        if not batch:
            return False
        keys = {key_hold(r) for r in batch}
        if any(f.keys & keys for f in in_flight):
            return False
        span = tracing.tracer.start_span("outbox relay batch", links=tracing.message_links(
            r.headers for r in batch), attributes={"billing.outbox.rows": len(batch), "billing.outbox.group": self._group})
        # The task copies the context: the publish spans of rows without one are the batch span's children.
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            task = asyncio.create_task(asyncio.to_thread(self._publisher.publish, producer, batch))
        finally:
            otel_context.detach(token)
        in_flight.append(_Flight(batch, task, span, keys))
        return True

    async def _finish(self, conn: asyncpg.Connection, flight: _Flight) -> bool:
        """Wait for a batch's deliveries, mark the confirmed rows, hold or park the failed
        ones. Returns whether the producer must be replaced."""
        try:
            result = await flight.task
        finally:
            flight.span.end()
        ids = [r.id for r in result.delivered]
        marked = await sql.mark_published(conn, ids)
        elapsed = time.perf_counter() - result.started
        if marked != len(ids):
            log.info("outbox relay: some rows were already marked published (a previous leader)",
                     extra={"group": self._group, "delivered": len(ids), "marked": marked})
        self._holds.settle(result, time.monotonic())
        await self._park(conn, [f for f in result.failed if f.park_reason])
        if ids:
            confirmed = datetime.now(timezone.utc)
            self._callback("on_published", self._on_published, marked, elapsed)
            written = Counter(r.created_at for r in result.delivered)
            self._callback("on_delivered", self._on_delivered,
                           [((confirmed - at).total_seconds(), n) for at, n in written.items()])
        return any(f.fatal for f in result.failed)

    async def _scan(self, conn: asyncpg.Connection, after_id: int = 0) -> list[PendingRow]:
        """Up to a batch of unpublished rows not held back, past at most `max_scan_pages`
        pages of held rows. From the lowest id whenever no batch is in flight (`after_id`
        0), so nothing is skipped for good; past the last row in flight otherwise."""
        now = time.monotonic()
        self._holds.prune(now)
        skip_streams = self._holds.held_streams(now)
        batch: list[PendingRow] = []
        for _ in range(self._max_scan_pages):
            rows = await sql.fetch_pending(conn, after_id=after_id, limit=self._batch_size,
                                           skip_streams=skip_streams)
            batch += [row for row in rows if not self._holds.held(row, now)][:self._batch_size - len(batch)]
            if len(batch) == self._batch_size or len(rows) < self._batch_size:
                break
            after_id = rows[-1].id
        return batch

    async def _park(self, conn: asyncpg.Connection, failures: list[Failure]) -> None:
        """Rows Kafka refused for good: parked in the database (unpublished, with the reason),
        so the other rows flow on and nothing is lost; see migration 011 for the release."""
        for f in failures:
            done = await sql.park(conn, f.row.id, f.park_reason, f.reason)
            log.error("outbox relay: row refused for good by Kafka and parked; later rows of its key are held "
                      "until an operator releases it (outbox_release)", extra={
                          "group": self._group, "outbox_id": f.row.id, "tenant_id": str(f.row.tenant_id),
                          "stream": f.row.stream, "park_reason": f.park_reason, "error": f.reason,
                          "payload_bytes": len(f.row.payload), "parked": done})
            if done:
                self._callback("on_parked", self._on_parked, f.park_reason)

    # -- plumbing ----------------------------------------------------------------------

    @staticmethod
    def _callback(name: str, fn: Callable | None, *args) -> None:
        if fn is None:
            return
        try:
            fn(*args)
        except Exception:
            log.exception("outbox relay: %s callback failed", name)

    def _on_notify(self, _conn, _pid, _channel, _payload) -> None:
        self._wake.set()

    def _signal_stop(self) -> None:
        self._stop_event.set()
        self._wake.set()

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stop_event.wait(), seconds)
        except asyncio.TimeoutError:
            pass
