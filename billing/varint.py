"""Base-128 varints, the integer encoding shared by protobuf and Avro (Avro zigzags first),
14 bits per table lookup: the two hand writers (the RecordUsageBatch response, the invoice
request's Avro) spend most of their time on small integers and lengths."""
from __future__ import annotations


def _bytes_of(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


# Every value of 14 bits as the varint's last one or two bytes, and as two bytes with more to follow.
_LAST = [_bytes_of(n) for n in range(1 << 14)]
_MID = [bytes(((n & 0x7F) | 0x80, (n >> 7) | 0x80)) for n in range(1 << 14)]


def varint(n: int) -> bytes:
    """The unsigned varint of n >= 0: seven bits per byte, low bits first."""
    if n < 0x4000:
        return _LAST[n]
    done = b""
    while n >= 0x4000:
        done += _MID[n & 0x3FFF]
        n >>= 14
    return done + _LAST[n]
