"""RecordUsageBatch: up to MAX_EVENTS usage events in one transaction (the group commit's,
shared with the tenant's other calls: `usage_record.GroupCommit`), one outcome each.

An event refused (by the same rules as RecordUsage) is answered in its outcome, naming
the field with the event's index (`events[3].quantity`); the others are stored. The
request_id covers the whole batch: a replay answers the first response exactly, refusals
included (unlike RecordUsage, whose refused call leaves no key: here the request as a
whole succeeded).
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime, timezone

from billing.domain.periods import from_us, to_us
from billing.services import idempotency
from billing.services.context import Caller
from billing.services.errors import ValidationError
from billing.services.usage import (_REJECTION_STATUS, MAX_PROPERTIES, IngestResult, Recorded, Rejection, Usage,
                                    UsageEvent, prepare, store)

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


@dataclass(eq=False)  # identity: calls are dict keys in a group
class BatchCall:
    """A RecordUsageBatch call checked for shape, ready to store alone or in a group
    (`usage_record.GroupCommit`): `events` are the events that passed the shape checks,
    `valid[k]` the request's index of `events[k]`."""

    caller: Caller
    request_id: str
    size: int
    events: list[UsageEvent]
    valid: list[int]
    refused: dict[int, EventOutcome]
    payload: list[dict]
    operation: str = OPERATION
    future: asyncio.Future | None = field(default=None, repr=False)


def new_batch_call(caller: Caller, request_id: str, events: list[EventInput]) -> BatchCall:
    """The call, or the error the request's shape alone deserves (raised before any queueing)."""
    idempotency.check_key(request_id)
    if not events:
        raise ValidationError("events", "at least one event")
    if len(events) > MAX_EVENTS:
        raise ValidationError("events", f"at most {MAX_EVENTS} events per batch, got {len(events)}")
    refused: dict[int, EventOutcome] = {}
    valid: list[int] = []
    evs: list[UsageEvent] = []
    tenant = str(caller.tenant_id)
    for i, e in enumerate(events):
        err = _shape_error(i, e)
        if err is not None:
            refused[i] = EventOutcome(i, error=err)
        else:
            valid.append(i)
            evs.append(UsageEvent(e.event_id, tenant, e.subscription_id, e.metric_code, e.quantity,
                                  to_us(_required(e.occurred_at)), dict(e.properties) or None))
    return BatchCall(caller, request_id, len(events), evs, valid, refused, [_payload(e) for e in events])


async def record_batch(usage: Usage, db, caller: Caller, request_id: str, events: list[EventInput]) -> BatchOutcome:
    call = new_batch_call(caller, request_id, events)
    if usage.group is not None:  # with the RecordUsage calls and batches of the tenant arriving meanwhile
        return await usage.group.submit(db, call)
    return await record_alone(usage, db, call)


async def record_alone(usage: Usage, db, call: BatchCall) -> BatchOutcome:
    """The batch in a transaction of its own."""
    now_us = to_us(datetime.now(timezone.utc))
    async with db.tenant_tx(call.caller.tenant_id) as conn:
        replay = await idempotency.claim(conn, call.caller, call.request_id, OPERATION, call.payload)
        if replay is not None:
            return from_stored(replay)
        result = await prepare(conn, call.events, now_us=now_us, limits=usage.limits, plans=usage.plans)
        await store(conn, result, want_ids=True)
        done = outcome(call, 0, {r.index: r for r in result.rejected}, result, set())
        await idempotency.remember(conn, call.caller, call.request_id, stored(done))
    return done


def outcome(call: BatchCall, base: int, rejected: dict[int, Rejection], result: IngestResult,
            seen: set[str]) -> BatchOutcome:
    """The batch's outcomes from a store whose input held its events from index `base` on;
    `seen`: the event ids answered before it in the same transaction (a later one is a duplicate)."""
    outcomes = dict(call.refused)
    inserted = result.inserted_ids
    times: dict[tuple[int, int], tuple[datetime, datetime]] = {}  # a batch's events share a few periods
    for k, i in enumerate(call.valid):
        r = rejected.get(base + k)
        if r is not None:
            kind, field_name = _REJECTION_STATUS.get(r.reason, ("invalid", r.reason))
            outcomes[i] = EventOutcome(i, error=EventError(_CODES[kind], r.reason.upper(), f"events[{i}].{field_name}",
                                                           r.detail))
            continue
        eid = call.events[k].event_id
        period = result.periods[base + k]
        at = times.get(period)
        if at is None:
            at = times[period] = (from_us(period[0]), from_us(period[1]))
        outcomes[i] = EventOutcome(i, Recorded(eid, eid not in inserted or eid in seen, *at))
        seen.add(eid)
    return BatchOutcome([outcomes[i] for i in range(call.size)])


def _stored_one(o: EventOutcome) -> dict:
    if o.error is not None:
        return {"i": o.index, "code": o.error.code, "reason": o.error.reason, "field": o.error.field,
                "description": o.error.description}
    r = o.recorded
    assert r is not None
    return {"i": o.index, "event_id": r.event_id, "duplicate": r.duplicate, "period_start": r.period_start.isoformat(),
            "period_end": r.period_end.isoformat()}


def stored(done: BatchOutcome) -> dict:
    """The outcome as kept with the request_id (a replay answers it again): per event in
    order, [event_id, duplicate, period number] or its error; the periods once each."""
    periods: dict[tuple[datetime, datetime], int] = {}
    events: list = []
    for o in done.outcomes:
        r = o.recorded
        if r is None:
            events.append(_stored_one(o))
            continue
        p = periods.setdefault((r.period_start, r.period_end), len(periods))
        events.append([r.event_id, r.duplicate, p])
    return {"periods": [[s.isoformat(), e.isoformat()] for s, e in periods], "events": events}


def from_stored(stored: dict) -> BatchOutcome:
    if "events" not in stored:  # the form kept before the periods were numbered
        return _from_stored_v1(stored)
    periods = [(datetime.fromisoformat(s), datetime.fromisoformat(e)) for s, e in stored["periods"]]
    out = []
    for i, d in enumerate(stored["events"]):
        if isinstance(d, dict):
            out.append(EventOutcome(i, error=EventError(d["code"], d["reason"], d["field"], d["description"])))
        else:
            out.append(EventOutcome(i, Recorded(d[0], d[1], *periods[d[2]])))
    return BatchOutcome(out)


def _from_stored_v1(stored: dict) -> BatchOutcome:
    out = []
    for d in stored["outcomes"]:
        if "code" in d:
            out.append(EventOutcome(d["i"], error=EventError(d["code"], d["reason"], d["field"], d["description"])))
        else:
            out.append(EventOutcome(d["i"], Recorded(d["event_id"], d["duplicate"],
                                                     datetime.fromisoformat(d["period_start"]),
                                                     datetime.fromisoformat(d["period_end"]))))
    return BatchOutcome(out)
