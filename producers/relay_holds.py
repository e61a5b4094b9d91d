"""The relay's hold-and-park bookkeeping, pure: which rows wait, until when, and which
are retried alone before they are parked.

A row whose delivery failed holds back every later row of its stream and key (of the
whole stream when the topic itself failed) until it is retried with exponential backoff;
other keys and streams keep flowing. A row Kafka refuses for good is parked instead
(the database then holds its key back). A broker refuses whole record batches, so a row
refused by the broker among others is first retried alone ("isolated") and parked only
if that fails the same way.
"""
from __future__ import annotations

import logging
import uuid
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Protocol

from confluent_kafka import KafkaError

log = logging.getLogger(__name__)

# Errors that concern the topic, not the message: hold back the whole stream.
TOPIC_ERRORS = frozenset({
    KafkaError._UNKNOWN_TOPIC,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError.TOPIC_EXCEPTION,
    KafkaError._UNKNOWN_PARTITION,
})

# Errors that concern the message itself and that retrying never cures, with the reason a
# row is parked under (a bounded set, also the metric label).
PERMANENT_ERRORS = {
    KafkaError.MSG_SIZE_TOO_LARGE: "message_too_large",
    KafkaError.RECORD_LIST_TOO_LARGE: "message_too_large",
    KafkaError.INVALID_RECORD: "invalid_record",
}
PARK_REASONS = frozenset(PERMANENT_ERRORS.values())


class Row(Protocol):
    """What the bookkeeping needs of an outbox row (billing.store.outbox_relay.PendingRow)."""

    @property
    def id(self) -> int: ...
    @property
    def stream(self) -> str: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def tenant_id(self) -> uuid.UUID: ...


@dataclass
class Failure:
    row: Row
    reason: str
    topic_level: bool
    fatal: bool = False
    code: int | None = None
    park_reason: str | None = None  # set: refused for good, the row is parked, not retried


@dataclass
class PublishResult:
    delivered: list[Row] = field(default_factory=list)
    failed: list[Failure] = field(default_factory=list)
    unconfirmed: list[Row] = field(default_factory=list)  # stopped before the report came
    started: float = 0.0


@dataclass(frozen=True)
class Hold:
    retry_at: float
    attempts: int
    reason: str


def key_hold(row: Row) -> Hashable:
    # Without a key Kafka promises no order, so a failed keyless row only holds itself.
    return ("key", row.stream, row.key) if row.key is not None else ("row", row.id)


def stream_hold(stream: str) -> Hashable:
    return ("stream", stream)


def hold_of(row: Row, topic_level: bool) -> Hashable:
    return stream_hold(row.stream) if topic_level else key_hold(row)


class HoldBook:
    def __init__(self, retry_backoff_s: float, max_retry_backoff_s: float, group: str = "default"):
        self._group = group
        self._backoff_s = retry_backoff_s
        self._max_backoff_s = max_retry_backoff_s
        self._holds: dict[Hashable, Hold] = {}
        # Rows a broker refused with a permanent error while other messages were in flight:
        # their next attempt is made alone, and parks them if it fails the same way.
        self._isolate: set[int] = set()

    def clear(self) -> None:
        """A new leadership starts without the previous one's holds."""
        self._holds.clear()
        self._isolate.clear()

    def hold(self, key: Hashable) -> Hold | None:
        return self._holds.get(key)

    def held(self, row: Row, now: float) -> bool:
        if not self._holds:  # the usual case: nothing held, no keys to build per row
            return False
        return any((h := self._holds.get(k)) is not None and h.retry_at > now
                   for k in (stream_hold(row.stream), key_hold(row)))

    def held_streams(self, now: float) -> list[str]:
        """Streams held as a whole: the scan need not read their rows."""
        return [k[1] for k, h in self._holds.items() if k[0] == "stream" and h.retry_at > now]

    def isolated(self, row_id: int) -> bool:
        return row_id in self._isolate

    def next_retry_in(self, now: float) -> float | None:
        waits = [h.retry_at - now for h in self._holds.values() if h.retry_at > now]
        return min(waits) if waits else None

    def prune(self, now: float) -> None:
        # A hold long past its retry time whose rows were not seen again (published by
        # another leader) is forgotten; so are isolated ids once too many piled up.
        for k in [k for k, h in self._holds.items() if now - h.retry_at > 2 * self._max_backoff_s]:
            del self._holds[k]
        if len(self._isolate) > 10_000:
            self._isolate.clear()

    def settle(self, result: PublishResult, now: float) -> dict[Hashable, Hold]:
        """Release what was delivered, hold what failed; returns the holds set now."""
        delivered_up_to: dict[Hashable, int] = {}
        for row in result.delivered:
            self._isolate.discard(row.id)
            self._holds.pop(key_hold(row), None)
            self._holds.pop(stream_hold(row.stream), None)
            delivered_up_to[key_hold(row)] = max(delivered_up_to.get(key_hold(row), 0), row.id)
        by_hold: dict[Hashable, list[Failure]] = {}
        for f in result.failed:
            if f.park_reason:  # parked: the database holds it and the later rows of its key back
                self._isolate.discard(f.row.id)
                self._holds.pop(key_hold(f.row), None)
                continue
            if f.code in PERMANENT_ERRORS:
                self._isolate.add(f.row.id)  # refused in a batch: the next attempt is alone
            by_hold.setdefault(hold_of(f.row, f.topic_level), []).append(f)
            _warn_if_order_broken(f, delivered_up_to.get(key_hold(f.row), 0))
        for row in result.unconfirmed:
            # Stopped before the report came: unknown outcome, left for the next leader.
            log.warning("outbox relay: delivery unconfirmed at stop; the row will be published again",
                        extra={"outbox_id": row.id, "stream": row.stream})
        return {key: self._hold(key, failures, now) for key, failures in by_hold.items()}

    def _hold(self, key: Hashable, failures: list[Failure], now: float) -> Hold:
        previous = self._holds.get(key)
        attempts = (previous.attempts if previous else 0) + 1
        delay = min(self._max_backoff_s, self._backoff_s * 2 ** min(attempts - 1, 20))
        self._holds[key] = hold = Hold(now + delay, attempts, failures[0].reason)
        first = failures[0].row
        log.error("outbox relay: delivery failed; rows stay unpublished and are retried", extra={
            "group": self._group, "stream": first.stream, "rows": len(failures), "first_outbox_id": first.id,
            "tenant_id": str(first.tenant_id), "reason": failures[0].reason, "whole_stream": key[0] == "stream",
            "attempt": attempts, "retry_in_s": delay})
        return hold


def _warn_if_order_broken(failure: Failure, later_delivered: int) -> None:
    # A broker refusing one message and accepting a later one of the same key in the same
    # batch: the one case the relay cannot repair.
    if later_delivered > failure.row.id:
        log.error("outbox relay: a row failed after a later row of its key was delivered; "
                  "the key's order is broken on the topic", extra={
                      "outbox_id": failure.row.id, "later_outbox_id": later_delivered, "stream": failure.row.stream,
                      "reason": failure.reason})

