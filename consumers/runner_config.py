"""The consumer runner's settings as frozen values, built once by the composition root
(billing/runtime.py) and handed to `ConsumerRunner`."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from consumers.dlq_limit import DlqLimit


@dataclass(frozen=True)
class ConsumerSource:
    """What to consume, as which group. `kafka_config` is billing.kafka.consumer_config's;
    the runner forces its own offset handling on top (`client_config`)."""

    kafka_config: Mapping[str, object]
    topics: tuple[str, ...]
    group_id: str
    assign_timeout_s: float = 60.0  # reading the stored offsets of an assignment
    # Partitions lost and no assignment since for this long: the client is replaced.
    rejoin_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "topics", tuple(self.topics))
        if not self.topics:
            raise ValueError("topics must not be empty")
        group = self.kafka_config.get("group.id", self.group_id)
        if group != self.group_id:
            raise ValueError(f"kafka_config group.id {group!r} != group_id {self.group_id!r}")
        if "cooperative" in str(self.kafka_config.get("partition.assignment.strategy", "")):
            raise ValueError("the runner supports eager assignment only (range/roundrobin)")

    def client_config(self) -> dict:
        # Offsets live only in PostgreSQL: Kafka's own commit and offset store stay off.
        return {**self.kafka_config, "group.id": self.group_id, "enable.auto.commit": False,
                "enable.auto.offset.store": False}


@dataclass(frozen=True)
class Batching:
    """A batch is up to `max_size` messages, or fewer when its first message was fetched
    `max_wait_s` ago. Values over `max_message_bytes` are dead-lettered as too_large
    before the strategy sees them."""

    max_size: int = 5000
    max_wait_s: float = 0.2
    max_message_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.max_size < 1:
            raise ValueError(f"max_size must be >= 1, got {self.max_size}")
        if self.max_wait_s <= 0:
            raise ValueError(f"max_wait_s must be > 0, got {self.max_wait_s}")


@dataclass(frozen=True)
class DeadLetterPolicy:
    """Where dead letters go (no topic: a strategy that dead-letters is a bug) and when to
    stop producing them instead (`limit`)."""

    topic: str | None = None
    producer_config: Mapping[str, object] | None = None
    timeout_s: float = 30.0  # the broker's confirmation of a batch's dead letters
    limit: DlqLimit = field(default_factory=DlqLimit)

    def __post_init__(self) -> None:
        if self.topic and self.producer_config is None:
            raise ValueError("a dead-letter topic needs a producer_config (billing.kafka.producer_config)")
