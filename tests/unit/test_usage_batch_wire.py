"""RecordUsageBatch on the wire (billing/api/usage_batch_wire.py): the response encoded by
hand is the message protobuf would write, byte for byte; the request's events read into
columns as the messages say, bad times refused naming the event."""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from billing.api.convert import timestamp
from billing.api.usage_batch_wire import batch_input, encode_response
from billing.domain.periods import to_us
from billing.services.errors import ValidationError
from billing.services.usage import Recorded
from billing.services.usage_batch import MAX_EVENTS, BatchOutcome, EventError, EventOutcome
from billing.v1 import billing_pb2 as pb

_P1 = (datetime(2026, 12, 1, tzinfo=timezone.utc), datetime(2027, 1, 1, tzinfo=timezone.utc))
_P2 = (datetime(2026, 11, 1, 12, 30, 0, 250000, tzinfo=timezone.utc), datetime(2026, 12, 1, tzinfo=timezone.utc))


def _reference(done: BatchOutcome) -> pb.RecordUsageBatchResponse:
    """The response as messages, the way the handler built it before it wrote bytes."""
    outcomes = []
    for o in done.outcomes:
        if o.error is not None:
            outcomes.append(pb.UsageEventOutcome(index=o.index, error=pb.UsageEventError(
                code=o.error.code, reason=o.error.reason, field=o.error.field, description=o.error.description)))
        else:
            r = o.recorded
            outcomes.append(pb.UsageEventOutcome(index=o.index, recorded=pb.RecordUsageResponse(
                duplicate=r.duplicate, event_id=r.event_id, period_start=timestamp(r.period_start),
                period_end=timestamp(r.period_end))))
    return pb.RecordUsageBatchResponse(outcomes=outcomes, recorded=done.count("recorded"),
                                       duplicates=done.count("duplicates"), rejected=done.count("rejected"))


def _outcomes(n: int) -> list[EventOutcome]:
    out = []
    for i in range(n):
        if i % 97 == 5:
            out.append(EventOutcome(i, error=EventError(3, "NEGATIVE_QUANTITY", f"events[{i}].quantity",
                                                        "quantity '-1' is not a non-negative decimal é")))
        else:  # ids of every length up to the limit, periods with and without fractions of a second
            eid = str(uuid.uuid4()) if i % 3 else "é" * (i % 200 + 1)
            out.append(EventOutcome(i, Recorded(eid, i % 7 == 0, *(_P2 if i % 11 == 0 else _P1))))
    return out


@pytest.mark.parametrize("n", [1, 2, 130, MAX_EVENTS])
def test_the_encoded_response_is_the_message_byte_for_byte(n):
    done = BatchOutcome(_outcomes(n))
    expected = _reference(done)
    encoded = encode_response(done)
    assert encoded == expected.SerializeToString()
    assert pb.RecordUsageBatchResponse.FromString(encoded) == expected


def test_a_batch_of_refusals_only_and_one_of_duplicates_only():
    refused = BatchOutcome([EventOutcome(i, error=EventError(5, "UNKNOWN_SUBSCRIPTION", f"events[{i}].subscription_id",
                                                             "no subscription 'x'")) for i in range(3)])
    assert encode_response(refused) == _reference(refused).SerializeToString()
    dups = BatchOutcome([EventOutcome(i, Recorded(f"e-{i}", True, *_P1)) for i in range(3)])
    resp = pb.RecordUsageBatchResponse.FromString(encode_response(dups))
    assert (resp.recorded, resp.duplicates, resp.rejected) == (0, 3, 0)
    assert [o.recorded.event_id for o in resp.outcomes] == ["e-0", "e-1", "e-2"]


def _event(**kw) -> pb.UsageEventInput:
    return pb.UsageEventInput(event_id=kw.pop("event_id", "e"), subscription_id="s", metric_code="calls",
                              quantity="1", **kw)


