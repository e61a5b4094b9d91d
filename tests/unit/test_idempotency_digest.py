"""A RecordUsageBatch's digest (orjson's text where it is json.dumps's, json.dumps's
otherwise) is the one json.dumps gives: a replay of a request kept before matches it."""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pytest

from billing.api.usage_batch_wire import batch_input
from billing.api.convert import timestamp
from billing.domain.periods import from_us
from billing.services.context import Caller
from billing.services.idempotency import digest, digest_of_texts
from billing.services.usage_batch import BatchInput, EventInput, new_batch_call, utc_texts
from billing.v1 import billing_pb2 as pb

_ODD = ["", "plain", 'quote " and \\ backslash', "tab\tnew\nline\x01", "del\x7f", "é", "日本", "😀", "/slash",
        "\x1f\x00"]


@pytest.mark.parametrize("text", _ODD)
def test_the_digest_is_json_dumps_s_whatever_the_text(text):
    payload = [{"event_id": text, "metric_code": "calls", "occurred_at": None, "properties": {text: text, "a": "b"},
                "quantity": "1", "subscription_id": text}]
    assert digest_of_texts("RecordUsageBatch", payload) == digest("RecordUsageBatch", payload)


def test_keys_are_sorted_as_json_dumps_sorts_them():
    payload = [{"z": "1", "a": {"y": "2", "b": "3"}, "m": None}]
    assert digest_of_texts("X", payload) == digest("X", payload)


def test_a_value_orjson_does_not_write_goes_to_json_dumps():
    payload = [{"a": "\ud800"}]  # a lone surrogate: orjson refuses it
    assert digest_of_texts("X", payload) == digest("X", payload)


@pytest.mark.parametrize("us", [0, 1, 999_999, 1_000_000, 1_764_950_400_000_000, 1_764_950_400_123_000,
                                -1, -1_000_001, 253_402_300_799_999_999])
def test_utc_times_are_written_as_isoformat_writes_them(us):
    assert utc_texts([us, None]) == [from_us(us).isoformat(), None]


def _old_digest(request_id_events: list[EventInput]) -> bytes:
    """The batch's digest as it was computed from each event's datetime."""
    return digest("RecordUsageBatch", [
        {"event_id": e.event_id, "subscription_id": e.subscription_id, "metric_code": e.metric_code,
         "quantity": e.quantity, "occurred_at": e.occurred_at.isoformat() if e.occurred_at else None,
         "properties": e.properties} for e in request_id_events])


def test_a_batch_from_the_wire_digests_as_it_did_from_datetimes():
    caller = Caller(uuid.uuid4(), "test")
    base = datetime(2026, 12, 5, 16, 0, tzinfo=timezone.utc)
    times = [base, base + timedelta(microseconds=1), base + timedelta(seconds=3, microseconds=500_000), None]
    events = [EventInput(f"e-{i}", str(uuid.uuid4()), "calls", "1.5", at, {"k": "é"} if i == 2 else {})
              for i, at in enumerate(times)]
    req = pb.RecordUsageBatchRequest(events=[
        pb.UsageEventInput(event_id=e.event_id, subscription_id=e.subscription_id, metric_code=e.metric_code,
                           quantity=e.quantity, occurred_at=timestamp(e.occurred_at), properties=e.properties)
        for e in events])
    from_wire = new_batch_call(caller, "r-1", batch_input(req.events))
    from_inputs = new_batch_call(caller, "r-1", events)
    assert from_wire.request_digest == from_inputs.request_digest == _old_digest(events)
    assert isinstance(batch_input(req.events), BatchInput)
    # the event without a time is refused by its shape, the others go on
    assert list(from_wire.refused) == [3] and from_wire.valid == [0, 1, 2]
