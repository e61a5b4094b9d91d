"""Dead letters: the DLQ producer and the headers it adds (the limit: consumers/dlq_limit.py).

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

A message too large for the DLQ topic (the source topic may allow more than the DLQ, or
the copy plus the `dlq.*` headers crosses the limit) must not block the stream behind it:
it is dead-lettered with its value cut to the first `TRUNCATED_VALUE_BYTES` bytes and
these headers added; the whole original stays on the source topic at `dlq.offset` for the
topic's retention:

    dlq.value_truncated     "true"
    dlq.value_bytes         size of the original value (decimal)
    dlq.value_sha256        hex SHA-256 of the original value
"""
from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from datetime import datetime, timezone

from confluent_kafka import KafkaError, KafkaException, Producer

from consumers.strategy import DeadLetter

log = logging.getLogger(__name__)

MAX_DETAIL_CHARS = 4000
# The DLQ producer takes messages up to this size (librdkafka's default is 1 MB); the
# broker's limit for the DLQ topic decides in the end, and beyond it the value is cut.
MAX_DLQ_MESSAGE_BYTES = 16 * 1024 * 1024
TRUNCATED_VALUE_BYTES = 64 * 1024


class DeadLetterDeliveryError(Exception):
    """The DLQ topic did not confirm every dead letter; the batch is retried."""


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
        self._config = {"message.timeout.ms": int(timeout_s * 1000), "message.max.bytes": MAX_DLQ_MESSAGE_BYTES,
                        **config}
        self._producer = Producer(self._config)

    def _produce(self, dl: DeadLetter, at: str, on_delivery, *, truncate: bool = False) -> None:
        value = dl.message.value
        headers = dead_letter_headers(dl, self.group, at)
        if truncate and value is not None:
            original = bytes(value)
            value = original[:TRUNCATED_VALUE_BYTES]
            headers += [("dlq.value_truncated", b"true"), ("dlq.value_bytes", str(len(original)).encode()),
                        ("dlq.value_sha256", hashlib.sha256(original).hexdigest().encode())]
        while True:
            try:
                self._producer.produce(self.topic, key=dl.message.key, value=value, headers=headers,
                                       on_delivery=on_delivery)
                return
            except BufferError:
                self._producer.poll(0.05)  # local queue full: let deliveries drain
            except KafkaException as exc:
                if not truncate and exc.args and exc.args[0].code() == KafkaError.MSG_SIZE_TOO_LARGE:
                    return self._produce(dl, at, on_delivery, truncate=True)
                raise DeadLetterDeliveryError(f"DLQ produce to {self.topic!r} failed: {exc}") from exc

    def send(self, dead_letters: Sequence[DeadLetter]) -> None:
        if not dead_letters:
            return
        at = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        errors: list = []
        too_large: list[DeadLetter] = []

        def deliveries(dl: DeadLetter, truncated: bool):
            def on_delivery(err, _msg) -> None:
                if err is None:
                    return
                if err.code() == KafkaError.MSG_SIZE_TOO_LARGE and not truncated:
                    too_large.append(dl)  # the broker's limit for the DLQ topic: send it cut
                else:
                    errors.append(err)
            return on_delivery

        for dl in dead_letters:
            self._produce(dl, at, deliveries(dl, False))
        left = self._producer.flush(self.timeout_s + 5)
        if too_large and not left:
            for dl in too_large:
                self._produce(dl, at, deliveries(dl, True), truncate=True)
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
