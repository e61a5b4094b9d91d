"""Kafka plumbing shared by every role: client settings and topic creation."""
from __future__ import annotations

import logging

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from billing.config import Settings

# librdkafka's own log lines go through Python logging (served by the client's poll and
# consume calls), so they come out as JSON like everything else, never raw on stderr.
KAFKA_LOG = logging.getLogger("librdkafka")


def producer_config(settings: Settings, **extra) -> dict:
    # Idempotent producer: retries never duplicate or reorder within a partition.
    return {
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "compression.type": "lz4",
        "logger": KAFKA_LOG,
        **extra,
    }


def consumer_config(settings: Settings, group_id: str, **extra) -> dict:
    # Offsets live in PostgreSQL with the effects; Kafka's own commit is off.
    return {
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        "group.id": group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
        "session.timeout.ms": settings.kafka_session_timeout_ms,
        "logger": KAFKA_LOG,
        **extra,
    }


def ensure_topics(settings: Settings, timeout_s: float = 30.0) -> list[str]:
    """Create the service's topics that do not exist yet; return the names created."""
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap_servers})
    existing = set(admin.list_topics(timeout=timeout_s).topics)
    wanted = [t for t in settings.topics.all() if t not in existing]
    if not wanted:
        return []
    futures = admin.create_topics(
        [NewTopic(t, num_partitions=settings.kafka_partitions, replication_factor=1) for t in wanted],
        operation_timeout=timeout_s,
    )
    created = []
    for topic, future in futures.items():
        try:
            future.result(timeout_s)
            created.append(topic)
        except KafkaException as exc:
            if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":
                raise
    return created
