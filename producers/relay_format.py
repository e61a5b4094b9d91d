"""What the relay puts on the wire for an outbox row: the value in the configured Avro
framing, and CloudEvents binary-mode headers.

The outbox always holds single-object encoded Avro (written in the services' transactions,
with no registry call). In `confluent` wire format the relay swaps the header for the
registry's schema id (billing.codec_confluent.to_confluent; the Avro body is unchanged).

CloudEvents (Kafka protocol binding 1.0, binary mode): `ce_specversion` 1.0, `ce_id` (the
domain id when the row names one: event-id, invoice-request-id; else `<stream>/<outbox id>`,
stable across re-publishing), `ce_type` (`billing.v1.<record or event type>`), `ce_source`
(BILLING_CLOUDEVENTS_SOURCE), `ce_time` (when the outbox row was written, RFC 3339 UTC),
`ce_subject` (the message key) and the extension `ce_tenantid`, the attribute the usage
consumer reads in structured mode. `content-type` stays the Avro media type of the record
(the CloudEvents `datacontenttype`); in `confluent` format `ce_dataschema` names the schema.
"""
from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timezone
from functools import lru_cache

from billing import codec
from billing.codec_confluent import SchemaIds, to_confluent
from billing.config import Settings
from billing.registry import registry_for

__all__ = ["RelayFormat", "cloudevent_headers", "relay_format", "tenant_text"]

_TYPES = {  # outbox stream -> ce_type when the row has no event-type header
    "invoice_requests": f"{codec.NAMESPACE}.{codec.Schema.INVOICE_REQUEST.value}",
    "billing_runs": f"{codec.NAMESPACE}.{codec.Schema.BILLING_RUN_REQUEST.value}",
    "subscription_events": f"{codec.NAMESPACE}.{codec.Schema.SUBSCRIPTION_EVENT.value}",
}


@lru_cache(maxsize=256)
def _rfc3339_utc(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@lru_cache(maxsize=256)
def tenant_text(tenant_id) -> str:
    """A tenant id as text: a relay batch's thousand rows have a few tenants between them."""
    return str(tenant_id)


def _rfc3339(t: datetime | None) -> str:
    # The rows of one transaction share their `created_at`: formatted once, not per row.
    return _rfc3339_utc(t if t is not None else datetime.now(timezone.utc))


def cloudevent_headers(row, source: str) -> dict[str, str]:
    """The ce_* headers of an outbox row (a row header of the same name wins)."""
    own: Mapping[str, str] = row.headers
    get = own.get
    ce_id = get("event-id") or get("invoice-request-id") or get("alert-id") or f"{row.stream}/{row.id}"
    event_type = get("event-type")
    out = {
        "ce_specversion": "1.0",
        "ce_id": ce_id,
        "ce_source": source,
        "ce_type": f"{codec.NAMESPACE}.{event_type}" if event_type else _TYPES.get(row.stream, f"billing.{row.stream}"),
        "ce_time": _rfc3339(getattr(row, "created_at", None)),
        "ce_tenantid": tenant_text(row.tenant_id),
    }
    key = row.key
    if key:
        out["ce_subject"] = key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)
    for k, v in own.items():
        if k.startswith("ce_"):
            out[k] = v
    return out


class RelayFormat:
    """`registry` None: single-object, as stored. Otherwise the Confluent wire format."""

    def __init__(self, *, source: str, registry: SchemaIds | None = None, registry_url: str = ""):
        self.source = source
        self.registry = registry
        self.registry_url = registry_url.rstrip("/")

    def message(self, row, topic: str) -> tuple[bytes, dict[str, str]]:
        """(value, extra headers). Raises ConnectionError (registry unreachable) or
        RegistryRefused: the caller holds the stream back and retries."""
        headers = cloudevent_headers(row, self.source)
        if self.registry is None:
            return row.payload, headers
        value, schema_id = to_confluent(self.registry, topic, bytes(row.payload))
        headers["ce_dataschema"] = f"{self.registry_url}/schemas/ids/{schema_id}"
        return value, headers


def relay_format(settings: Settings) -> RelayFormat:
    """The format BILLING_KAFKA_WIRE_FORMAT and BILLING_SCHEMA_REGISTRY_URL ask for."""
    if settings.kafka_wire_format != "confluent":
        return RelayFormat(source=settings.cloudevents_source)
    url = settings.schema_registry_url
    return RelayFormat(source=settings.cloudevents_source, registry_url=url,
                       registry=registry_for(url, settings.schema_registry_config))
