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
from collections import deque
from itertools import repeat
from operator import add, is_

import asyncpg
from opentelemetry.trace import Span

from billing.ops import tracing
from billing.services import usage
from consumers import usage_avro
from consumers.batches import distinct_headers
from consumers.runner import BatchResult, DeadLetter, Message
from consumers.usage_payloads import decode_batch

Decoded = tuple[list[usage.UsageEvent], list[int], list[DeadLetter]]


class _Ahead:
    """The parts of one batch decoded ahead, in order, and how many messages they cover."""

    __slots__ = ("parts", "size", "strings")

    def __init__(self) -> None:
        self.parts: list[tuple[list[Message], Decoded]] = []
        self.size = 0
        self.strings = usage_avro.Strings()  # shared by the parts: the same values repeat


class UsageStrategy:
    # The dead-letter reasons this strategy gives (their metric series start at 0).
    dead_letter_reasons = ("undecodable", *usage.REJECTION_REASONS)

    def __init__(self, limits: usage.UsageLimits, plans: usage.PlanCache):
        self.limits = limits  # from the settings (billing/bootstrap.py), as RecordUsage's
        self.plans = plans
        # The batches decoded ahead (`predecode`): the next one, and the one in hand until
        # its `process` takes its parts (the runner starts the next before that).
        self._ahead: deque[_Ahead] = deque(maxlen=2)

    def predecode(self, messages: list[Message], start: int = 0) -> None:
        """Decode ahead the part of the next batch from position `start`: the runner calls
        this with each run of messages fetched for it, in order (`start` 0 begins a batch),
        while the current batch's transaction is in PostgreSQL, so the decoding is off the
        batches' critical path. Decoding is pure: a part stands for exactly the messages it
        was decoded from; anything else (a part missing or failed, a message not the same)
        is decoded again in `process`."""
        if start == 0:
            self._ahead.append(_Ahead())
        elif not self._ahead or self._ahead[-1].size != start:
            return  # a part before it is missing: the rest is decoded in `process`
        ahead = self._ahead[-1]
        try:
            ahead.parts.append((messages, decode_batch(messages, ahead.strings)))
        except Exception:  # noqa: BLE001 - process() decodes these again and raises it there
            ahead.size = -1
            return
        ahead.size += len(messages)

    def _decode(self, batch: list[Message]) -> Decoded:
        """The batch decoded: from its parts decoded ahead, as far as they are exactly its
        messages in order (each used once), the rest now."""
        ahead = next((a for a in self._ahead if a.parts and a.parts[0][0][0] is batch[0]), None) if batch else None
        if ahead is None:
            return decode_batch(batch)
        self._ahead.remove(ahead)
        events: list[usage.UsageEvent] = []
        positions: list[int] = []
        dead: list[DeadLetter] = []
        done = 0
        for messages, decoded in ahead.parts:
            n = len(messages)
            if done + n > len(batch) or not all(map(is_, messages, batch[done:done + n])):
                break
            if done == 0 and n == len(batch):
                return decoded
            ev, pos, dl = decoded
            events += ev
            positions += map(add, pos, repeat(done)) if done else pos
            dead += dl
            done += n
        if done < len(batch):
            ev, pos, dl = decode_batch(batch[done:], ahead.strings)
            events += ev
            positions += map(add, pos, repeat(done)) if done else pos
            dead += dl
        return events, positions, dead

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
