"""RecordUsageBatch on the wire: the request's events read into columns, the response
written as bytes.

Building the response as messages cost a message per event, a nested one and two
Timestamps (protobuf's Python objects, a few microseconds each): most of the server's
time per batch event. The outcomes are instead encoded here, each piece once (an index's
tag and varint, a period's two Timestamps), and the method's response serializer sends
bytes as they are (`register`). The encoding is protobuf's (field order and all, checked
against the messages in tests/unit/test_usage_batch_wire.py).
"""
from __future__ import annotations

from datetime import datetime, timezone

import grpc

from billing.api.convert import optional_time, timestamp
from billing.varint import varint
from billing.domain.periods import to_us
from billing.services.errors import ValidationError
from billing.services.usage_batch import MAX_EVENTS, BatchInput, BatchOutcome
from billing.v1 import billing_pb2 as pb
from billing.v1 import billing_pb2_grpc

_YEAR_9001 = to_us(datetime(9001, 1, 1, tzinfo=timezone.utc)) // 1_000_000  # optional_time's bound
_NO_PROPERTIES: dict[str, str] = {}  # shared by the events without any: read, never written
METHOD = "RecordUsageBatch"


def batch_input(events) -> BatchInput:
    """RecordUsageBatch's events; a bad timestamp is named with its event's index. More than
    the batch's limit is refused before any is looked at."""
    if len(events) > MAX_EVENTS:
        raise ValidationError("events", f"at most {MAX_EVENTS} events per batch, got {len(events)}")
    times: list[int | None] = []
    add = times.append
    for i, e in enumerate(events):
        ts = e.occurred_at
        seconds, nanos = ts.seconds, ts.nanos
        if 0 < seconds < _YEAR_9001 and 0 <= nanos < 1_000_000_000:  # the usual time, by arithmetic
            add(seconds * 1_000_000 + nanos // 1000)
        elif not e.HasField("occurred_at"):
            add(None)
        elif seconds == 0 and 0 <= nanos < 1_000_000_000:
            add(nanos // 1000)
        else:  # optional_time words the refusal
            try:
                at = optional_time(e, "occurred_at")
            except ValidationError as exc:
                raise ValidationError(f"events[{i}].occurred_at", exc.message) from None
            assert at is not None
            add(to_us(at))
    return BatchInput([e.event_id for e in events], [e.subscription_id for e in events],
                      [e.metric_code for e in events], [e.quantity for e in events], times,
                      [dict(p) if len(p := e.properties) else _NO_PROPERTIES for e in events])


# UsageEventOutcome.index (field 1, varint; 0 is not written, as protobuf writes it).
_INDEX = [b""] + [b"\x08" + varint(i) for i in range(1, MAX_EVENTS)]
_DUPLICATE = pb.RecordUsageResponse(duplicate=True).SerializeToString()


def encode_response(done: BatchOutcome) -> bytes:
    """RecordUsageBatchResponse's bytes: what `pb.RecordUsageBatchResponse(outcomes=...,
    recorded=..., duplicates=..., rejected=...).SerializeToString()` gives."""
    # RecordUsageResponse's period_start (3) and period_end (4), per period, encoded once.
    periods = [pb.RecordUsageResponse(period_start=timestamp(s), period_end=timestamp(e)).SerializeToString()
               for s, e in done.periods]
    errors = done.errors
    ids, duplicate = done.event_ids, done.duplicate
    index = _INDEX if len(ids) <= MAX_EVENTS else _INDEX + [b"\x08" + varint(i) for i in range(MAX_EVENTS, len(ids))]
    parts: list[bytes] = []
    add = parts.append
    for i, p in enumerate(done.period):
        if p < 0:
            e = errors[i]
            body = pb.UsageEventOutcome(index=i, error=pb.UsageEventError(
                code=e.code, reason=e.reason, field=e.field, description=e.description)).SerializeToString()
        else:
            eid = ids[i].encode()
            # RecordUsageResponse: duplicate (1), event_id (2), the period (3, 4).
            recorded = (_DUPLICATE if duplicate[i] else b"") + b"\x12" + varint(len(eid)) + eid + periods[p]
            body = index[i] + b"\x12" + varint(len(recorded)) + recorded
        add(b"\x0a" + varint(len(body)) + body)
    rejected = len(errors)
    dups = sum(duplicate)
    add(pb.RecordUsageBatchResponse(recorded=len(ids) - rejected - dups, duplicates=dups,
                                    rejected=rejected).SerializeToString())
    return b"".join(parts)


def _serialize(response) -> bytes:
    return response if isinstance(response, bytes) else response.SerializeToString()


def _with_bytes(handler):
    return handler._replace(response_serializer=_serialize)


class _Generic(grpc.GenericRpcHandler):
    def __init__(self, handler: grpc.GenericRpcHandler, method: str):
        self._handler, self._method = handler, method

    def service(self, handler_call_details):
        found = self._handler.service(handler_call_details)
        return _with_bytes(found) if found is not None and handler_call_details.method == self._method else found


class _Registration:
    """The server as `add_BillingServiceServicer_to_server` sees it: RecordUsageBatch's
    handler registered with a serializer that takes the bytes `encode_response` made."""

    def __init__(self, server, service: str):
        self._server, self._service = server, service

    def add_generic_rpc_handlers(self, handlers) -> None:
        method = f"/{self._service}/{METHOD}"
        self._server.add_generic_rpc_handlers(tuple(_Generic(h, method) for h in handlers))

    def add_registered_method_handlers(self, service: str, handlers: dict) -> None:
        self._server.add_registered_method_handlers(
            service, {m: _with_bytes(h) if m == METHOD else h for m, h in handlers.items()})


def register(servicer, server, service: str) -> None:
    """`billing_pb2_grpc.add_BillingServiceServicer_to_server`, RecordUsageBatch answering in bytes."""
    billing_pb2_grpc.add_BillingServiceServicer_to_server(servicer, _Registration(server, service))
