"""How many dead letters a consumer may produce before it stops instead.

A bug or a misconfiguration can make every message look bad; dead-lettering the whole
stream would hide it. The limit is one frozen value (`DlqLimit`, after arroyo's), built
once from the settings; `DlqLimitState` keeps the recent outcomes and judges a batch
before it commits. Pure: no Kafka, no database.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from operator import itemgetter

from consumers.strategy import DeadLetter, Message


@dataclass(frozen=True)
class DlqLimit:
    """Stop when more than `max_bad_share` of the last `window` messages (judged once at
    least `min_sample` are known) were dead-lettered, or, when `max_consecutive` is set,
    when more than that many in a row were."""

    max_bad_share: float = 0.5
    window: int = 1000
    min_sample: int = 100
    max_consecutive: int | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.max_bad_share <= 1:
            raise ValueError(f"max_bad_share must be within 0..1, got {self.max_bad_share}")
        if self.window < 1:
            raise ValueError(f"window must be at least 1, got {self.window}")
        if self.min_sample < 1:
            raise ValueError(f"min_sample must be at least 1, got {self.min_sample}")
        if self.max_consecutive is not None and self.max_consecutive < 0:
            raise ValueError(f"max_consecutive must be at least 0, got {self.max_consecutive}")


@dataclass(frozen=True)
class Breach:
    """Why a batch would cross the limit: `bad` of `sample` messages against `limit`."""

    bad: int
    sample: int
    consecutive: bool = False


class TooManyBadMessages(Exception):
    """Too large a share of recent messages was dead-lettered: the runner stops.

    Raised out of `ConsumerRunner.run()`; the batch that crossed the limit is not
    committed (no effects, no offsets, nothing produced to the DLQ).
    """

    def __init__(self, *, group: str, bad: int, sample: int, limit: float, reasons: dict[str, int],
                 consecutive: bool = False):
        self.group, self.bad, self.sample, self.limit, self.reasons = group, bad, sample, limit, reasons
        if consecutive:
            text = f"{bad} consecutive messages were dead-lettered (limit {int(limit)})"
        else:
            text = f"{bad} of the last {sample} messages were dead-lettered ({bad / sample:.0%} > limit {limit:.0%})"
        super().__init__(f"consumer group {group!r}: {text}; stopping instead of dead-lettering everything. "
                         f"Reasons in the failing batch: {reasons}")


class DlqLimitState:
    """Outcomes (dead-lettered or not) of the last `limit.window` messages, in consumption
    order. A batch is judged as the window would be after it, never narrower than the
    batch itself, so a batch larger than the window is judged as a whole. Only a committed
    batch is recorded, so a retried batch is not counted twice."""

    def __init__(self, limit: DlqLimit):
        self.limit = limit
        self._outcomes: deque[bool] = deque(maxlen=limit.window)
        self._consecutive = 0  # dead letters in a row at the end of what was recorded

    def judge(self, flags: Sequence[bool]) -> Breach | None:
        """The breach the batch with these outcomes would cause, or None."""
        keep = max(0, self.limit.window - len(flags))
        tail = list(self._outcomes)[-keep:] if keep else []
        sample = len(tail) + len(flags)
        bad = sum(tail) + sum(flags)
        if sample >= self.limit.min_sample and bad / sample > self.limit.max_bad_share:
            return Breach(bad, sample)
        run = self._run_after(flags)
        if self.limit.max_consecutive is not None and run > self.limit.max_consecutive:
            return Breach(run, run, consecutive=True)
        return None

    def record(self, flags: Sequence[bool]) -> None:
        self._consecutive = self._run_after(flags)
        self._outcomes.extend(flags)

    def _run_after(self, flags: Sequence[bool]) -> int:
        trailing = 0
        for flag in reversed(flags):
            if not flag:
                return trailing
            trailing += 1
        return self._consecutive + trailing

    def error(self, breach: Breach, group: str, dead: Sequence[DeadLetter]) -> TooManyBadMessages:
        reasons: dict[str, int] = {}
        for d in dead:
            reasons[d.reason] = reasons.get(d.reason, 0) + 1
        limit = float(self.limit.max_consecutive or 0) if breach.consecutive else self.limit.max_bad_share
        return TooManyBadMessages(group=group, bad=breach.bad, sample=breach.sample, limit=limit,
                                  reasons=reasons, consecutive=breach.consecutive)


_KEY = itemgetter(0, 1, 2)  # Message (topic, partition, offset)


def dead_flags(batch: Sequence[Message], dead: Sequence[DeadLetter]) -> list[bool]:
    """Per message of the batch, in order: was it dead-lettered? A dead letter for a
    message not in the batch is a strategy's bug."""
    if not dead:
        return [False] * len(batch)
    # Strategies dead-letter the batch's own Message objects: told by identity, in C, with
    # no key tuple per message; any other dead letter is looked up by its coordinates.
    ids = {id(d.message) for d in dead}
    flags = list(map(ids.__contains__, map(id, batch)))
    if flags.count(True) == len(ids):
        return flags
    index = dict(zip(map(_KEY, batch), range(len(batch))))
    flags = [False] * len(batch)
    for d in dead:
        i = index.get((d.message.topic, d.message.partition, d.message.offset))
        if i is None:
            raise ValueError(f"dead letter for a message not in the batch: {d.message!r}")
        flags[i] = True
    return flags
