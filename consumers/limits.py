"""Bounded consumption: messages too large to take are dead-lettered (reason `too_large`).

Two ways a message is too large:

* its value, as delivered (after decompression), is longer than the consumer's
  `max_message_bytes` (BILLING_KAFKA_MAX_MESSAGE_BYTES): dead-lettered by the runner
  before the strategy sees it, so no decoder ever parses it;
* its record batch would decompress beyond librdkafka's receive.message.max.bytes
  (zstd only: librdkafka caps zstd output there and fails the batch with
  _BAD_COMPRESSION, allocating no more). librdkafka then reports the same error on every
  fetch and never moves past the batch; the runner turns the error into a placeholder
  message (no key, no value) at the reported offset, seeks past it, and that placeholder
  is dead-lettered. A batch of several records is stepped through one offset at a time,
  each offset dead-lettered alike. The broker validates compressed batches when they are
  produced, so corrupt data cannot reach the topic: this error means "too large".

lz4, gzip and snappy batches are decompressed whole by librdkafka, with no limit; the
service's consumed topics are therefore created with compression.type=zstd, so the broker
recompresses whatever producers send into zstd (docs/kafka.md, "Bounded consumption").
"""
from __future__ import annotations

from operator import itemgetter

from confluent_kafka import KafkaError

from consumers.batches import distinct_headers
from consumers.strategy import DeadLetter, Message

TOO_LARGE = "too_large"
# Marks a placeholder made from a _BAD_COMPRESSION error; never set by a producer (dlq.*
# headers of incoming messages are replaced when dead-lettered).
PLACEHOLDER_HEADER = "dlq.undecompressable"


def is_undecompressable(err: KafkaError) -> bool:
    return err.code() == KafkaError._BAD_COMPRESSION


def placeholder(topic: str, partition: int, offset: int, error: str) -> Message:
    """A stand-in for a record librdkafka would not decompress."""
    value = error[:1000].encode()
    return Message(topic, partition, offset, None, None, {PLACEHOLDER_HEADER: value}, None,
                   ((PLACEHOLDER_HEADER, value),))


_VALUE = itemgetter(4)  # Message.value


def split_too_large(batch: list[Message], max_bytes: int | None) -> tuple[list[Message], list[DeadLetter]]:
    """(messages for the strategy, dead letters for the too large ones)."""
    # The usual batch has neither: told by C-level passes, before a loop over the messages.
    if not any(PLACEHOLDER_HEADER in h for h in distinct_headers(batch)) and (
            max_bytes is None or max(map(len, filter(None, map(_VALUE, batch))), default=0) <= max_bytes):
        return batch, []
    dead = []
    for m in batch:
        if PLACEHOLDER_HEADER in m.headers:
            dead.append(DeadLetter(m, TOO_LARGE, "record batch not decompressed: it would exceed "
                                   "receive.message.max.bytes (BILLING_KAFKA_FETCH_MAX_BYTES); librdkafka: "
                                   + m.headers[PLACEHOLDER_HEADER].decode(errors="replace")))
        elif max_bytes is not None and m.value is not None and len(m.value) > max_bytes:
            dead.append(DeadLetter(m, TOO_LARGE, f"value of {len(m.value)} bytes exceeds the limit of {max_bytes} "
                                   "(BILLING_KAFKA_MAX_MESSAGE_BYTES)"))
    if not dead:
        return batch, dead
    gone = {id(d.message) for d in dead}
    return [m for m in batch if id(m) not in gone], dead


class UndecompressableTracker:
    """Which offset to stand in for next, per partition. librdkafka reports the batch's
    base offset each time, also after we seeked into the batch, so after a placeholder at
    offset N the next error of that partition at or below N means offset N + 1."""

    def __init__(self) -> None:
        self._last: dict[tuple[str, int], int] = {}

    def next_offset(self, topic: str, partition: int, reported: int) -> int:
        last = self._last.get((topic, partition))
        offset = reported if last is None or reported > last else last + 1
        self._last[(topic, partition)] = offset
        return offset

    def forget(self) -> None:
        self._last.clear()
