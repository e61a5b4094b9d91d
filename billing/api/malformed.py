"""Requests whose bytes are no valid message (corrupt wire format, invalid UTF-8 in a string
field) are refused with INVALID_ARGUMENT.

grpc answers a request that its deserializer cannot parse with UNKNOWN ("Unexpected
DecodeError"), which tells the client nothing and looks like a server fault. The call
interceptor (billing/api/interceptors.py) makes the deserializer return a marker instead
(`lenient`), and answers a marked call INVALID_ARGUMENT after authentication, just before
the handler runs.
"""
from __future__ import annotations


class MalformedRequest:
    __slots__ = ("reason",)

    def __init__(self, reason: str):
        self.reason = reason


def lenient(deserializer):
    if deserializer is None:
        return None

    def parse(raw: bytes):
        try:
            return deserializer(raw)
        except Exception as exc:  # noqa: BLE001 - DecodeError and anything else the parser raises
            return MalformedRequest(f"{type(exc).__name__}: {str(exc)[:200]}")

    return parse
