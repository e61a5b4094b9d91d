"""RecordUsageBatch's outcome as kept with its request_id: read back exactly, in the
current form (without the event ids: the replay's request holds them) and in the two
forms kept before it (replays of older requests)."""
from __future__ import annotations

import json

import pytest
from datetime import datetime, timezone

from billing.services.usage import Recorded
from billing.services.usage_batch import BatchOutcome, EventError, EventOutcome, from_stored, stored

_P1 = (datetime(2026, 12, 1, tzinfo=timezone.utc), datetime(2027, 1, 1, tzinfo=timezone.utc))
_P2 = (datetime(2026, 11, 1, tzinfo=timezone.utc), datetime(2026, 12, 1, tzinfo=timezone.utc))
DONE = BatchOutcome([
    EventOutcome(0, Recorded("a", False, *_P1)),
    EventOutcome(1, error=EventError(3, "NEGATIVE_QUANTITY", "events[1].quantity", "quantity '-1' is not ...")),
    EventOutcome(2, Recorded("a", True, *_P1)),
    EventOutcome(3, Recorded("late", False, *_P2)),
])


_IDS = ["a", "bad", "a", "late"]  # the request's event ids


def test_the_stored_outcome_reads_back_exactly_through_json():
    kept = json.loads(json.dumps(stored(DONE)))
    assert len(kept["periods"]) == 2  # each period once
    assert "\"a\"" not in json.dumps(kept) and "late" not in json.dumps(kept)  # the ids are the request's
    assert from_stored(kept, _IDS) == DONE


def test_a_large_batch_keeps_a_few_bytes_not_a_few_per_event():
    many = BatchOutcome([EventOutcome(i, Recorded(f"{i:036d}", i == 7, *_P1)) for i in range(1000)])
    kept = json.dumps(stored(many))
    assert len(kept) < 200
    assert from_stored(json.loads(kept), [f"{i:036d}" for i in range(1000)]) == many


def test_the_current_form_needs_the_request_s_ids():
    kept = stored(DONE)
    with pytest.raises(ValueError, match="event ids"):
        from_stored(kept)
    with pytest.raises(ValueError, match="event ids"):
        from_stored(kept, _IDS[:3])


def test_an_outcome_kept_with_numbered_periods_still_replays():
    numbered = {"periods": [[_P1[0].isoformat(), _P1[1].isoformat()], [_P2[0].isoformat(), _P2[1].isoformat()]],
                "events": [["a", False, 0], {"code": 3, "reason": "NEGATIVE_QUANTITY", "field": "events[1].quantity",
                                             "description": "quantity '-1' is not ..."},
                           ["a", True, 0], ["late", False, 1]]}
    assert from_stored(numbered) == DONE


def test_an_outcome_kept_in_the_earlier_form_still_replays():
    earlier = {"outcomes": [
        {"i": 0, "event_id": "a", "duplicate": False, "period_start": _P1[0].isoformat(),
         "period_end": _P1[1].isoformat()},
        {"i": 1, "code": 3, "reason": "NEGATIVE_QUANTITY", "field": "events[1].quantity",
         "description": "quantity '-1' is not ..."},
        {"i": 2, "event_id": "a", "duplicate": True, "period_start": _P1[0].isoformat(),
         "period_end": _P1[1].isoformat()},
        {"i": 3, "event_id": "late", "duplicate": False, "period_start": _P2[0].isoformat(),
         "period_end": _P2[1].isoformat()},
    ]}
    assert from_stored(earlier) == DONE
