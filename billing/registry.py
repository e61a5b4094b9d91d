"""The schema registry of BILLING_SCHEMA_REGISTRY_URL, through confluent-kafka's own client.

Any registry that speaks the Confluent REST API (Confluent Schema Registry, Apicurio's
`/apis/ccompat/v7`, Karapace, Redpanda). `Registry` is what billing.codec_confluent needs:
the id of a schema under a subject (registering it when new) and the schema of an id. The
client caches both, so the registry is asked once per schema per process.

Errors: the registry unreachable, or answering 5xx, is `RegistryUnavailable` (retried by
the relay and the consumers); a 404 for an id is a message nobody can read
(`UnknownSchemaError`, dead-lettered); a refused registration (409 incompatible, 422
invalid) is `RegistryRefused`, which the relay parks like any permanent publish error.
"""
from __future__ import annotations

import threading

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from billing import codec
from billing.codec_confluent import RegistryUnavailable, set_registry_resolver
from billing.config import Settings

__all__ = ["Registry", "RegistryRefused", "RegistryUnavailable", "install_reader", "registry_for"]


class RegistryRefused(Exception):
    """The registry refused a schema (incompatible, invalid, unauthorized)."""


class Registry:
    def __init__(self, client: SchemaRegistryClient, url: str):
        self.client = client
        self.url = url.rstrip("/")

    def id_for(self, subject: str, schema_json: str) -> int:
        try:
            return self.client.register_schema(subject, Schema(schema_json, "AVRO"))
        except SchemaRegistryError as exc:
            if exc.http_status_code >= 500 or exc.http_status_code < 0:
                raise RegistryUnavailable(f"schema registry {self.url}: {exc}") from exc
            raise RegistryRefused(f"schema registry {self.url} refused the schema of subject {subject}: "
                                  f"{exc}") from exc
        except Exception as exc:
            if not _transport_error(exc):
                raise
            raise RegistryUnavailable(f"schema registry {self.url} unreachable: {exc}") from exc

    def schema_for(self, schema_id: int) -> str:
        try:
            return self.client.get_schema(schema_id).schema_str
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                raise codec.UnknownSchemaError(
                    f"schema id {schema_id} is not known to the schema registry {self.url}",
                    schema_id.to_bytes(4, "big")) from exc
            raise RegistryUnavailable(f"schema registry {self.url}: {exc}") from exc
        except Exception as exc:
            if not _transport_error(exc):
                raise
            raise RegistryUnavailable(f"schema registry {self.url} unreachable: {exc}") from exc


def _transport_error(exc: Exception) -> bool:
    """Connection refused, timeouts, TLS: errors of the client's HTTP library (httpx, or the
    httpx2 fork some confluent-kafka releases use) or the OS; anything else is a bug."""
    return isinstance(exc, OSError) or type(exc).__module__.split(".")[0] in ("httpx", "httpx2")


_REGISTRIES: dict[str, Registry] = {}
_LOCK = threading.Lock()


def registry_for(url: str, config: dict[str, str] | None = None) -> Registry:
    """One client per URL and process (its caches are shared by the relay and consumers).
    `config`: more properties of the client (e.g. basic.auth.user.info)."""
    with _LOCK:
        registry = _REGISTRIES.get(url)
        if registry is None:
            client = SchemaRegistryClient.new_client({"url": url, **(config or {})})
            registry = _REGISTRIES[url] = Registry(client, url)
        return registry


def install_reader(settings: Settings) -> Registry | None:
    """With BILLING_SCHEMA_REGISTRY_URL set, every decode of this process reads the Confluent
    wire format too (billing.codec_confluent). Without it, nothing changes."""
    if not settings.schema_registry_url:
        return None
    registry = registry_for(settings.schema_registry_url, settings.schema_registry_config)
    set_registry_resolver(registry)
    return registry
