"""The usage consumer: Avro or CloudEvents JSON from `billing.usage.v1`, aggregated in batches.

One runner batch is one transaction: the raw events and the totals of every tenant in the
batch, and the Kafka offsets. Bad events (undecodable, unknown tenant or subscription,
metric not on the plan, bad quantity, out of the time window) are dead-lettered with the
reason; they never stop the stream, and a good event after a bad one still counts.

Tracing: the batch is one span of the runner (linked to the traces of up to 100 of its
events). Events are aggregated together, so per-event spans would cost more than the
work; only events that carry a `traceparent` header get one (`usage event`, a child of
the producer's trace, linked to the batch span, covering the batch's database work and
marked as an error when the event is dead-lettered), at most 100 per batch.
"""
from __future__ import annotations

import time
from operator import is_

import asyncpg
from opentelemetry.trace import Span

from billing.ops import tracing
from billing.services import usage
from consumers.batches import distinct_headers
from consumers.runner import BatchResult, DeadLetter, Message
from consumers.usage_payloads import decode_batch

Decoded = tuple[list[usage.UsageEvent], list[int], list[DeadLetter]]


class UsageStrategy:
    # The dead-letter reasons this strategy gives (their metric series start at 0).
    dead_letter_reasons = ("undecodable", *usage.REJECTION_REASONS)

    def __init__(self, limits: usage.UsageLimits, plans: usage.PlanCache):
        self.limits = limits  # from the settings (billing/bootstrap.py), as RecordUsage's
        self.plans = plans
        # Batches decoded ahead (`predecode`), each with the messages it was decoded from:
        # at most two, since the runner may decode the batch after next before the batch it
        # has just taken reaches `process` (its transaction opens first).
        self._ahead: list[tuple[list[Message], Decoded]] = []

    def predecode(self, batch: list[Message]) -> None:
        """Decode the next batch ahead: the runner calls this while the current batch's
        transaction is in PostgreSQL. Decoding is pure, so the result stands for exactly
        these messages; anything else (or any error) is decoded again in `process`."""
        try:
            decoded = decode_batch(batch)
        except Exception:  # noqa: BLE001 - process() decodes again and raises it there
            return
        self._ahead = [*self._ahead[-1:], (batch, decoded)]

    def _decode(self, batch: list[Message]) -> Decoded:
        """The batch's decoding ahead if there is one for exactly these messages (used once,
        with any older one), else decoded now."""
        for i, (messages, decoded) in enumerate(self._ahead):
            if len(messages) == len(batch) and all(map(is_, messages, batch)):
                del self._ahead[:i + 1]
                return decoded
        return decode_batch(batch)

    async def process(self, conn: asyncpg.Connection, batch: list[Message]) -> BatchResult:
        spans = _event_spans(batch)
        try:
            events, positions, dead = self._decode(batch)
            result = await usage.ingest(conn, events, now_us=time.time_ns() // 1000, limits=self.limits,
                                        plans=self.plans, periods=False)
            for r in result.rejected:
                dead.append(DeadLetter(batch[positions[r.index]], r.reason, r.detail))
        except BaseException as exc:
            for span in spans.values():
                tracing.record_error(span, exc)
                span.end()
            raise
        if spans:
            for d in dead:
                span = spans.get((d.message.partition, d.message.offset))
                if span is not None:
                    span.set_attribute("billing.dead_letter_reason", d.reason)
                    tracing.record_error(span, f"dead-lettered: {d.reason}")
            for span in spans.values():
                span.end()
        return BatchResult(dead_letters=dead, counters={
            "received": len(batch), "inserted": result.inserted, "duplicates": result.duplicates,
            "late": result.late,
        })


def _event_spans(batch: list[Message]) -> dict[tuple[int, int], Span]:
    """Spans for the first MAX_MESSAGE_SPANS events that carry a trace context."""
    spans: dict[tuple[int, int], Span] = {}
    if not any("traceparent" in h for h in distinct_headers(batch)):
        return spans
    for msg in batch:
        if "traceparent" in msg.headers:
            spans[(msg.partition, msg.offset)] = tracing.start_message_span("usage event", msg.headers, attributes={
                "messaging.system": "kafka", "messaging.destination.name": msg.topic,
                "messaging.destination.partition.id": str(msg.partition), "messaging.kafka.offset": msg.offset})
            if len(spans) >= tracing.MAX_MESSAGE_SPANS:
                break
    return spans
