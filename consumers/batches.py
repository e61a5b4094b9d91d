"""Batch assembly, pure: what was fetched, what goes into the next batch, what a
rebalance or a fence takes away, and which offsets a batch stores."""
from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from itertools import groupby
from operator import itemgetter

from consumers.strategy import Message, TopicPartition

# Message fields by position: these run once per message of every batch, and a C-level
# map over an itemgetter is several times cheaper than a Python loop reading attributes.
_TP = itemgetter(0, 1)
_TOPIC = itemgetter(0)
_PARTITION = itemgetter(1)
_OFFSET = itemgetter(2)
_HEADERS = itemgetter(5)


def next_offsets(batch: Sequence[Message]) -> dict[TopicPartition, int]:
    """Per partition of the batch, the offset to store: its last offset + 1."""
    topic = _one_topic(batch)
    # A batch is runs of messages of one partition (as fetched): a Python step per run,
    # the messages of a run read in C; of one topic (the usual batch), keyed by the
    # partition alone, with no (topic, partition) tuple per message.
    last_of: dict = {}
    get = last_of.get
    for key, run in groupby(batch, _TP if topic is None else _PARTITION):
        last = max(map(_OFFSET, run))
        if last >= get(key, -1):
            last_of[key] = last
    if topic is None:
        return {tp: last + 1 for tp, last in last_of.items()}
    return {(topic, p): last + 1 for p, last in last_of.items()}


def partitions_of(batch: Sequence[Message]) -> set[TopicPartition]:
    topic = _one_topic(batch)
    if topic is None:
        return set(map(_TP, batch))
    return {(topic, p) for p in set(map(_PARTITION, batch))}


def _one_topic(batch: Sequence[Message]) -> str | None:
    """The batch's topic when it has exactly one (told in C), else None."""
    topics = set(map(_TOPIC, batch))
    return topics.pop() if len(topics) == 1 else None


def distinct_headers(batch: Sequence[Message]) -> Iterable[Mapping[str, bytes]]:
    """The batch's header dicts, each once: messages with the same headers share one dict
    (strategy.Message.from_kafka), so a check of every message's headers is a check of these."""
    headers = list(map(_HEADERS, batch))
    if not headers:
        return headers
    # The usual batch has one or two (say, the producer's and none): counted in C. Equal
    # dicts count alike, which is as good for every caller (they read the headers).
    first = headers[0]
    n = headers.count(first)
    if n == len(headers):
        return [first]
    second = next(h for h in headers if h is not first)
    if n + headers.count(second) == len(headers):
        return [first, second]
    return dict(zip(map(id, headers), headers)).values()


def without(messages: Sequence[Message], partitions: Collection[TopicPartition]) -> list[Message]:
    """The messages not of these partitions, in order."""
    return [m for m in messages if m.tp not in partitions]


def topics_of(batch: Iterable[Message]) -> str:
    return ",".join(sorted(set(map(_TOPIC, batch))))


class FetchBuffer:
    """Messages fetched and not yet in a batch, in consumption order, and `since`: when the
    oldest of them was fetched (on the caller's clock; None when empty), which starts the
    batch window (consumers/runner.py). Kept per fetch, not per message: messages fetched
    after the oldest are only younger, so a window from `since` is never too long."""

    def __init__(self) -> None:
        self._messages: list[Message] = []
        self.since: float | None = None
        self._taken_since: float | None = None  # `since` of the last batch taken (put_back)

    def __len__(self) -> int:
        return len(self._messages)

    def room(self, max_size: int) -> int:
        """How many more messages the next batch of `max_size` can take."""
        return max(0, max_size - len(self._messages))

    def extend(self, messages: Iterable[Message], at: float) -> None:
        """Messages fetched at `at`."""
        empty = not self._messages
        self._messages.extend(messages)
        if empty and self._messages:
            self.since = at

    def peek(self, max_size: int) -> list[Message]:
        """What `take(max_size)` would return now, left in the buffer."""
        return self._messages[:max_size]

    def take(self, max_size: int) -> list[Message]:
        """The next batch: the oldest `max_size` messages."""
        batch = self._messages[:max_size]
        del self._messages[:len(batch)]
        self._taken_since = self.since
        if not self._messages:
            self.since = None
        return batch

    def put_back(self, batch: Sequence[Message], fenced: Collection[TopicPartition]) -> None:
        """A batch fenced on some partitions: the others were not the problem, so their
        messages go back to the front, in order, for the next batch, which keeps the time they
        were first fetched (the batch window counts from it)."""
        back = without(batch, fenced)
        self._messages[:0] = back
        if back and self._taken_since is not None:
            self.since = self._taken_since if self.since is None else min(self.since, self._taken_since)

    def drop(self, partitions: Collection[TopicPartition]) -> None:
        """Partitions revoked or resynced: what was fetched of them is read again later."""
        self._messages = without(self._messages, partitions)
        if not self._messages:
            self.since = None

    def clear(self) -> None:
        self._messages.clear()
        self.since = None
