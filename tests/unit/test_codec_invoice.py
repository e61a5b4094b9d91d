"""The InvoiceRequest writer (billing.codec_invoice): fastavro's bytes, or fastavro itself."""

from __future__ import annotations

import copy

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing import codec, codec_invoice
from billing.codec import CodecError, Schema

LONG = st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1)
TEXT = st.text(max_size=90)  # lengths on both sides of one varint byte (63 bytes), any characters
NTEXT = st.none() | TEXT

LINE = st.fixed_dictionaries({
    "kind": TEXT, "description": TEXT, "metric_code": NTEXT, "quantity": TEXT, "unit_price": TEXT, "amount": TEXT,
    "period_start_us": LONG, "period_end_us": LONG, "fraction": NTEXT, "original_period_start_us": st.none() | LONG,
})
RECORD = st.fixed_dictionaries({
    "invoice_request_id": TEXT, "tenant_id": TEXT, "customer_id": TEXT, "subscription_id": TEXT, "run_id": TEXT,
    "currency": TEXT, "period_start_us": LONG, "period_end_us": LONG, "issued_at_us": LONG,
    "lines": st.lists(LINE, max_size=70), "subtotal": TEXT, "total": TEXT,
    "metadata": st.dictionaries(TEXT, TEXT, max_size=70), "test_clock_id": NTEXT, "reason": NTEXT,
    "threshold_id": NTEXT,
})


def test_the_current_schema_has_the_layout_it_knows():
    # A schema change switches the writer off (fastavro writes every request): then this
    # test fails, to say so; update LAYOUT with the schema, and the property below checks it.
    assert codec_invoice.ENABLED


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(RECORD)
def test_the_same_bytes_as_fastavro(record):
    assert codec_invoice.encode(record) == codec.encode(Schema.INVOICE_REQUEST, record)
    assert codec_invoice._write(record) == codec.encode(Schema.INVOICE_REQUEST, record)  # not by the fallback
    assert codec.decode(Schema.INVOICE_REQUEST, codec_invoice.encode(record))["lines"] == record["lines"]


def _record() -> dict:
    return {"invoice_request_id": "r", "tenant_id": "t", "customer_id": "c", "subscription_id": "s", "run_id": "x",
            "currency": "EUR", "period_start_us": 1, "period_end_us": 2, "issued_at_us": 3,
            "lines": [{"kind": "base_fee", "description": "d", "metric_code": None, "quantity": "1",
                       "unit_price": "10.00", "amount": "10.00", "period_start_us": 1, "period_end_us": 2,
                       "fraction": None, "original_period_start_us": None}],
            "subtotal": "10.00", "total": "10.00", "metadata": {"k": "v"}, "test_clock_id": None, "reason": "period",
            "threshold_id": None}


def _outcome(encode, record):
    try:
        return encode(record)
    except CodecError:
        return CodecError


@pytest.mark.parametrize("path, value", [
    (("period_start_us",), True),
    (("lines", 0, "original_period_start_us"), True),
    (("tenant_id",), 7),
    (("period_end_us",), 1.5),
    (("period_end_us",), 1 << 64),
    (("lines", 0, "amount"), None),
    (("lines", 0, "fraction"), 3),
    (("metadata",), {"k": 1}),
    (("reason",), 3),
    (("customer_id",), "\ud800"),  # a lone surrogate: not UTF-8
])
def test_odd_values_get_fastavros_outcome(path, value):
    """Written as fastavro writes them, or refused as fastavro refuses them (they go to it)."""
    record = copy.deepcopy(_record())
    target = record
    for p in path[:-1]:
        target = target[p]
    target[path[-1]] = value
    expected = _outcome(lambda r: codec.encode(Schema.INVOICE_REQUEST, r), record)
    assert _outcome(codec_invoice.encode, record) == expected


def test_fields_left_out_take_their_defaults_as_with_fastavro():
    record = _record()
    for name in ("metadata", "test_clock_id", "reason", "threshold_id"):
        del record[name]
    assert codec_invoice.encode(record) == codec.encode(Schema.INVOICE_REQUEST, record)


_EDGES = sorted({s * ((1 << k) + d) for k in range(64) for d in (-1, 0, 1) for s in (1, -1)}
                | {-(1 << 63), (1 << 63) - 1, 0})


@pytest.mark.parametrize("n", [n for n in _EDGES if -(1 << 63) <= n < (1 << 63)])
def test_a_long_at_every_varint_boundary_as_fastavro_writes_it(n):
    """The varint by 14-bit tables: every width from one byte to ten, both signs, on and
    around each power of two (the bits where a byte or a table lookup begins)."""
    codec_invoice._LONGS.clear()
    record = {**_record(), "period_start_us": n}
    assert codec_invoice.encode(record) == codec.encode(Schema.INVOICE_REQUEST, record)
