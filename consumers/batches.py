"""Batch assembly, pure: what was fetched, what goes into the next batch, what a
rebalance or a fence takes away, and which offsets a batch stores."""
from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence

from consumers.strategy import Message, TopicPartition


def next_offsets(batch: Iterable[Message]) -> dict[TopicPartition, int]:
    """Per partition of the batch, the offset to store: its last offset + 1."""
    out: dict[TopicPartition, int] = {}
    get = out.get
    for m in batch:
        tp, after = (m.topic, m.partition), m.offset + 1
        if after > get(tp, -1):
            out[tp] = after
    return out


def without(messages: Sequence[Message], partitions: Collection[TopicPartition]) -> list[Message]:
    """The messages not of these partitions, in order."""
    return [m for m in messages if m.tp not in partitions]


def topics_of(batch: Iterable[Message]) -> str:
    return ",".join(sorted({m.topic for m in batch}))


class FetchBuffer:
    """Messages fetched and not yet in a batch, in consumption order."""

    def __init__(self) -> None:
        self._messages: list[Message] = []

    def __len__(self) -> int:
        return len(self._messages)

    def room(self, max_size: int) -> int:
        """How many more messages the next batch of `max_size` can take."""
        return max(0, max_size - len(self._messages))

    def extend(self, messages: Iterable[Message]) -> None:
        self._messages.extend(messages)

    def take(self, max_size: int) -> list[Message]:
        """The next batch: the oldest `max_size` messages."""
        batch = self._messages[:max_size]
        del self._messages[:len(batch)]
        return batch

    def put_back(self, batch: Sequence[Message], fenced: Collection[TopicPartition]) -> None:
        """A batch fenced on some partitions: the others were not the problem, so their
        messages go back to the front, in order, for the next batch."""
        self._messages[:0] = without(batch, fenced)

    def drop(self, partitions: Collection[TopicPartition]) -> None:
        """Partitions revoked or resynced: what was fetched of them is read again later."""
        self._messages = without(self._messages, partitions)

    def clear(self) -> None:
        self._messages.clear()
