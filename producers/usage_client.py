"""A small client for metering producers: usage events to `billing.usage.v1`.

```python
from billing.config import Settings
from producers.usage_client import UsageProducer

with UsageProducer(Settings()) as usage:
    usage.send("evt-1", tenant_id, subscription_id, "api_calls", "3", datetime.now(timezone.utc))
    failures = usage.flush(10)   # delivery failures since the last flush
```

Messages are Avro `billing.v1.UsageEvent` in single-object encoding (`billing.codec`), key =
subscription id, header ``content-type: application/vnd.apache.avro+binary;
schema=billing.v1.UsageEvent``, sent with the idempotent producer of `billing.kafka`
(acks=all; librdkafka retries never duplicate or reorder within a partition). Sending the
same ``event_id`` again is safe: the service counts an event id once per tenant.

`send` refuses obviously bad input at once with ``ValueError`` (what the service would
dead-letter anyway): an empty or too long event id, a tenant or subscription id that is
not a UUID, a negative or malformed quantity, a naive datetime. Delivery is asynchronous:
failures reported by the broker are collected as `DeliveryFailure`s, returned by `flush()`
and kept in `errors`. Leaving the ``with`` block flushes and raises `DeliveryError` if a
failure was not returned by an earlier `flush()`.
"""
from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from confluent_kafka import KafkaError, Producer
from opentelemetry import trace

from billing import codec
from billing.codec_confluent import to_confluent
from billing.registry import registry_for
from billing.ops import tracing
from billing.config import Settings
from billing.kafka import producer_config
from billing.services.usage import MAX_EVENT_ID, MAX_PROPERTIES, check_quantity, to_us

__all__ = ["UsageProducer", "DeliveryFailure", "DeliveryError", "AVRO_HEADERS"]

_SCHEMA = codec.Schema.USAGE_EVENT
AVRO_HEADERS = {"content-type": codec.content_type(_SCHEMA).encode()}  # a dict: faster than a list


@dataclass(frozen=True)
class DeliveryFailure:
    key: bytes | None
    value: bytes | None
    error: KafkaError

    @property
    def event_id(self) -> str | None:
        """The event id, when the value is an Avro UsageEvent."""
        try:
            return codec.decode(_SCHEMA, self.value)["event_id"]
        except codec.CodecError:
            return None

    def __str__(self) -> str:
        return f"event {self.event_id!r} (key {self.key!r}): {self.error.str()}"


class DeliveryError(Exception):
    def __init__(self, failures: list[DeliveryFailure]):
        super().__init__(f"{len(failures)} usage events not delivered; first: {failures[0]}")
        self.failures = failures


