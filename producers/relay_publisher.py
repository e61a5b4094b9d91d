"""The relay's publisher: one batch of outbox rows produced in id order, then every
delivery report awaited. Runs in a worker thread (the producer's calls block).

Rows are published in spans `publish <topic>` (kind PRODUCER), one per topic, tenant and
writer's trace context in a batch: the rows one transaction wrote (a billing run's chunk:
hundreds of invoice requests) share one, which continues the trace stored in their
`traceparent` header (rows without one: a child of the batch span), counts them
(`billing.outbox.rows`), is marked failed if any of them failed, and ends when the batch's
delivery reports are in. Bounded like the consumers' message spans: a span per row cost
more CPU than the rest of the relay's work on the row. Each message carries its span's
context as its `traceparent` header, so consumers of the topic continue the same trace.
"""
from __future__ import annotations

import threading
import time
from functools import lru_cache
from collections.abc import Callable, Hashable, Mapping

from confluent_kafka import KafkaError, KafkaException, Producer
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind

from billing.codec import CodecError
from billing.codec_confluent import RegistryUnavailable
from billing.registry import RegistryRefused
from billing.ops import tracing
from producers.relay_format import RelayFormat, tenant_text
from producers.relay_holds import (
    PERMANENT_ERRORS, TOPIC_ERRORS, Failure, HoldBook, PublishResult, hold_of, key_hold, stream_hold,
)

OUTBOX_ID_HEADER = "outbox-id"
TENANT_ID_HEADER = "tenant-id"


