"""A writer of the one record a billing run encodes by the thousand: the InvoiceRequest.

The same bytes as `codec.encode(Schema.INVOICE_REQUEST, record)` (fastavro), written by a
loop made for this record's layout: strings, longs, nullable strings and longs, the array
of lines, the metadata map. fastavro walks the parsed schema for every field of every
record; here the layout is walked once, when it is checked. Used only while the current
schema has exactly the layout this writer knows (checked at import: a schema change
switches it off, and every request goes through fastavro again), and any record it cannot
write as it is (a value of another type, a missing field, a long out of range) goes through
fastavro too, which writes it or raises its CodecError. A property test pins the bytes to
fastavro's (tests/unit/test_codec_invoice.py).
"""
from __future__ import annotations

from typing import Any, Mapping

from billing import codec
from billing.varint import varint

_S, _L = "string", "long"
_NS, _NL = ("null", "string"), ("null", "long")
# The layout this writer knows, in field order: (name, type) of the record and of a line.
LINE_LAYOUT = (("kind", _S), ("description", _S), ("metric_code", _NS), ("quantity", _S), ("unit_price", _S),
               ("amount", _S), ("period_start_us", _L), ("period_end_us", _L), ("fraction", _NS),
               ("original_period_start_us", _NL))
LAYOUT = (("invoice_request_id", _S), ("tenant_id", _S), ("customer_id", _S), ("subscription_id", _S),
          ("run_id", _S), ("currency", _S), ("period_start_us", _L), ("period_end_us", _L), ("issued_at_us", _L),
          ("lines", ("array", LINE_LAYOUT)), ("subtotal", _S), ("total", _S), ("metadata", ("map", _S)),
          ("test_clock_id", _NS), ("reason", _NS), ("threshold_id", _NS))

_MIN, _MAX = -(1 << 63), 1 << 63
_BYTE = [bytes([z]) for z in range(128)]  # a varint below 128: one byte
_SMALL = _BYTE[0::2]  # the zigzag varint of a length 0..63
_NULL, _SOME = b"\x00", b"\x02"  # union branch 0 (null), branch 1 (the value)


def _shape(node: Any) -> Any:
    """The layout of a parsed schema node, in LAYOUT's terms (None: something else)."""
    if isinstance(node, str):
        return node
    if isinstance(node, list):
        return tuple(_shape(n) for n in node)
    if isinstance(node, dict):
        kind = node.get("type")
        if kind == "record":
            return tuple((f["name"], _shape(f["type"])) for f in node["fields"])
        if kind == "array":
            return ("array", _shape(node["items"]))
        if kind == "map":
            return ("map", _shape(node["values"]))
        if isinstance(kind, str) and len(node.keys() - {"type", "doc", "default"}) == 0:
            return kind
    return None


def _long(n: int) -> bytes:
    if type(n) is not int:  # a bool, a float: fastavro's rules
        raise TypeError(n)
    if (done := _LONGS.get(n)) is not None:
        return done
    if not _MIN <= n < _MAX:
        raise TypeError(n)
    # Avro's long: the zigzag of n (small magnitudes small), as a varint.
    done = varint((n << 1) ^ (n >> 63))
    if len(_LONGS) >= 4096:
        _LONGS.clear()
    _LONGS[n] = done
    return done


# Longs written lately: a record's period bounds are its lines' bounds too, and the requests
# of a chunk share their issue time.
_LONGS: dict[int, bytes] = {}


def _str(s: str) -> bytes:
    b = s.encode()
    n = len(b)
    return (_SMALL[n] if n < 64 else _long(n)) + b


def _line(ln: Mapping[str, Any], parts: list[bytes]) -> None:
    metric, fraction, original = ln["metric_code"], ln["fraction"], ln["original_period_start_us"]
    parts += (_str(ln["kind"]), _str(ln["description"]), _NULL if metric is None else _SOME + _str(metric),
              _str(ln["quantity"]), _str(ln["unit_price"]), _str(ln["amount"]), _long(ln["period_start_us"]),
              _long(ln["period_end_us"]), _NULL if fraction is None else _SOME + _str(fraction),
              _NULL if original is None else _SOME + _long(original))


def _write(r: Mapping[str, Any]) -> bytes:
    parts = [HEADER, _str(r["invoice_request_id"]), _str(r["tenant_id"]), _str(r["customer_id"]),
             _str(r["subscription_id"]), _str(r["run_id"]), _str(r["currency"]), _long(r["period_start_us"]),
             _long(r["period_end_us"]), _long(r["issued_at_us"])]
    lines = r["lines"]
    if lines:  # one block of all the items, then the empty block that ends the array
        parts.append(_long(len(lines)))
        for ln in lines:
            _line(ln, parts)
    parts += (_NULL, _str(r["subtotal"]), _str(r["total"]))
    metadata = r["metadata"]
    if metadata:
        parts.append(_long(len(metadata)))
        for k, v in metadata.items():
            parts += (_str(k), _str(v))
    parts.append(_NULL)
    for name in ("test_clock_id", "reason", "threshold_id"):
        v = r[name]
        parts.append(_NULL if v is None else _SOME + _str(v))
    return b"".join(parts)


def encode(record: Mapping[str, Any]) -> bytes:
    """The single-object encoding of an InvoiceRequest record: `codec.encode`'s bytes."""
    if ENABLED:
        try:
            return _write(record)
        except (KeyError, TypeError, AttributeError, UnicodeError):
            pass  # fastavro writes it or says what is wrong
    return codec.encode(codec.Schema.INVOICE_REQUEST, record)


HEADER = codec.encode(codec.Schema.INVOICE_REQUEST, {
    "invoice_request_id": "", "tenant_id": "", "customer_id": "", "subscription_id": "", "run_id": "",
    "currency": "", "period_start_us": 0, "period_end_us": 0, "issued_at_us": 0, "lines": [], "subtotal": "",
    "total": ""})[:codec.HEADER_SIZE]
#: Whether the current schema has the layout this writer knows.
ENABLED = _shape(codec.parsed_schema(codec.Schema.INVOICE_REQUEST)) == LAYOUT
