"""RecordUsageBatch's shape checks on the columns (`usage_batch.new_batch_call`): each
refused event named with its index, the others kept in order; the whole request refused
for no events or too many."""
from __future__ import annotations

import uuid
from datetime import datetime, timezone

import pytest

from billing.services.context import Caller
from billing.services.errors import ValidationError
from billing.services.usage_batch import MAX_EVENTS, BatchInput, EventInput, new_batch_call

_AT = datetime(2026, 12, 5, 16, 0, tzinfo=timezone.utc)
_CALLER = Caller(uuid.uuid4(), "test")


def _in(event_id: str = "e", at=_AT, properties=None) -> EventInput:
    return EventInput(event_id, "sub", "calls", "1", at, properties or {})


def test_each_refused_event_is_named_and_the_others_go_on():
    events = [_in("a"), _in(""), _in("c", at=None), _in("d", properties={f"k{i}": "v" for i in range(51)}),
              _in("e", properties={"region": "eu"})]
    call = new_batch_call(_CALLER, "r-1", events)
    assert {i: (e.reason, e.field) for i, e in call.refused.items()} == {
        1: ("INVALID_EVENT_ID", "events[1].event_id"), 2: ("INVALID_OCCURRED_AT", "events[2].occurred_at"),
        3: ("INVALID_PROPERTIES", "events[3].properties")}
    assert call.valid == [0, 4] and [e.event_id for e in call.events] == ["a", "e"]
    assert call.events[1].properties == {"region": "eu"} and call.events[0].properties is None
    assert call.event_ids == ["a", "", "c", "d", "e"] and call.size == 5


def test_a_batch_without_refusals_takes_the_columns_as_they_are():
    call = new_batch_call(_CALLER, "r-2", [_in(f"e-{i}") for i in range(3)])
    assert call.refused == {} and call.valid == [0, 1, 2]
    assert [tuple(e) for e in call.events] == [(f"e-{i}", str(_CALLER.tenant_id), "sub", "calls", "1",
                                                call.events[0].occurred_at_us, None) for i in range(3)]
    assert call.events[0].event_id == "e-0"  # UsageEvents, read by name too


@pytest.mark.parametrize("n, message", [(0, "at least one event"), (MAX_EVENTS + 1, "at most 1000 events")])
def test_no_events_or_too_many_refuse_the_request(n, message):
    with pytest.raises(ValidationError, match=message) as err:
        new_batch_call(_CALLER, "r-3", BatchInput([], [], [], [], [], []) if n == 0 else [_in()] * n)
    assert err.value.field == "events"


def test_the_request_id_is_checked_first():
    with pytest.raises(ValidationError) as err:
        new_batch_call(_CALLER, "", [_in()])
    assert err.value.field == "request_id"
