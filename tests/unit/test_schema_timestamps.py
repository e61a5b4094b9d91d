"""Times as Avro `timestamp-micros` (version 2 of every schema) with version-1 readers still working.

Version 1 (schemas/avro/history/<Name>.1.avsc) has bare `long` times; version 2 (the current
files) annotates the same fields `timestamp-micros`. The annotation is no part of the
Parsing Canonical Form, so both have one fingerprint and write the same bytes: each reads
the other's messages through Avro schema resolution (fastavro applies the writer's logical
types, Java's Avro the reader's: the same instant either way, as an int or a datetime).
"""
from __future__ import annotations

import io
import json
from datetime import datetime, timezone

import fastavro
import pytest

from billing import codec

T = datetime(2026, 2, 1, 0, 0, 0, 250_001, tzinfo=timezone.utc)
T_US = int(T.timestamp()) * 1_000_000 + 250_001
# Schemas added after version 2 was: annotated from their first version, with no version 1.
BORN_ANNOTATED = {"UsageAlert"}
NAMES = [s.value for s in codec.Schema if s.value not in BORN_ANNOTATED]


def v1(name: str) -> dict:
    return json.loads((codec.HISTORY_DIR / f"{name}.1.avsc").read_text())


def v2(name: str) -> dict:
    return json.loads(codec.schema_json(codec.Schema(name)))


def times(node, path="") -> list[str]:
    """Paths of every timestamp-micros in a schema."""
    found = []
    if isinstance(node, dict):
        if node.get("logicalType") == "timestamp-micros":
            found.append(path)
        for k, v in node.items():
            found += times(v, f"{path}/{node.get('name', k)}" if k in ("type", "fields", "items") else path)
    elif isinstance(node, list):
        for v in node:
            found += times(v, path)
    return found


def invoice_request() -> dict:
    return {"invoice_request_id": "ir", "tenant_id": "t", "customer_id": "c", "subscription_id": "s", "run_id": "r",
            "currency": "EUR", "period_start_us": T_US, "period_end_us": T_US + 1, "issued_at_us": T_US + 2,
            "lines": [{"kind": "base_fee", "description": "d", "metric_code": None, "quantity": "1",
                       "unit_price": "1", "amount": "1", "period_start_us": T_US, "period_end_us": T_US + 1,
                       "fraction": None, "original_period_start_us": T_US - 5}],
            "subtotal": "1", "total": "1", "metadata": {}, "test_clock_id": None}


def write(schema: dict, record: dict) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(schema), record)
    return buf.getvalue()


def read(data: bytes, writer: dict, reader: dict) -> dict:
    return fastavro.schemaless_reader(io.BytesIO(data), fastavro.parse_schema(writer), fastavro.parse_schema(reader))


@pytest.mark.parametrize("name", NAMES)
def test_every_time_field_is_timestamp_micros_and_the_fingerprint_is_unchanged(name):
    assert times(v2(name)), f"{name} has no timestamp-micros field"
    assert not times(v1(name))
    # The annotation is no part of the canonical form: the current schema has the fingerprint
    # it would have without it (other changes since version 1 are new versions of their own).
    assert codec._fingerprint_of(codec._strip_logical(v2(name))) == codec.fingerprint(codec.Schema(name))


@pytest.mark.parametrize("name", sorted(BORN_ANNOTATED))
def test_a_newer_schema_is_born_annotated(name):
    # Its first version (kept in the history once the schema changed) is annotated already.
    assert times(v2(name)), f"{name} has no timestamp-micros field"
    first = codec.HISTORY_DIR / f"{name}.1.avsc"
    assert not first.exists() or times(json.loads(first.read_text())), f"{name}.1 is not annotated"


def test_invoice_request_times_are_timestamp_micros():
    paths = times(v2("InvoiceRequest"))
    for field in ("period_start_us", "period_end_us", "issued_at_us", "original_period_start_us"):
        assert any(field in p for p in paths), field


def us(value) -> int:
    """A time as read: an int (no logical type applied) or a datetime (timestamp-micros)."""
    if isinstance(value, datetime):
        return round(value.timestamp() * 1_000_000) if value.microsecond == 0 else (
            int(value.replace(microsecond=0).timestamp()) * 1_000_000 + value.microsecond)
    return value


def test_an_old_reader_reads_a_new_message():
    data = write(v2("InvoiceRequest"), {**invoice_request(), "issued_at_us": T})  # a new writer may pass datetimes
    old = read(data, v2("InvoiceRequest"), v1("InvoiceRequest"))
    assert us(old["issued_at_us"]) == T_US and us(old["period_start_us"]) == T_US
    assert us(old["lines"][0]["original_period_start_us"]) == T_US - 5


def test_a_new_reader_reads_an_old_message():
    data = write(v1("InvoiceRequest"), invoice_request())
    new = read(data, v1("InvoiceRequest"), v2("InvoiceRequest"))
    assert us(new["period_start_us"]) == T_US and us(new["lines"][0]["period_end_us"]) == T_US + 1


def test_a_reader_of_version_2_alone_gets_datetimes():
    """What a registry-aware consumer sees (writer = reader = the registered version 2)."""
    # The bytes the service writes: the current schema without its annotations.
    data = write(codec._strip_logical(v2("InvoiceRequest")), invoice_request())
    new = read(data, v2("InvoiceRequest"), v2("InvoiceRequest"))
    assert new["period_start_us"] == T and new["issued_at_us"].tzinfo is not None
    assert new["lines"][0]["original_period_start_us"] == datetime.fromtimestamp((T_US - 5) / 1e6, timezone.utc)


def test_the_codec_keeps_integers_and_writes_the_bytes_of_the_schema_without_annotations():
    record = invoice_request()
    encoded = codec.encode(codec.Schema.INVOICE_REQUEST, record)
    assert encoded[codec.HEADER_SIZE:] == write(codec._strip_logical(v2("InvoiceRequest")), record)
    assert codec.decode(codec.Schema.INVOICE_REQUEST, encoded)["issued_at_us"] == T_US + 2
