"""The Confluent Schema Registry wire format, beside the codec's single-object encoding.

    00 | 4-byte big-endian schema id (the registry's) | Avro binary payload

The Avro body is the same bytes in both formats for the same writer schema, so a message
changes format by changing its header only: `to_confluent` swaps the single-object header
(C3 01 + fingerprint) for the registry's id of that writer schema, registered under the
TopicNameStrategy subject `<topic>-value`. Reading goes the other way: the schema of an id
is fetched once, matched to a known version by its fingerprint (or kept as a history
version: Avro resolution to the current schema still applies), and `billing.codec.decode`
reads either format, told apart by the first byte.

The registry client is `confluent_kafka.schema_registry.SchemaRegistryClient` (it caches
ids and schemas itself); this module keeps no state but the ids it has seen.
"""
from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Protocol

from billing import codec

__all__ = ["SchemaIds", "RegistryUnavailable", "subject", "to_confluent", "set_registry_resolver",
           "is_confluent", "schema_id_of"]


class RegistryUnavailable(ConnectionError):
    """The registry did not answer (an OSError: consumers and the relay retry, never dead-letter)."""


class SchemaIds(Protocol):
    """What the wire format needs of a registry (billing.registry.Registry is the real one)."""

    def id_for(self, subject: str, schema_json: str) -> int: ...

    def schema_for(self, schema_id: int) -> str: ...


def subject(topic: str) -> str:
    """TopicNameStrategy: the subject of a topic's values."""
    return f"{topic}-value"


def is_confluent(data: bytes) -> bool:
    return data[:1] == codec.CONFLUENT_MAGIC and len(data) >= codec.CONFLUENT_HEADER_SIZE


def schema_id_of(data: bytes) -> int:
    return int.from_bytes(data[1:codec.CONFLUENT_HEADER_SIZE], "big")


def to_confluent(registry: SchemaIds, topic: str, data: bytes) -> tuple[bytes, int]:
    """A single-object encoded message in the Confluent wire format, and its schema id.
    The writer schema is registered under the topic's subject (a no-op once it is there)."""
    if not data.startswith(codec.MAGIC) or len(data) < codec.HEADER_SIZE:
        if is_confluent(data):
            return data, schema_id_of(data)
        raise codec.MalformedMessageError("not a single-object encoded message: cannot frame it for a registry")
    schema_id = registry.id_for(subject(topic), codec.schema_json(data[2:codec.HEADER_SIZE]))
    return codec.CONFLUENT_MAGIC + schema_id.to_bytes(4, "big") + data[codec.HEADER_SIZE:], schema_id


class _Resolver:
    """Message -> fingerprint of its writer schema, one registry fetch per schema id."""

    def __init__(self, registry: SchemaIds):
        self._registry = registry
        self._ids: dict[int, bytes] = {}
        self._lock = threading.Lock()  # consumers' Kafka threads and the event loop decode

    def __call__(self, data: bytes) -> bytes:
        schema_id = schema_id_of(data)
        fp = self._ids.get(schema_id)
        if fp is not None:
            return fp
        text = self._registry.schema_for(schema_id)  # RegistryUnavailable propagates: retried
        try:
            fp = codec.register_history_schema(json.loads(text))
        except (ValueError, TypeError) as exc:  # CodecError is a ValueError
            raise codec.UnknownSchemaError(
                f"schema id {schema_id} of the registry is not a version of a billing.v1 record: {exc}",
                schema_id.to_bytes(4, "big")) from exc
        with self._lock:
            self._ids[schema_id] = fp
        return fp


def set_registry_resolver(registry: SchemaIds | None) -> Callable[[bytes], bytes] | None:
    """Let `billing.codec.decode` read the Confluent wire format through `registry`
    (None: such messages are refused, naming BILLING_SCHEMA_REGISTRY_URL)."""
    codec._confluent_fingerprint = None if registry is None else _Resolver(registry)
    return codec._confluent_fingerprint
