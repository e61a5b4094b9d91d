"""RecordUsageBatch's outcome as kept with its request_id: read back exactly, in the
numbered-periods form and in the form kept before it (replays of older requests)."""
from __future__ import annotations

import json
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


def test_the_stored_outcome_reads_back_exactly_through_json():
    kept = json.loads(json.dumps(stored(DONE)))
    assert len(kept["periods"]) == 2  # each period once
    assert from_stored(kept) == DONE


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