def test_the_events_read_into_columns():
    at = datetime(2026, 12, 5, 16, 0, 1, 123456, tzinfo=timezone.utc)
    req = pb.RecordUsageBatchRequest(events=[
        _event(event_id="a", occurred_at=timestamp(at), properties={"region": "eu"}),
        _event(event_id="b"),  # no time: refused by the service, naming the event
        _event(event_id="c", occurred_at=Timestamp(seconds=0, nanos=0)),  # the epoch, set
        _event(event_id="d", occurred_at=Timestamp(seconds=0, nanos=7_999)),
    ])
    b = batch_input(req.events)
    assert b.event_ids == ["a", "b", "c", "d"] and b.subscription_ids == ["s"] * 4 and b.quantities == ["1"] * 4
    assert b.occurred_us == [to_us(at), None, 0, 7]
    assert b.properties == [{"region": "eu"}, {}, {}, {}]


@pytest.mark.parametrize("ts, message", [
    (Timestamp(seconds=-1), "must be between 1970 and 9000"),
    (Timestamp(seconds=int(timedelta(days=365 * 7600).total_seconds())), "must be between 1970 and 9000"),
    (Timestamp(seconds=int(timedelta(days=366 * 8100).total_seconds())), "is not a valid timestamp"),
    (Timestamp(seconds=10, nanos=-1), "is not a valid timestamp"),
])
def test_a_time_out_of_range_is_refused_naming_its_event(ts, message):
    req = pb.RecordUsageBatchRequest(events=[_event(occurred_at=Timestamp(seconds=1_700_000_000)),
                                             _event(occurred_at=ts)])
    with pytest.raises(ValidationError) as err:
        batch_input(req.events)
    assert err.value.field == "events[1].occurred_at" and message in err.value.message


def test_more_events_than_the_limit_are_refused_before_any_is_read():
    req = pb.RecordUsageBatchRequest(events=[_event() for _ in range(MAX_EVENTS + 1)])
    with pytest.raises(ValidationError) as err:
        batch_input(req.events)
    assert err.value.field == "events"


class _Recorder:
    """What add_BillingServiceServicer_to_server hands a server."""

    def __init__(self):
        self.generic, self.registered = [], {}

    def add_generic_rpc_handlers(self, handlers):
        self.generic += handlers

    def add_registered_method_handlers(self, service, handlers):
        self.registered[service] = handlers


class _Details:
    def __init__(self, method: str):
        self.method = method


def test_only_record_usage_batch_answers_in_bytes():
    from billing.api.server import SERVICE_NAME
    from billing.api.servicer import BillingServicer
    from billing.api.usage_batch_wire import register

    server = _Recorder()
    register(BillingServicer(None, None, 1, None), server, SERVICE_NAME)
    message = pb.RecordUsageBatchResponse(recorded=3)
    for handler in (server.registered[SERVICE_NAME]["RecordUsageBatch"],
                    server.generic[0].service(_Details(f"/{SERVICE_NAME}/RecordUsageBatch"))):
        assert handler.response_serializer(b"\x10\x03") == b"\x10\x03"  # bytes as they are
        assert handler.response_serializer(message) == message.SerializeToString()
    other = server.registered[SERVICE_NAME]["RecordUsage"]
    assert other.response_serializer == pb.RecordUsageResponse.SerializeToString
    assert server.generic[0].service(_Details(f"/{SERVICE_NAME}/RecordUsage")).response_serializer == \
        pb.RecordUsageResponse.SerializeToString
    assert server.generic[0].service(_Details(f"/{SERVICE_NAME}/NoSuchMethod")) is None


def test_the_messages_still_have_the_layout_the_encoder_writes():
    """A field added to these messages must be written by encode_response too: this fails
    until the encoder (and this list) know it."""
    layout = {m.DESCRIPTOR.name: [(f.name, f.number) for f in m.DESCRIPTOR.fields]
              for m in (pb.RecordUsageBatchResponse, pb.UsageEventOutcome, pb.RecordUsageResponse)}
    assert layout == {
        "RecordUsageBatchResponse": [("outcomes", 1), ("recorded", 2), ("duplicates", 3), ("rejected", 4)],
        "UsageEventOutcome": [("index", 1), ("recorded", 2), ("error", 3)],
        "RecordUsageResponse": [("duplicate", 1), ("event_id", 2), ("period_start", 3), ("period_end", 4)],
    }
