"""What a consumer is to the runner: a `BatchStrategy` over detached `Message`s.

A strategy gets a PostgreSQL connection inside the runner's open transaction and a batch,
does its effects on that connection and returns a `BatchResult` naming the messages it
gives up on (dead letters). `Backpressure` means "not now": the runner rolls back and
retries the same batch later, as arroyo's MessageRejected does.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol, runtime_checkable

import asyncpg
from confluent_kafka import TIMESTAMP_NOT_AVAILABLE
from confluent_kafka import Message as KafkaMessage

__all__ = [
    "Backpressure", "BatchResult", "BatchStrategy", "DeadLetter", "Message", "RunnerObserver", "RunnerStats",
    "TopicPartition", "detach",
]

TopicPartition = tuple[str, int]

# Messages of one producer usually carry the same headers (a content type): their dict is
# built once and shared, read-only, by every message with exactly those headers.
_HEADER_DICTS: dict[tuple, dict[str, bytes]] = {}
_HEADER_DICTS_MAX = 1024
_NO_HEADERS: dict[str, bytes] = {}
_new = tuple.__new__


class Message(NamedTuple):
    """One Kafka record, detached from the client. A NamedTuple, not a frozen dataclass:
    one is built for every message, and a tuple is far cheaper to build."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    # Last value wins when a header repeats; see header_list. Read-only: shared between messages.
    headers: dict[str, bytes]
    timestamp_ms: int | None
    # The headers exactly as received (order, repeats, null values); the DLQ copies these.
    header_list: tuple[tuple[str, bytes | None], ...] = ()

    @classmethod
    def from_kafka(cls, msg: KafkaMessage, topic: str | None = None, partition: int | None = None) -> "Message":
        """`topic` and `partition`: the message's own, when the caller read them already."""
        raw, headers = _shared_headers(msg.headers())
        ts_type, ts = msg.timestamp()
        # tuple.__new__: the NamedTuple's own __new__ is a Python function, called per message.
        return _new(cls, (msg.topic() if topic is None else topic, msg.partition() if partition is None else partition,
                          msg.offset(), msg.key(), msg.value(), headers,
                          None if ts_type == TIMESTAMP_NOT_AVAILABLE else ts, raw))

    @property
    def tp(self) -> TopicPartition:
        return self.topic, self.partition


_UNSEEN = object()


def _shared_headers(listed: list | None) -> tuple[tuple, dict[str, bytes]]:
    """A message's headers as a tuple and as the dict every message with the same headers
    shares (read, never written)."""
    if not listed:
        return (), _NO_HEADERS
    raw = tuple(listed)
    headers = _HEADER_DICTS.get(raw)
    if headers is None:
        if len(_HEADER_DICTS) >= _HEADER_DICTS_MAX:
            _HEADER_DICTS.clear()
        headers = _HEADER_DICTS[raw] = {k: v for k, v in raw if v is not None}
    return raw, headers


def detach(fetched: list[KafkaMessage], assignment: Collection[TopicPartition],
           other: Callable[[KafkaMessage], Message | None]) -> list[Message]:
    """`Message.from_kafka` over a whole fetch, inline (no call per message): the messages
    without an error whose partition is in `assignment`, in order, and for each message
    with an error what `other` makes of it (None: nothing). Consecutive messages of a fetch
    share their partition and usually their headers: those are compared with the previous
    message's and looked up again only when they differ."""
    out: list[Message] = []
    add, cls = out.append, Message
    last_tp: TopicPartition | None = None
    last_list: object = _UNSEEN
    raw: tuple = ()
    headers = _NO_HEADERS
    for msg in fetched:
        if msg.error() is None:
            tp = (msg.topic(), msg.partition())
            if tp == last_tp or tp in assignment:
                last_tp = tp
                listed = msg.headers()
                if listed != last_list:
                    last_list = listed
                    raw, headers = _shared_headers(listed)
                ts_type, ts = msg.timestamp()
                add(_new(cls, (tp[0], tp[1], msg.offset(), msg.key(), msg.value(), headers,
                               None if ts_type == TIMESTAMP_NOT_AVAILABLE else ts, raw)))
        elif (m := other(msg)) is not None:
            add(m)
    return out


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

    # Optional (the runner calls it when the observer has it): as each batch starts, seconds
    # since its first message was fetched and that message's age by its Kafka timestamp.
    # def waited(self, fetched_s: float | None, age_s: float | None) -> None: ...

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
