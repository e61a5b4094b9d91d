"""bench/batch_request: RecordUsageBatch requests for the bench's clients, cheaply.

A real producer's CPU is not the service's, so the bench's clients should cost little: each
builds its request's bytes once (a template: its subscriptions, metric, quantity and time)
and per call writes a fresh UUIDv4 request id and a fresh random UUIDv4 event id per event
into them, every event distinct and valid. The events of a template all encode to the same
length, so the i-th event id lies at `first + i * stride`: each character position of the
ids is written for all events at once, by one slice assignment of random hex digits.
"""
from __future__ import annotations

import os
import uuid
from datetime import datetime

from billing.v1 import billing_pb2 as pb

_ID_LENGTH = 36  # a UUID's text
# The UUID's random positions: all but the dashes and the version digit (the variant
# digit, 19, is random in its two low bits).
_HEX = [j for j in range(_ID_LENGTH) if j not in (8, 13, 14, 18, 23)]
# A random hex digit to an RFC 4122 variant digit (8, 9, a, b), keeping its two low bits.
_VARIANT = bytes.maketrans(b"0123456789abcdef", b"89ab89ab89ab89ab")


class BatchRequests:
    """The serialized request of `len(subscriptions)` events, one on each subscription."""

    def __init__(self, subscriptions: list[str], metric: str, quantity: str, at: datetime):
        n = len(subscriptions)
        req = pb.RecordUsageBatchRequest(request_id="r" * _ID_LENGTH, events=[
            pb.UsageEventInput(event_id=f"~{i:0{_ID_LENGTH - 1}d}", subscription_id=s, metric_code=metric,
                               quantity=quantity) for i, s in enumerate(subscriptions)])
        for e in req.events:
            e.occurred_at.FromDatetime(at)
        self.data = bytearray(req.SerializeToString())
        self.n = n
        self.request_at = bytes(self.data).index(b"r" * _ID_LENGTH)
        offsets = [bytes(self.data).index(f"~{i:0{_ID_LENGTH - 1}d}".encode()) for i in range(n)]
        self.first = offsets[0]
        self.stride = offsets[1] - offsets[0] if n > 1 else 1
        if offsets != [self.first + i * self.stride for i in range(n)]:
            raise ValueError("the template's events do not encode to one length (subscription ids of one length?)")
        for j in (8, 13, 18, 23):
            self._column(j, b"-" * n)
        self._column(14, b"4" * n)  # the version

    def _column(self, j: int, chars: bytes) -> None:
        start = self.first + j
        self.data[start:start + self.stride * (self.n - 1) + 1:self.stride] = chars

    def next(self) -> tuple[bytes, str]:
        """A new request's bytes and its request id; `event_ids()` gives its events' ids."""
        digits = os.urandom(16 * self.n).hex().encode()  # 32 random hex digits per event
        for k, j in enumerate(_HEX):
            column = digits[k::32]
            self._column(j, column.translate(_VARIANT) if j == 19 else column)
        request_id = str(uuid.uuid4())
        self.data[self.request_at:self.request_at + _ID_LENGTH] = request_id.encode()
        return bytes(self.data), request_id

    def event_id(self, i: int) -> str:
        """The i-th event's id in the last request."""
        at = self.first + i * self.stride
        return self.data[at:at + _ID_LENGTH].decode()
