"""The outbox relay: publishes outbox rows to Kafka, then marks them published.

Services write an outbox row (`billing.store.outbox.enqueue`) in the same transaction as
the change it announces. The relay reads unpublished rows in id order, produces them with
an idempotent producer, waits until Kafka has confirmed every one of them, and then marks
exactly the confirmed rows published in one statement. Rows are never deleted (audit
trail); `published_at` is the only column the relay writes. Retention of old published rows
is a later, separate decision.

Streams and topics
    A row names a logical stream; `stream_topics(settings)` maps it to the configured topic:
    subscription_events, invoice_requests, billing_runs. A row of an unknown stream is logged
    as an error and left unpublished (retried with backoff, e.g. after a deploy that knows the
    stream); the loop never crashes on it.

Message
    key = the row's key bytes (None stays None), value = the payload bytes, headers = the
    row's headers plus `outbox-id` (the row id, decimal) and `tenant-id` (the tenant uuid);
    a row header of either name is replaced by the relay's.

Delivery: at least once, in order per key
    A row is marked published only after its delivery report said OK, so nothing is lost.
    A duplicate can reach the topic only if the relay dies (or loses its database session)
    between Kafka's confirmation and the marking statement, or is stopped while deliveries
    are still unconfirmed: the next leader publishes those rows again. A duplicate carries
    the same `outbox-id` header and the same payload (with its own event id), so consumers
    must deduplicate on `outbox-id` (or the event id), never rely on exactly-once delivery.
    Order: rows are produced in id order, and a row whose delivery failed holds back every
    later row of the same stream and key (of the whole stream when the topic itself failed,
    e.g. it does not exist) until it is retried with exponential backoff; other keys and
    streams keep flowing. Each cycle starts again from the lowest unpublished id, so no row
    is ever skipped for good. Per-key order across rows therefore follows id order, which
    is commit order only if the writer serialises writes of one key: services must lock the
    entity (UPDATE it or SELECT ... FOR UPDATE) before `enqueue`, as they do anyway. The one
    case the relay cannot repair is a broker refusing one message and accepting a later one
    of the same key in the same batch (e.g. a broker size limit below the client's); that
    is logged as an error.

Poison rows are parked, not retried forever
    A row Kafka refuses for good (_PERMANENT_ERRORS: larger than the producer's
    message.max.bytes, refused at produce(); or refused by the broker, e.g. over the topic's
    max.message.bytes) is parked (migration 011, `outbox_park`): it stays unpublished with the
    reason and error, `on_parked(reason)` is called and it is logged with its id. The database
    then leaves it, and every later row of its stream and key, out of `outbox_pending`: other
    keys flow, its key keeps its order and waits for an operator's `outbox_release(ids)`. A
    broker refuses whole record batches, so a row refused by the broker is first retried
    alone (nothing else in flight) and parked only if that fails the same way; innocent rows
    batched with a big one are thus published. Every other error is retried as above.

One active relay per group (leader election)
    Every relay opens a dedicated connection (`listen_dsn`, the worker role) held for
    its lifetime and tries `pg_try_advisory_lock(<hash of the group name>)` on it. The one
    that gets the session-level lock is the leader; the others are standbys and try again
    every `standby_retry_s`. The leader runs its relay SQL (reads, marking) and its LISTEN on
    that same session, so a leader that lost its session cannot go on marking. When the
    leader stops, it unlocks; when its process is killed or its connection drops, PostgreSQL
    ends the session and frees the lock, and a standby takes over within `standby_retry_s`
    (plus, for a silent network loss, the time the server needs to notice the dead socket:
    TCP keepalives). During such a takeover both relays may publish the same rows for a
    moment: duplicates only, never loss.

Wake-ups
    The `outbox_notify` trigger (migration 003) notifies channel `outbox` at the commit of
    every insert; the leader LISTENs on it and runs a cycle at once. It also polls every
    `poll_interval_s`, so a missed notification only delays a row.

Tracing
    Each batch is a span (`outbox relay batch`, linked to the rows' traces). Each row is
    published in a span of its own (`publish <topic>`, kind PRODUCER) that continues the
    trace stored in the row's `traceparent` header (the transaction that wrote the row), or
    is a child of the batch span for a row without one; it ends at the delivery report.
    The message carries that publish span's context as its `traceparent` header (replacing
    the row's), so consumers of the topic continue the same trace.

Metrics
    `on_published(count, seconds)` is called after each batch that marked rows: the number
    marked and the seconds from the first produce to the end of the marking.
    `on_delivered(delays)` gets, for every row delivered in the batch, the seconds from the
    row's writing (`created_at`, the writer's transaction time) to its delivery confirmed:
    how long an event waited in the outbox.
    `backlog(pool)` counts unpublished rows of all tenants (security-definer function).
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Hashable, Mapping

import asyncpg
from confluent_kafka import KafkaError, KafkaException, Producer
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from billing.ops import tracing

from billing.config import Settings
from billing.domain.events import Stream
from billing.kafka import producer_config
from billing.store import outbox_relay as sql
from billing.store.db import init_connection
from billing.store.outbox_relay import PendingRow

log = logging.getLogger(__name__)

OUTBOX_ID_HEADER = "outbox-id"
TENANT_ID_HEADER = "tenant-id"

# Errors that concern the topic, not the message: hold back the whole stream.
_TOPIC_ERRORS = {
    KafkaError._UNKNOWN_TOPIC,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError.TOPIC_EXCEPTION,
    KafkaError._UNKNOWN_PARTITION,
}

# Errors that concern the message itself and that retrying never cures: a row that gets one
# when it is the only message in flight is parked under the reason code (a bounded set, also
# the metric label). At produce() the client checks the message alone, so that is proof at
# once; a broker's refusal concerns a whole record batch (innocent small rows of the same
# batch share it), so such rows are retried once more each on their own first.
_PERMANENT_ERRORS = {
    KafkaError.MSG_SIZE_TOO_LARGE: "message_too_large",
    KafkaError.RECORD_LIST_TOO_LARGE: "message_too_large",
    KafkaError.INVALID_RECORD: "invalid_record",
}
PARK_REASONS = frozenset(_PERMANENT_ERRORS.values())

# The relay's own producer settings on top of billing.kafka.producer_config. Its topics are
# created before it runs, so a topic that does not exist is a misconfiguration: fail those
# rows after 5 s (librdkafka waits 30 s by default) rather than stall every batch.
RELAY_PRODUCER_DEFAULTS = {
    "topic.metadata.propagation.max.ms": 5000,
    "message.timeout.ms": 30000,
}


def stream_topics(settings: Settings) -> dict[str, str]:
    """Logical outbox stream -> Kafka topic."""
    t = settings.topics
    return {
        Stream.SUBSCRIPTION_EVENTS: t.subscription_events,
        Stream.INVOICE_REQUESTS: t.invoice_requests,
        Stream.BILLING_RUNS: t.billing_runs,
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


@dataclass
class _Hold:
    retry_at: float
    attempts: int
    reason: str


@dataclass
class _Failure:
    row: PendingRow
    reason: str
    topic_level: bool
    fatal: bool = False
    code: int | None = None
    park_reason: str | None = None   # set: refused for good, the row is parked, not retried


@dataclass
class _BatchResult:
    delivered: list[PendingRow] = field(default_factory=list)
    failed: list[_Failure] = field(default_factory=list)
    unconfirmed: list[PendingRow] = field(default_factory=list)
    started: float = 0.0


def _key_hold(row: PendingRow) -> Hashable:
    # Without a key Kafka promises no order, so a failed keyless row only holds itself.
    return ("key", row.stream, row.key) if row.key is not None else ("row", row.id)


def _stream_hold(stream: str) -> Hashable:
    return ("stream", stream)


class OutboxRelay:
    """Relays the outbox to Kafka while it is the leader of its group; a standby otherwise.

    pool: the worker role's pool (used by `backlog()` only; the relay's own SQL runs on its
      lock session). listen_dsn: a direct session to PostgreSQL as the worker role (not through
      a transaction-pooling bouncer: the advisory lock and LISTEN live in the session).
    batch_size: rows per produce/confirm/mark round. poll_interval_s: the polling fallback.
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
                 poll_interval_s: float = 1.0, group: str = "default", standby_retry_s: float = 3.0,
                 retry_backoff_s: float = 1.0, max_retry_backoff_s: float = 30.0, stop_grace_s: float = 10.0,
                 max_scan_pages: int = 10, producer_overrides: dict | None = None,
                 topics: Mapping[str, str] | None = None,
                 on_published: Callable[[int, float], None] | None = None,
                 on_delivered: Callable[[list[float]], None] | None = None,
                 on_parked: Callable[[str], None] | None = None):
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self._pool = pool
        self._listen_dsn = listen_dsn
        self._settings = settings
        self._topics = dict(topics) if topics is not None else stream_topics(settings)
        self._batch_size = batch_size
        self._poll_interval_s = poll_interval_s
        self._group = group
        self._lock_key = sql.lock_key(group)
        self._standby_retry_s = standby_retry_s
        self._retry_backoff_s = retry_backoff_s
        self._max_retry_backoff_s = max_retry_backoff_s
        self._stop_grace_s = stop_grace_s
        self._max_scan_pages = max_scan_pages
        self._producer_conf = producer_config(settings, **{
            "client.id": f"billing-outbox-relay-{group}", **RELAY_PRODUCER_DEFAULTS, **(producer_overrides or {}),
        })
        self._on_published = on_published
        self._on_delivered = on_delivered
        self._on_parked = on_parked
        # Rows a broker refused with a permanent error while other messages were in flight:
        # their next attempt is made alone, and parks them if it fails the same way.
        self._isolate: set[int] = set()
        self._holds: dict[Hashable, _Hold] = {}
        self._is_leader = False
        self._stopping = threading.Event()   # read by the publishing thread too
        self._stop_event = asyncio.Event()
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

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
        failures = 0
        while not self._stopping.is_set():
            conn: asyncpg.Connection | None = None
            locked = False
            try:
                conn = await asyncpg.connect(self._listen_dsn, command_timeout=30, server_settings={
                    "application_name": f"billing-outbox-relay:{self._group}"[:63]})
                await init_connection(conn)
                conn.add_termination_listener(lambda _c: self._wake.set())
                while not self._stopping.is_set():
                    locked = await sql.try_lock(conn, self._lock_key)
                    if locked:
                        break
                    failures = 0
                    await self._sleep(self._standby_retry_s)
                if locked and not self._stopping.is_set():
                    failures = 0
                    await self._lead(conn)
            except asyncio.CancelledError:
                raise
            except Exception:
                failures += 1
                delay = min(self._max_retry_backoff_s, self._retry_backoff_s * 2 ** min(failures - 1, 10))
                log.exception("outbox relay: session lost or failed; retrying", extra={
                    "group": self._group, "retry_in_s": delay})
                await self._close(conn, locked)
                conn = None
                await self._sleep(delay)
            finally:
                self._is_leader = False
                await self._close(conn, locked)
        log.info("outbox relay stopped", extra={"group": self._group})

    # -- leadership --------------------------------------------------------------------

    async def _lead(self, conn: asyncpg.Connection) -> None:
        self._is_leader = True
        self._holds.clear()
        self._isolate.clear()
        log.info("outbox relay is leader", extra={"group": self._group})
        await conn.add_listener(sql.NOTIFY_CHANNEL, self._on_notify)
        producer = Producer(self._producer_conf)
        try:
            while not self._stopping.is_set():
                self._wake.clear()
                more, fatal = await self._cycle(conn, producer)
                if fatal:
                    # A fatal producer error (idempotence state lost) makes it unusable.
                    await asyncio.to_thread(producer.flush, 1.0)
                    producer = Producer(self._producer_conf)
                if self._stopping.is_set():
                    break
                if conn.is_closed():
                    raise ConnectionError("the relay's database session was closed")
                if more:
                    continue
                await self._wait_for_work()
        finally:
            self._is_leader = False
            try:
                if not conn.is_closed():
                    await conn.remove_listener(sql.NOTIFY_CHANNEL, self._on_notify)
            except Exception:
                pass
            # Nothing is in flight between cycles; this only serves leftover callbacks.
            await asyncio.to_thread(producer.flush, 1.0)

    async def _wait_for_work(self) -> None:
        timeout = self._poll_interval_s
        now = time.monotonic()
        pending = [h.retry_at - now for h in self._holds.values() if h.retry_at > now]
        if pending:
            timeout = min(timeout, max(0.0, min(pending)) + 0.01)
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    # -- one cycle: scan, produce, confirm, mark -------------------------------------------

    async def _cycle(self, conn: asyncpg.Connection, producer: Producer) -> tuple[bool, bool]:
        """Publish one batch. Returns (probably more waiting, producer must be replaced)."""
        now = time.monotonic()
        self._prune_holds(now)
        skip_streams = [k[1] for k, h in self._holds.items() if k[0] == "stream" and h.retry_at > now]
        batch: list[PendingRow] = []
        after_id = 0   # always from the lowest unpublished id: nothing is skipped for good
        for _ in range(self._max_scan_pages):
            rows = await sql.fetch_pending(conn, after_id=after_id, limit=self._batch_size,
                                           skip_streams=skip_streams)
            for row in rows:
                if self._held(row, now):
                    continue
                batch.append(row)
                if len(batch) == self._batch_size:
                    break
            if len(batch) == self._batch_size or len(rows) < self._batch_size:
                break
            after_id = rows[-1].id
        if not batch:
            return False, False

        with tracing.tracer.start_as_current_span("outbox relay batch", links=tracing.message_links(
                r.headers for r in batch), attributes={"billing.outbox.rows": len(batch),
                                                       "billing.outbox.group": self._group}):
            # to_thread copies the context: the publish spans of rows without one are children.
            result = await asyncio.to_thread(self._publish, producer, batch)
        ids = [r.id for r in result.delivered]
        marked = await sql.mark_published(conn, ids)
        elapsed = time.perf_counter() - result.started
        if marked != len(ids):
            log.info("outbox relay: some rows were already marked published (a previous leader)",
                     extra={"group": self._group, "delivered": len(ids), "marked": marked})
        self._settle_holds(result)
        await self._park(conn, [f for f in result.failed if f.park_reason])
        if ids and self._on_published is not None:
            try:
                self._on_published(marked, elapsed)
            except Exception:
                log.exception("outbox relay: on_published callback failed")
        if ids and self._on_delivered is not None:
            confirmed = datetime.now(timezone.utc)
            try:
                self._on_delivered([(confirmed - r.created_at).total_seconds() for r in result.delivered])
            except Exception:
                log.exception("outbox relay: on_delivered callback failed")
        # Failed rows are held now, so a full batch means more may be waiting right away.
        more = len(batch) == self._batch_size and not self._stopping.is_set()
        return more, any(f.fatal for f in result.failed)

    def _publish(self, producer: Producer, rows: list[PendingRow]) -> _BatchResult:
        """Runs in a worker thread: produce in id order, then wait for every delivery report."""
        result = _BatchResult(started=time.perf_counter())
        reports: dict[int, KafkaError | None] = {}
        produced: list[PendingRow] = []
        blocked: set[Hashable] = set()
        spans = {}  # row id -> its publish span, ended by the delivery report

        def await_reports() -> bool:
            # Every produced message gets exactly one report (at the latest after
            # message.timeout.ms); wait for all of them, but not past stop_grace_s after stop().
            give_up_at = None
            while len(reports) < len(produced):
                producer.flush(0.2)
                if self._stopping.is_set():
                    give_up_at = give_up_at or time.monotonic() + self._stop_grace_s
                    if time.monotonic() > give_up_at:
                        return False
            return True

        def report(row_id: int, span):
            def on_delivery(err, _msg):
                reports[row_id] = err
                if err is not None:
                    tracing.record_error(span, f"delivery failed: {err}")
                span.end()
            return on_delivery

        for row in rows:
            if _stream_hold(row.stream) in blocked or _key_hold(row) in blocked:
                continue   # an earlier row of its key failed in this batch: keep the order
            topic = self._topics.get(row.stream)
            if topic is None:
                result.failed.append(_Failure(row, f"unknown outbox stream {row.stream!r}", topic_level=True))
                blocked.add(_stream_hold(row.stream))
                continue
            alone = row.id in self._isolate
            if alone and not await_reports():
                break   # stopping: this row and the rest are left for later
            span = tracing.tracer.start_span(
                f"publish {topic}", context=tracing.extract(row.headers), kind=SpanKind.PRODUCER,
                attributes={"messaging.system": "kafka", "messaging.destination.name": topic,
                            "messaging.operation.type": "send", "billing.outbox.id": row.id,
                            "billing.tenant_id": str(row.tenant_id)})
            spans[row.id] = span
            trace_headers = tracing.inject({}, trace.set_span_in_context(span))
            headers = [(k, v) for k, v in row.headers.items()
                       if k not in (OUTBOX_ID_HEADER, TENANT_ID_HEADER) and k not in trace_headers]
            headers += [(OUTBOX_ID_HEADER, str(row.id)), (TENANT_ID_HEADER, str(row.tenant_id))]
            headers += list(trace_headers.items())
            while True:
                try:
                    producer.produce(topic, value=row.payload, key=row.key, headers=headers,
                                     on_delivery=report(row.id, span))
                    produced.append(row)
                except BufferError:
                    producer.poll(0.05)   # local queue full: serve reports, try again
                    continue
                except KafkaException as exc:
                    err = exc.args[0]
                    topic_level = err.code() in _TOPIC_ERRORS
                    result.failed.append(_Failure(row, str(err), topic_level, fatal=err.fatal(), code=err.code(),
                                                  park_reason=_PERMANENT_ERRORS.get(err.code())))
                    blocked.add(_stream_hold(row.stream) if topic_level else _key_hold(row))
                    tracing.record_error(span, f"produce failed: {err}")
                    span.end()
                break
            if alone:
                await_reports()
                err = reports.get(row.id)
                if err is not None:
                    blocked.add(_stream_hold(row.stream) if err.code() in _TOPIC_ERRORS else _key_hold(row))

        await_reports()

        for row in produced:
            if row.id not in reports:
                result.unconfirmed.append(row)
                tracing.record_error(spans[row.id], "delivery unconfirmed at stop")
                spans[row.id].end()
            elif (err := reports[row.id]) is None:
                result.delivered.append(row)
            else:
                park = _PERMANENT_ERRORS.get(err.code()) if row.id in self._isolate else None
                result.failed.append(_Failure(row, str(err), err.code() in _TOPIC_ERRORS, fatal=err.fatal(),
                                              code=err.code(), park_reason=park))
        return result

    # -- holds: failed rows wait with backoff, and so does everything behind them ----------

    def _held(self, row: PendingRow, now: float) -> bool:
        for key in (_stream_hold(row.stream), _key_hold(row)):
            hold = self._holds.get(key)
            if hold is not None and hold.retry_at > now:
                return True
        return False

    def _settle_holds(self, result: _BatchResult) -> None:
        now = time.monotonic()
        delivered_keys: dict[Hashable, int] = {}
        for row in result.delivered:
            self._isolate.discard(row.id)
            self._holds.pop(_key_hold(row), None)
            self._holds.pop(_stream_hold(row.stream), None)
            delivered_keys[_key_hold(row)] = max(delivered_keys.get(_key_hold(row), 0), row.id)
        by_hold: dict[Hashable, list[_Failure]] = {}
        for f in result.failed:
            if f.park_reason:
                # Parked by _park: the database holds it and the later rows of its key back.
                self._isolate.discard(f.row.id)
                self._holds.pop(_key_hold(f.row), None)
                continue
            if f.code in _PERMANENT_ERRORS:
                self._isolate.add(f.row.id)   # refused in a batch: the next attempt is alone
            hold_key = _stream_hold(f.row.stream) if f.topic_level else _key_hold(f.row)
            by_hold.setdefault(hold_key, []).append(f)
            later = delivered_keys.get(_key_hold(f.row), 0)
            if later > f.row.id:
                log.error("outbox relay: a row failed after a later row of its key was delivered; "
                          "the key's order is broken on the topic", extra={
                              "outbox_id": f.row.id, "later_outbox_id": later, "stream": f.row.stream,
                              "reason": f.reason})
        for hold_key, failures in by_hold.items():
            previous = self._holds.get(hold_key)
            attempts = (previous.attempts if previous else 0) + 1
            delay = min(self._max_retry_backoff_s, self._retry_backoff_s * 2 ** min(attempts - 1, 20))
            self._holds[hold_key] = _Hold(now + delay, attempts, failures[0].reason)
            first = failures[0].row
            log.error("outbox relay: delivery failed; rows stay unpublished and are retried", extra={
                "group": self._group, "stream": first.stream, "rows": len(failures),
                "first_outbox_id": first.id, "tenant_id": str(first.tenant_id), "reason": failures[0].reason,
                "whole_stream": hold_key[0] == "stream", "attempt": attempts, "retry_in_s": delay})
        for row in result.unconfirmed:
            # Stopped before the report came: unknown outcome, left for the next leader.
            log.warning("outbox relay: delivery unconfirmed at stop; the row will be published again",
                        extra={"outbox_id": row.id, "stream": row.stream})

    async def _park(self, conn: asyncpg.Connection, failures: list[_Failure]) -> None:
        """Rows Kafka refused for good: parked in the database (unpublished, with the reason),
        so the other rows flow on and nothing is lost; see migration 011 for the release."""
        for f in failures:
            done = await sql.park(conn, f.row.id, f.park_reason, f.reason)
            log.error("outbox relay: row refused for good by Kafka and parked; later rows of its key are held "
                      "until an operator releases it (outbox_release)", extra={
                          "group": self._group, "outbox_id": f.row.id, "tenant_id": str(f.row.tenant_id),
                          "stream": f.row.stream, "park_reason": f.park_reason, "error": f.reason,
                          "payload_bytes": len(f.row.payload), "parked": done})
            if done and self._on_parked is not None:
                try:
                    self._on_parked(f.park_reason)
                except Exception:
                    log.exception("outbox relay: on_parked callback failed")

    def _prune_holds(self, now: float) -> None:
        # A hold long past its retry time whose rows were not seen again (published by
        # another leader) is forgotten.
        stale = [k for k, h in self._holds.items() if now - h.retry_at > 2 * self._max_retry_backoff_s]
        for k in stale:
            del self._holds[k]
        if len(self._isolate) > 10_000:   # ids published meanwhile by another leader
            self._isolate.clear()

    # -- plumbing ----------------------------------------------------------------------

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

    async def _close(self, conn: asyncpg.Connection | None, locked: bool) -> None:
        if conn is None or conn.is_closed():
            return
        try:
            if locked:
                await asyncio.wait_for(sql.unlock(conn, self._lock_key), 5)
            await asyncio.wait_for(conn.close(), 5)
        except Exception:
            conn.terminate()