def message_headers(row, trace_headers: Mapping[str, str],
                    extra: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """The row's headers, then `extra` (the CloudEvents ones), `outbox-id` and `tenant-id`,
    then the publish span's trace context; a row header of any of those names is replaced."""
    extra = extra or {}
    own = (OUTBOX_ID_HEADER, TENANT_ID_HEADER)
    headers = [(k, v) for k, v in row.headers.items() if k not in own and k not in trace_headers and k not in extra]
    return headers + [*extra.items(), (OUTBOX_ID_HEADER, str(row.id)), (TENANT_ID_HEADER, tenant_text(row.tenant_id)),
                      *trace_headers.items()]


class Publisher:
    def __init__(self, topics: Mapping[str, str], holds: HoldBook, stopping: threading.Event, stop_grace_s: float,
                 fmt: RelayFormat | None = None):
        self._topics = topics
        self._format = fmt or RelayFormat(source="/billing-service")
        self._holds = holds
        self._stopping = stopping
        self._stop_grace_s = stop_grace_s

    def publish(self, producer: Producer, rows: list) -> PublishResult:
        batch = _Batch(producer, self._stopping, self._stop_grace_s, self._format)
        for row in rows:
            if batch.blocks(row):
                continue  # an earlier row of its key failed in this batch: keep the order
            topic = self._topics.get(row.stream)
            if topic is None:
                batch.fail(Failure(row, f"unknown outbox stream {row.stream!r}", topic_level=True))
                continue
            alone = self._holds.isolated(row.id)
            if alone and not batch.await_reports():
                break  # stopping: this row and the rest are left for later
            batch.produce(row, topic)
            if alone:
                batch.await_alone(row)
        batch.await_reports()
        return batch.outcome(self._holds.isolated)


@lru_cache(maxsize=64)
def _span_name(topic: str) -> str:
    return f"publish {topic}"


class _Batch:
    """The state of one publish round: what was produced, reported, and blocked."""

    def __init__(self, producer: Producer, stopping: threading.Event, stop_grace_s: float, fmt: RelayFormat):
        self._producer = producer
        self._format = fmt
        self._stopping = stopping
        self._stop_grace_s = stop_grace_s
        self._result = PublishResult(started=time.perf_counter())
        self._reports: dict[int, KafkaError | None] = {}
        self._produced: list = []
        self._blocked: set[Hashable] = set()
        self._spans: dict[int, Span] = {}  # row id -> its publish span
        # (topic, tenant, trace context) -> (publish span, its trace headers, rows in it)
        self._groups: dict[tuple, tuple[Span, dict[str, str], list[int]]] = {}

    def blocks(self, row) -> bool:
        blocked = self._blocked  # the usual batch fails nothing: no holds to build per row
        return bool(blocked) and (stream_hold(row.stream) in blocked or key_hold(row) in blocked)

    def fail(self, failure: Failure) -> None:
        self._result.failed.append(failure)
        self._blocked.add(hold_of(failure.row, failure.topic_level))

    def _span_of(self, row, topic: str) -> tuple[Span, dict[str, str], list[int]]:
        """The publish span of a row: one per topic, tenant and writer's trace context in a
        batch (the rows one transaction wrote share it), continuing that context (or a
        child of the batch span), so a batch of a billing run's chunk makes one span, not a
        thousand; it ends when the batch's reports are in."""
        headers = row.headers
        parent = headers.get("traceparent")
        key = (topic, row.tenant_id, parent, headers.get("tracestate"), headers.get("baggage"))
        group = self._groups.get(key)
        if group is None:
            span = tracing.tracer.start_span(
                _span_name(topic), context=tracing.extract(headers) if parent is not None else None,
                kind=SpanKind.PRODUCER,
                attributes={"messaging.system": "kafka", "messaging.destination.name": topic,
                            "messaging.operation.type": "send", "billing.outbox.id": row.id,
                            "billing.tenant_id": str(row.tenant_id)})
            group = self._groups[key] = (span, tracing.inject({}, trace.set_span_in_context(span)), [])
        return group

    def produce(self, row, topic: str) -> None:
        span, trace_headers, rows = self._span_of(row, topic)
        rows.append(row.id)
        try:
            value, ce_headers = self._format.message(row, topic)
        except (RegistryUnavailable, RegistryRefused, CodecError) as exc:
            # The registry concerns every row of the topic: hold the stream back, retry later.
            # A payload that is not Avro cannot be framed for it, ever: that row is parked.
            bad = isinstance(exc, CodecError)
            self.fail(Failure(row, f"schema registry: {exc}", topic_level=not bad,
                              park_reason="invalid_record" if bad else None))
            tracing.record_error(span, str(exc))
            return
        self._spans[row.id] = span
        headers = message_headers(row, trace_headers, ce_headers)
        while True:
            try:
                self._producer.produce(topic, value=value, key=row.key, headers=headers,
                                       on_delivery=self._on_delivery(row.id))
                self._produced.append(row)
                return
            except BufferError:
                self._producer.poll(0.05)  # local queue full: serve reports, try again
            except KafkaException as exc:
                # Refused at produce(): the client checked this message alone, so a
                # permanent error is proof at once and the row is parked.
                err = exc.args[0]
                self.fail(Failure(row, str(err), err.code() in TOPIC_ERRORS, fatal=err.fatal(), code=err.code(),
                                  park_reason=PERMANENT_ERRORS.get(err.code())))
                tracing.record_error(span, f"produce failed: {err}")
                return

    def _on_delivery(self, row_id: int) -> Callable:
        reports = self._reports

        def on_delivery(err, _msg) -> None:
            reports[row_id] = err
        return on_delivery

    def await_reports(self) -> bool:
        """Every produced message gets exactly one report (at the latest after
        message.timeout.ms); wait for all of them, but not past stop_grace_s after stop()."""
        give_up_at = None
        while len(self._reports) < len(self._produced):
            self._producer.flush(0.2)
            if self._stopping.is_set():
                give_up_at = give_up_at or time.monotonic() + self._stop_grace_s
                if time.monotonic() > give_up_at:
                    return False
        return True

    def await_alone(self, row) -> None:
        """A row sent alone: its failure blocks the rest of its key (or stream) at once."""
        self.await_reports()
        if (err := self._reports.get(row.id)) is not None:
            self._blocked.add(hold_of(row, err.code() in TOPIC_ERRORS))

    def outcome(self, isolated: Callable[[int], bool]) -> PublishResult:
        reports = self._reports
        delivered = self._result.delivered
        for row in self._produced:
            if row.id not in reports:
                self._result.unconfirmed.append(row)
                tracing.record_error(self._spans[row.id], f"delivery of outbox row {row.id} unconfirmed at stop")
            elif (err := reports[row.id]) is None:
                delivered.append(row)
            else:
                tracing.record_error(self._spans[row.id], f"delivery of outbox row {row.id} failed: {err}")
                # A broker refuses whole record batches: only a row refused alone is parked.
                park = PERMANENT_ERRORS.get(err.code()) if isolated(row.id) else None
                self._result.failed.append(Failure(row, str(err), err.code() in TOPIC_ERRORS, fatal=err.fatal(),
                                                   code=err.code(), park_reason=park))
        for span, _, rows in self._groups.values():
            span.set_attribute("billing.outbox.rows", len(rows))
            span.end()
        return self._result
