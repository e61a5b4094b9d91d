"""RecordUsageBatch: up to MAX_EVENTS usage events in one transaction, one outcome each.

An event refused (by the same rules as RecordUsage) is answered in its outcome, naming
the field with the event's index (`events[3].quantity`); the others are stored. The
request_id covers the whole batch: a replay answers the first response exactly, refusals
included (unlike RecordUsage, whose refused call leaves no key: here the request as a
whole succeeded).
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from billing.domain.periods import from_us, to_us
from billing.services import idempotency
from billing.services.errors import ValidationError
from billing.services.usage import _REJECTION_STATUS, MAX_PROPERTIES, Recorded, Usage, UsageEvent, prepare, store

OPERATION = "RecordUsageBatch"
MAX_EVENTS = 1000
# google.rpc.Code of each kind of refusal, as RecordUsage would answer it.
_CODES = {"invalid": 3, "not_found": 5, "precondition": 9}


@dataclass(frozen=True)
class EventInput:
    event_id: str
    subscription_id: str
    metric_code: str
    quantity: str
    occurred_at: datetime | None
    properties: dict[str, str]


@dataclass(frozen=True)
class EventError:
    code: int
    reason: str
    field: str
    description: str


@dataclass(frozen=True)
class EventOutcome:
    index: int
    recorded: Recorded | None = None
    error: EventError | None = None


@dataclass(frozen=True)
class BatchOutcome:
    outcomes: list[EventOutcome]

    def count(self, what: str) -> int:
        if what == "rejected":
            return sum(o.error is not None for o in self.outcomes)
        dup = what == "duplicates"
        return sum(o.recorded is not None and o.recorded.duplicate == dup for o in self.outcomes)


def _shape_error(i: int, e: EventInput) -> EventError | None:
    if not e.event_id:
        return EventError(3, "INVALID_EVENT_ID", f"events[{i}].event_id", "is required in a batch")
    if e.occurred_at is None:
        return EventError(3, "INVALID_OCCURRED_AT", f"events[{i}].occurred_at", "is required: when the usage happened")
    if len(e.properties) > MAX_PROPERTIES:
        return EventError(3, "INVALID_PROPERTIES", f"events[{i}].properties", f"at most {MAX_PROPERTIES} properties")
    return None


def _required(at: datetime | None) -> datetime:
    assert at is not None  # _shape_error refused the event otherwise
    return at


def _payload(e: EventInput) -> dict:
    return {"event_id": e.event_id, "subscription_id": e.subscription_id, "metric_code": e.metric_code,
            "quantity": e.quantity, "occurred_at": e.occurred_at.isoformat() if e.occurred_at else None,
            "properties": e.properties}


async def record_batch(usage: Usage, db, caller, request_id: str, events: list[EventInput]) -> BatchOutcome:
    idempotency.check_key(request_id)
    if not events:
        raise ValidationError("events", "at least one event")
    if len(events) > MAX_EVENTS:
        raise ValidationError("events", f"at most {MAX_EVENTS} events per batch, got {len(events)}")
    outcomes: dict[int, EventOutcome] = {}
    valid: list[int] = []
    for i, e in enumerate(events):
        err = _shape_error(i, e)
        if err is not None:
            outcomes[i] = EventOutcome(i, error=err)
        else:
            valid.append(i)
    tenant = str(caller.tenant_id)
    now_us = to_us(datetime.now(timezone.utc))
    async with db.tenant_tx(caller.tenant_id) as conn:
        replay = await idempotency.claim(conn, caller, request_id, OPERATION, [_payload(e) for e in events])
        if replay is not None:
            return _from_stored(replay)
        evs = [UsageEvent(events[i].event_id, tenant, events[i].subscription_id, events[i].metric_code,
                          events[i].quantity, to_us(_required(events[i].occurred_at)),
                          dict(events[i].properties) or None)
               for i in valid]
        result = await prepare(conn, evs, now_us=now_us, limits=usage.limits, plans=usage.plans)
        await store(conn, result, want_ids=True)
        for r in result.rejected:
            i = valid[r.index]
            kind, field_name = _REJECTION_STATUS.get(r.reason, ("invalid", r.reason))
            outcomes[i] = EventOutcome(i, error=EventError(_CODES[kind], r.reason.upper(), f"events[{i}].{field_name}",
                                                           r.detail))
        seen: set[str] = set()
        for k, i in enumerate(valid):
            if i in outcomes:
                continue
            eid = evs[k].event_id
            start, end = result.periods[k]
            outcomes[i] = EventOutcome(i, Recorded(eid, eid not in result.inserted_ids or eid in seen,
                                                   from_us(start), from_us(end)))
            seen.add(eid)
        done = BatchOutcome([outcomes[i] for i in range(len(events))])
        await idempotency.remember(conn, caller, request_id, {"outcomes": [_stored(o) for o in done.outcomes]})
    return done


def _stored(o: EventOutcome) -> dict:
    if o.error is not None:
        return {"i": o.index, "code": o.error.code, "reason": o.error.reason, "field": o.error.field,
                "description": o.error.description}
    r = o.recorded
    assert r is not None
    return {"i": o.index, "event_id": r.event_id, "duplicate": r.duplicate, "period_start": r.period_start.isoformat(),
            "period_end": r.period_end.isoformat()}


def _from_stored(stored: dict) -> BatchOutcome:
    out = []
    for d in stored["outcomes"]:
        if "code" in d:
            out.append(EventOutcome(d["i"], error=EventError(d["code"], d["reason"], d["field"], d["description"])))
        else:
            out.append(EventOutcome(d["i"], Recorded(d["event_id"], d["duplicate"],
                                                     datetime.fromisoformat(d["period_start"]),
                                                     datetime.fromisoformat(d["period_end"]))))
    return BatchOutcome(out)