class UsageProducer:
    """Produces usage events. Not thread-safe: one per thread, or lock around it.

    ``linger_ms`` and ``batch_size`` (bytes) are librdkafka's ``linger.ms`` and
    ``batch.size``: larger batches for throughput, a shorter linger for latency. ``config``
    adds or overrides librdkafka settings.
    """

    def __init__(self, settings: Settings, *, topic: str | None = None, linger_ms: int = 20,
                 batch_size: int = 1_000_000, **config):
        self.topic = topic or settings.topics.usage
        self.errors: list[DeliveryFailure] = []  # every failure so far
        self.sent = 0  # messages handed to the client
        self._reported = 0  # failures already returned by flush()
        conf = producer_config(settings, **{
            "linger.ms": linger_ms,
            "batch.size": batch_size,
            "queue.buffering.max.messages": 500_000,
            # The usage topic stores zstd (billing.kafka_topics): sending zstd spares the broker
            # recompressing every batch.
            "compression.type": "zstd",
            # Successful deliveries need no callback: delivered = sent - failed - pending.
            "delivery.report.only.error": True,
            "on_delivery": self._on_delivery,
            **config,
        })
        self._producer = Producer(conf)
        # BILLING_KAFKA_WIRE_FORMAT=confluent: the registry's framing (docs/kafka.md, "Wire formats")
        self._registry = (registry_for(settings.schema_registry_url, settings.schema_registry_config)
                          if settings.kafka_wire_format == "confluent" else None)

    # ---------------------------------------------------------------- sending

    def send(self, event_id: str, tenant_id: str | uuid.UUID, subscription_id: str | uuid.UUID,
             metric_code: str, quantity: str | Decimal | int, occurred_at: datetime | int,
             properties: Mapping[str, str] | None = None) -> None:
        """Queue one event. ``occurred_at``: an aware datetime, or microseconds since the
        epoch (UTC). ``quantity``: a non-negative decimal as text or a ``Decimal``.
        Sent inside a span, the event carries its ``traceparent`` (docs/operations.md)."""
        if type(event_id) is not str or not 0 < len(event_id) <= MAX_EVENT_ID:
            raise ValueError(f"event_id must be a string of 1..{MAX_EVENT_ID} characters, got {event_id!r:.80}")
        tenant = _uuid_text("tenant_id", tenant_id)
        sub = _uuid_text("subscription_id", subscription_id)
        if type(metric_code) is not str or not metric_code:
            raise ValueError(f"metric_code must be a non-empty string, got {metric_code!r:.80}")
        record = {
            "event_id": event_id, "tenant_id": tenant, "subscription_id": sub, "metric_code": metric_code,
            "quantity": _quantity_text(quantity), "occurred_at_us": _to_us(occurred_at),
            "properties": _properties(properties),
        }
        headers = AVRO_HEADERS
        if trace.get_current_span().get_span_context().is_valid:
            headers = {**AVRO_HEADERS, **{k: v.encode() for k, v in tracing.inject({}).items()}}
        value = codec.encode(_SCHEMA, record)
        if self._registry is not None:  # registry unreachable: RegistryUnavailable (a ConnectionError)
            value = to_confluent(self._registry, self.topic, value)[0]
        self.send_encoded(sub.encode(), value, headers)

    def send_encoded(self, key: bytes | str | None, value: bytes | None, headers=None) -> None:
        """Queue a message as is (no checks): for load generators and tests. Waits for
        room when the local queue is full."""
        while True:
            try:
                self._producer.produce(self.topic, value, key, headers=headers)
                break
            except BufferError:
                self._producer.poll(0.05)  # serve delivery reports; the queue drains
        self.sent += 1
        if not self.sent & 0x3FF:
            self._producer.poll(0)

    @property
    def producer(self) -> Producer:
        """The underlying confluent-kafka producer, for callers that need raw speed (the
        load generator). Messages produced on it directly are not counted in `sent`;
        their failures still land in `errors`."""
        return self._producer

    # ---------------------------------------------------------------- delivery

    def _on_delivery(self, err, msg) -> None:
        if err is not None:
            self.errors.append(DeliveryFailure(msg.key(), msg.value(), err))

    @property
    def pending(self) -> int:
        """Messages not yet confirmed or failed."""
        return len(self._producer)

    @property
    def delivered(self) -> int:
        return self.sent - len(self.errors) - self.pending

    def poll(self, timeout: float = 0) -> None:
        """Serve delivery reports."""
        self._producer.poll(timeout)

    def flush(self, timeout: float = 30.0) -> list[DeliveryFailure]:
        """Wait until everything queued is delivered or failed; return the failures since
        the previous flush (also kept in `errors`). Raises ``TimeoutError`` when messages
        are still unconfirmed after ``timeout`` seconds (they may still be delivered)."""
        remaining = self._producer.flush(timeout)
        failures = self.errors[self._reported:]
        self._reported = len(self.errors)
        if remaining:
            raise TimeoutError(f"{remaining} usage events not confirmed after {timeout} s "
                               f"({len(failures)} failed meanwhile)")
        return failures

    def close(self, timeout: float = 30.0) -> list[DeliveryFailure]:
        return self.flush(timeout)

    def __enter__(self) -> "UsageProducer":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self._producer.flush(5.0)  # best effort; the exception in flight wins
            return
        failures = self.flush()
        if failures:
            raise DeliveryError(failures)


# -------------------------------------------------------------------- input checks


def _uuid_text(name: str, value) -> str:
    if isinstance(value, uuid.UUID):
        return str(value)
    try:
        return str(uuid.UUID(value))
    except (TypeError, ValueError, AttributeError):
        raise ValueError(f"{name} must be a UUID, got {value!r:.80}") from None


def _quantity_text(quantity) -> str:
    if isinstance(quantity, Decimal):
        if not quantity.is_finite():
            raise ValueError(f"quantity must be a finite decimal, got {quantity}")
        text = format(quantity, "f")
    elif isinstance(quantity, int) and not isinstance(quantity, bool):
        text = str(quantity)
    elif isinstance(quantity, str):
        text = quantity
    else:
        raise ValueError(f"quantity must be a decimal string or Decimal (never a float), got {type(quantity).__name__}")
    bad = check_quantity(text)
    if bad == "negative_quantity":
        raise ValueError(f"quantity must not be negative, got {text!r:.40}")
    if bad:
        raise ValueError(f"quantity must be a non-negative decimal (up to 15 digits, 12 after the point), "
                         f"got {text!r:.40}")
    return text


def _to_us(occurred_at) -> int:
    if isinstance(occurred_at, datetime):
        if occurred_at.tzinfo is None or occurred_at.utcoffset() is None:
            raise ValueError("occurred_at must be timezone-aware (a naive datetime's zone is unknown)")
        return to_us(occurred_at)
    if isinstance(occurred_at, int) and not isinstance(occurred_at, bool):
        return occurred_at
    raise ValueError(f"occurred_at must be an aware datetime or microseconds since the epoch, "
                     f"got {type(occurred_at).__name__}")


def _properties(properties) -> dict[str, str]:
    if properties is None:
        return {}
    if not isinstance(properties, Mapping):
        raise ValueError(f"properties must be a mapping of strings, got {type(properties).__name__}")
    if len(properties) > MAX_PROPERTIES:
        raise ValueError(f"at most {MAX_PROPERTIES} properties")
    for k, v in properties.items():
        if type(k) is not str or type(v) is not str:
            raise ValueError(f"properties must map strings to strings, got {k!r:.40}: {v!r:.40}")
    return dict(properties)
