"""The usage record's Avro layout read straight into events, without fastavro.

The usual record becomes a plain 7-tuple in `UsageEvent`'s order (building the NamedTuple
costs a second tuple per event); `usage_ingest` reads events by position and takes both.

A `billing.usage.v1` record written with the current schema is five strings, a long and a
map: `decode(value)` reads them by hand for the common case (an empty map) and returns None
for anything else, which the caller then decodes with `billing.codec` (other schema
versions, properties, and every malformed message, so errors read as they always did).
Tenant, subscription, metric and quantity repeat across a batch: their text is interned
per batch (`Strings`), so later lookups by them hash a string once, not once per event.

The layout is checked against the current schema at import; if the schema ever changes
shape, `decode` is None and the codec decodes everything."""
from __future__ import annotations

from collections.abc import Callable

from billing import codec
from billing.services.usage_ingest import UsageEvent

_FIELDS = [("event_id", "string"), ("tenant_id", "string"), ("subscription_id", "string"), ("metric_code", "string"),
           ("quantity", "string"), ("occurred_at_us", "long")]


def _layout_matches() -> bool:
    fields = codec.parsed_schema(codec.Schema.USAGE_EVENT)["fields"]
    # A long annotated as a time (timestamp-micros, stripped by the codec) is {"type": "long"}.
    shape = [(f["name"], f["type"]["type"] if isinstance(f["type"], dict) else f["type"]) for f in fields[:-1]]
    last = fields[-1]
    return shape == _FIELDS and last["name"] == "properties" and last["type"].get("type") == "map" \
        and last["type"].get("values") == "string"


_HEADER = codec.MAGIC + codec.fingerprint(codec.Schema.USAGE_EVENT)
_SIZE = len(_HEADER)
_CONT = 0x0080808080808080  # bytes 0..6 of an 8-byte varint carry the continuation bit
_CONT_MASK = 0x8080808080808080


class Strings(dict):
    """bytes -> str, for the values that repeat within a batch; and `times`: the upper
    six bytes of an 8-byte time varint -> their decoded part (events of a batch are close in time, so those
    bytes repeat and only the lower two change from one event to the next)."""

    __slots__ = ("heads", "times")

    def __init__(self) -> None:
        super().__init__()
        self.heads: dict[bytes, tuple[str, str, str]] = {}  # tenant, subscription, metric
        self.times: dict[bytes, int] = {}

    def text(self, raw: bytes) -> str:
        s = self.get(raw)
        if s is None:
            s = self[raw] = raw.decode()
        return s


def _varint(v: bytes, pos: int) -> tuple[int, int]:
    """(zigzag-decoded value, position after it)."""
    shift = result = 0
    while True:
        b = v[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return (result >> 1) ^ -(result & 1), pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _decode(v: bytes, strings: Strings) -> tuple | None:
    if not v.startswith(_HEADER):
        return None
    # Unrolled for the usual record: every string shorter than 64 bytes (a one-byte length).
    try:
        n = v[_SIZE]
        if n & 0x81:
            return _decode_general(v, strings)
        p = _SIZE + 1
        e = p + (n >> 1)
        event_id = v[p:e].decode()
        # Tenant, subscription and metric follow each other: read as one slice, whose
        # bytes repeat within a batch (one dict lookup instead of three).
        a = v[e]
        if a & 0x81:
            return _decode_general(v, strings)
        b_at = e + 1 + (a >> 1)
        b = v[b_at]
        if b & 0x81:
            return _decode_general(v, strings)
        c_at = b_at + 1 + (b >> 1)
        c = v[c_at]
        if c & 0x81:
            return _decode_general(v, strings)
        q_at = c_at + 1 + (c >> 1)
        raw = v[e:q_at]
        head = strings.heads.get(raw)
        if head is None:
            head = strings.heads[raw] = (strings.text(v[e + 1:b_at]), strings.text(v[b_at + 1:c_at]),
                                         strings.text(v[c_at + 1:q_at]))
        n = v[q_at]
        if n & 0x81:
            return _decode_general(v, strings)
        p = q_at + 1
        e = p + (n >> 1)
        raw = v[p:e]
        quantity = strings.get(raw) or strings.text(raw)
        if len(v) != e + 9 or v[-1]:  # not an 8-byte time then an empty map
            return _decode_general(v, strings)
        # The time's two lower bytes (continued, as every byte of an 8-byte varint but the
        # last) as small ints; its upper six repeat within a batch: their value is cached.
        b0, b1 = v[e], v[e + 1]
        if not b0 & b1 & 0x80:
            return _decode_general(v, strings)
        upper = v[e + 2:e + 8]
    except (IndexError, ValueError):  # UnicodeDecodeError is a ValueError
        return None
    high = strings.times.get(upper)
    if high is None:
        high = strings.times[upper] = _time_high(upper)
        if high < 0:
            return _decode_general(v, strings)
    elif high < 0:
        return _decode_general(v, strings)
    low = b0 & 0x7F | (b1 & 0x7F) << 7  # zigzag: the value is low's sign bit and the rest
    return (event_id, head[0], head[1], head[2], quantity,
            high + (low >> 1) if not low & 1 else -1 - high - (low >> 1), None)


def _time_high(upper: bytes) -> int:
    """Bytes 2..7 of an 8-byte time varint -> their part of the zigzag value, shifted
    right by one (its lowest bit, the sign, is in byte 0); -1 when they do not end the
    varint exactly at byte 7 (the codec then reads the record)."""
    x = int.from_bytes(upper, "little") << 16
    if x & _CONT_MASK != _CONT & ~0xFFFF:
        return -1
    return ((x >> 2) & 0x1FC000 | (x >> 3) & 0xFE00000 | (x >> 4) & 0x7F0000000 | (x >> 5) & 0x3F800000000
            | (x >> 6) & 0x1FC0000000000 | (x >> 7) & 0xFE000000000000) >> 1


def _decode_general(v: bytes, strings: Strings) -> UsageEvent | None:
    """Any string length and any time; None for what only the codec can tell."""
    try:
        pos = _SIZE
        out: list = []
        for k in range(5):
            n, pos = _varint(v, pos)
            end = pos + n
            if n < 0 or end > len(v):
                return None
            out.append(v[pos:end].decode() if k == 0 else strings.text(v[pos:end]))
            pos = end
        us, pos = _varint(v, pos)
        if pos + 1 != len(v) or v[pos] != 0:  # an empty properties map ends the record
            return None
    except (IndexError, ValueError):  # UnicodeDecodeError is a ValueError
        return None
    return UsageEvent(out[0], out[1], out[2], out[3], out[4], us, None)


decode: Callable[[bytes, Strings], tuple | None] | None = _decode if _layout_matches() else None
