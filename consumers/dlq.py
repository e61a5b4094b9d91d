"""Dead letters: the DLQ producer, the headers it adds, and the limit on bad messages.

A dead letter is produced with the original key and value bytes, the original headers
(except earlier `dlq.*` ones, which are replaced) and these headers, all UTF-8 strings:

    dlq.reason          short machine-readable code from the strategy ("undecodable", ...)
    dlq.detail          free text from the strategy (may be empty; cut to 4000 characters)
    dlq.topic           topic the message was read from
    dlq.partition       its partition (decimal)
    dlq.offset          its offset (decimal)
    dlq.consumer_group  the consumer group that gave up on it
    dlq.at              when, ISO 8601 UTC

`DeadLetterProducer.send` returns only after the broker confirmed every message
(idempotent producer, acks=all); anything else raises `DeadLetterDeliveryError`, which
the runner treats like a database outage: back off and retry the whole batch.
"""
from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from confluent_kafka import KafkaException, Producer

if TYPE_CHECKING:
    from consumers.runner import DeadLetter

log = logging.getLogger(__name__)

MAX_DETAIL_CHARS = 4000


class DeadLetterDeliveryError(Exception):
    """The DLQ topic did not confirm every dead letter; the batch is retried."""


class TooManyBadMessages(Exception):
    """Too large a share of recent messages was dead-lettered: the runner stops.

    Raised out of `ConsumerRunner.run()`; the batch that crossed the limit is not
    committed (no effects, no offsets, nothing produced to the DLQ).
    """

    def __init__(self, *, group: str, bad: int, sample: int, limit: float, reasons: dict[str, int]):
        self.group, self.bad, self.sample, self.limit, self.reasons = group, bad, sample, limit, reasons
        super().__init__(
            f"consumer group {group!r}: {bad} of the last {sample} messages were dead-lettered "
            f"({bad / sample:.0%} > limit {limit:.0%}); stopping instead of dead-lettering everything. "
            f"Reasons in the failing batch: {reasons}"
        )


def dead_letter_headers(dead_letter: DeadLetter, group: str, at: str) -> list[tuple[str, bytes | None]]:
    m = dead_letter.message
    kept = [(k, v) for k, v in m.header_list if not k.startswith("dlq.")]
    return kept + [
        ("dlq.reason", dead_letter.reason.encode()),
        ("dlq.detail", (dead_letter.detail or "")[:MAX_DETAIL_CHARS].encode()),
        ("dlq.topic", m.topic.encode()),
        ("dlq.partition", str(m.partition).encode()),
        ("dlq.offset", str(m.offset).encode()),
        ("dlq.consumer_group", group.encode()),
        ("dlq.at", at.encode()),
    ]


class DeadLetterProducer:
    """Produces dead letters and waits for the broker's confirmation. Blocking: call it
    from a worker thread (the runner does)."""

    def __init__(self, config: dict, topic: str, group: str, *, timeout_s: float = 30.0):
        self.topic = topic
        self.group = group
        self.timeout_s = timeout_s
        # A dead letter that cannot be delivered must fail within our wait, not linger in
        # the queue and arrive after the batch was already retried.
        self._config = {"message.timeout.ms": int(timeout_s * 1000), **config}
        self._producer = Producer(self._config)

    def send(self, dead_letters: Sequence[DeadLetter]) -> None:
        if not dead_letters:
            return
        at = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        errors: list = []

        def on_delivery(err, _msg) -> None:
            if err is not None:
                errors.append(err)

        for dl in dead_letters:
            while True:
                try:
                    self._producer.produce(
                        self.topic, key=dl.message.key, value=dl.message.value,
                        headers=dead_letter_headers(dl, self.group, at), on_delivery=on_delivery,
                    )
                    break
                except BufferError:
                    self._producer.poll(0.05)  # local queue full: let deliveries drain
                except KafkaException as exc:
                    raise DeadLetterDeliveryError(f"DLQ produce to {self.topic!r} failed: {exc}") from exc
        left = self._producer.flush(self.timeout_s + 5)
        if errors and any(e.fatal() for e in errors):
            # A fatal error (idempotence broken) leaves the producer unusable: start over.
            self._producer = Producer(self._config)
        if left or errors:
            first = errors[0] if errors else "not confirmed in time"
            raise DeadLetterDeliveryError(
                f"{len(errors) + left} of {len(dead_letters)} dead letters to {self.topic!r} failed: {first}")

    def close(self) -> None:
        left = self._producer.flush(5)
        if left:
            log.warning("DLQ producer closed with %d undelivered messages", left, extra={"group": self.group})


class BadShareWindow:
    """Outcomes (dead-lettered or not) of the last `size` messages, in consumption order.

    `check` looks at the window as it would be after a batch, never narrower than the
    batch itself, so a batch larger than the window is judged as a whole. Only a
    committed batch enters the window (`record`), so a retried batch is not counted twice.
    """

    def __init__(self, size: int, max_bad_share: float, min_sample: int):
        self.size = size
        self.max_bad_share = max_bad_share
        self.min_sample = min_sample
        self._outcomes: deque[bool] = deque(maxlen=size)

    def exceeded(self, flags: Sequence[bool]) -> tuple[bool, int, int]:
        """(over the limit?, bad count, sample size) for the window after `flags`."""
        keep = max(0, self.size - len(flags))
        tail = list(self._outcomes)[-keep:] if keep else []
        sample = len(tail) + len(flags)
        bad = sum(tail) + sum(flags)
        over = sample >= self.min_sample and bad / sample > self.max_bad_share
        return over, bad, sample

    def record(self, flags: Sequence[bool]) -> None:
        self._outcomes.extend(flags)
