"""Per owned partition: the next offset stored in PostgreSQL (what fencing expects) and
the high watermark last fetched (what lag is measured against). Pure."""
from __future__ import annotations

from collections.abc import Iterable, Mapping

from consumers.strategy import TopicPartition


class Positions:
    def __init__(self) -> None:
        # None: nothing stored yet for an owned partition (it starts at the beginning).
        self._expected: dict[TopicPartition, int | None] = {}
        self._high: dict[TopicPartition, tuple[int, int]] = {}  # (low, high)

    def owned(self) -> list[TopicPartition]:
        return list(self._expected)

    def assigned(self, stored: Mapping[TopicPartition, int | None]) -> None:
        self._expected.update(stored)

    def revoked(self, partitions: Iterable[TopicPartition]) -> None:
        for tp in partitions:
            self._expected.pop(tp, None)
            self._high.pop(tp, None)

    def stored(self, offsets: Mapping[TopicPartition, int | None]) -> None:
        """Offsets this runner committed, or re-read after another writer moved them."""
        self._expected.update(offsets)

    def watermarks(self, marks: Mapping[TopicPartition, tuple[int, int]]) -> None:
        self._high.update(marks)

    def expected(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int | None]:
        """What the stored offsets of these partitions must still hold (owned ones only)."""
        return {tp: self._expected[tp] for tp in partitions if tp in self._expected}

    def lag(self, partitions: Iterable[TopicPartition]) -> list[tuple[TopicPartition, int]]:
        """(partition, messages behind) for those owned with a known watermark."""
        out = []
        for tp in partitions:
            if tp not in self._expected or tp not in self._high:
                continue
            low, high = self._high[tp]
            position = self._expected[tp]
            if position is None:  # nothing stored yet: the whole retained log is ahead
                position = max(low, 0)
            out.append((tp, high - position))
        return out
