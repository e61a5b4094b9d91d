"""Kafka plumbing shared by every role: the configuration of every client it creates.

Every client (consumers, producers, the relay, dead-letter producers, admin clients of
`billing topics`, readiness and the start-up check, `billing produce-usage`,
`UsageProducer`) is configured from `client_config`: the bootstrap servers, the user's
properties (BILLING_KAFKA_CONFIG / BILLING_KAFKA_CONFIG_FILE, `file:` secrets read now)
and our logger. Topic creation and checks are in billing.kafka_topics.
"""
from __future__ import annotations

import logging

from billing import kafka_properties
from billing.config import Settings

# librdkafka's own log lines go through Python logging (served by the client's poll and
# consume calls), so they come out as JSON like everything else, never raw on stderr.
KAFKA_LOG = logging.getLogger("librdkafka")

# Fixed last, over anything a caller passes: the delivery guarantees rest on them.
_PRODUCER_FIXED = {"enable.idempotence": True, "acks": "all"}
_CONSUMER_FIXED = {"enable.auto.commit": False, "enable.auto.offset.store": False,
                   "isolation.level": "read_committed"}


def user_properties(settings: Settings) -> dict[str, str]:
    """The user's librdkafka properties, file then JSON, with `file:` secrets resolved."""
    return kafka_properties.resolve(kafka_properties.merged(settings.kafka_config, settings.kafka_config_file))


def client_config(settings: Settings) -> dict:
    """What every Kafka client gets: bootstrap servers, the user's properties, the logger."""
    return {"bootstrap.servers": settings.kafka_bootstrap_servers, **user_properties(settings), "logger": KAFKA_LOG}


def producer_config(settings: Settings, **extra) -> dict:
    # Idempotent producer: retries never duplicate or reorder within a partition.
    return {"linger.ms": 5, "compression.type": "lz4", **client_config(settings), **extra, **_PRODUCER_FIXED}


def consumer_config(settings: Settings, group_id: str, **extra) -> dict:
    # Offsets live in PostgreSQL with the effects; Kafka's own commit is off.
    # fetch.max.bytes bounds one fetch response; receive.message.max.bytes (librdkafka keeps it
    # at least fetch.max.bytes + 512) also caps what one zstd batch may decompress to.
    fetch = settings.kafka_fetch_max_bytes
    return {
        "auto.offset.reset": "earliest",
        **client_config(settings),
        "group.id": group_id,
        "session.timeout.ms": settings.kafka_session_timeout_ms,
        "fetch.max.bytes": fetch,
        "max.partition.fetch.bytes": min(fetch, max(settings.kafka_max_message_bytes, 1024 * 1024)),
        "receive.message.max.bytes": fetch + 512,
        **extra,
        **_CONSUMER_FIXED,
    }


def admin_config(settings: Settings, **extra) -> dict:
    return {**client_config(settings), **extra}


def ensure_topics(settings: Settings, timeout_s: float = 30.0) -> list[str]:
    """Create the service's topics that do not exist yet; return the names created.
    Raises when a topic cannot be created (see billing.kafka_topics.create_missing)."""
    from billing.kafka_topics import create_missing

    return create_missing(settings, timeout_s=timeout_s, raise_errors=True).created
