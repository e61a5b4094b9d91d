"""RecordUsageBatch: up to MAX_EVENTS usage events in one transaction (the group commit's,
shared with the tenant's other calls: `usage_record.GroupCommit`), one outcome each.

An event refused (by the same rules as RecordUsage) is answered in its outcome, naming
the field with the event's index (`events[3].quantity`); the others are stored. The
request_id covers the whole batch: a replay answers the first response exactly, refusals
included (unlike RecordUsage, whose refused call leaves no key: here the request as a
whole succeeded).

A batch travels as columns (`BatchInput` in, `BatchOutcome` out): a field's values in one
list each, so the per-event work is a few list operations rather than an object per event
and per outcome (docs/usage.md, "RecordUsage at scale").
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from itertools import repeat

from billing.domain.periods import from_us, to_us
from billing.services import idempotency
from billing.services.context import Caller
from billing.services.errors import ValidationError
from billing.services.usage import (_REJECTION_STATUS, MAX_PROPERTIES, IngestResult, Recorded, Rejection, Usage,
                                    UsageEvent, prepare, store)
from billing.services.usage_batch_stored import from_stored, stored

__all__ = ["MAX_EVENTS", "OPERATION", "BatchCall", "BatchInput", "BatchOutcome", "EventError", "EventInput",
           "EventOutcome", "from_stored", "new_batch_call", "outcome", "record_alone", "record_batch", "stored"]

OPERATION = "RecordUsageBatch"
MAX_EVENTS = 1000
# google.rpc.Code of each kind of refusal, as RecordUsage would answer it.
_CODES = {"invalid": 3, "not_found": 5, "precondition": 9}
_event = partial(tuple.__new__, UsageEvent)


@dataclass(frozen=True)
class EventInput:
    event_id: str
    subscription_id: str
    metric_code: str
    quantity: str
    occurred_at: datetime | None
    properties: dict[str, str]


@dataclass
class BatchInput:
    """A batch's events as columns, one entry per event in request order. `occurred_us`:
    None when the time is missing. `properties`: dicts the batch only reads (the stored events
    keep them as they are). `occurred_text`: the times as the request's digest writes them
    (`datetime.isoformat()`); None: UTC, from `occurred_us`."""

    event_ids: list[str]
    subscription_ids: list[str]
    metric_codes: list[str]
    quantities: list[str]
    occurred_us: list[int | None]
    properties: list[dict[str, str]]
    occurred_text: list[str | None] | None = None

    @classmethod
    def of(cls, events: list[EventInput]) -> BatchInput:
        return cls([e.event_id for e in events], [e.subscription_id for e in events],
                   [e.metric_code for e in events], [e.quantity for e in events],
                   [to_us(e.occurred_at) if e.occurred_at is not None else None for e in events],
                   [e.properties for e in events],
                   [e.occurred_at.isoformat() if e.occurred_at is not None else None for e in events])

    def __len__(self) -> int:
        return len(self.event_ids)


def utc_texts(times: list[int | None]) -> list[str | None]:
    """`datetime.isoformat()` of each UTC time in microseconds, each second formatted once."""
    seconds: dict[int, str] = {}
    out: list[str | None] = []
    for us in times:
        if us is None:
            out.append(None)
            continue
        s, frac = divmod(us, 1_000_000)
        text = seconds.get(s)
        if text is None:
            text = seconds[s] = from_us(s * 1_000_000).isoformat()[:-6]
        out.append(f"{text}.{frac:06d}+00:00" if frac else f"{text}+00:00")
    return out


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


class BatchOutcome:
    """One outcome per event, as columns: per index its event id, whether it was a
    duplicate and the number of its period in `periods` (-1: refused, its error in
    `errors`). `outcomes` gives them as objects (tests, the earlier kept forms)."""

    __slots__ = ("event_ids", "duplicate", "period", "periods", "errors")

    def __init__(self, outcomes: list[EventOutcome]):
        numbers: dict[tuple[datetime, datetime], int] = {}
        self.event_ids, self.duplicate, self.period = [], [], []
        self.errors: dict[int, EventError] = {}
        for i, o in enumerate(outcomes):
            r = o.recorded
            if r is None:
                assert o.error is not None
                self.errors[i] = o.error
                self.event_ids.append("")
                self.duplicate.append(False)
                self.period.append(-1)
            else:
                self.event_ids.append(r.event_id)
                self.duplicate.append(r.duplicate)
                self.period.append(numbers.setdefault((r.period_start, r.period_end), len(numbers)))
        self.periods = list(numbers)

    @classmethod
    def of_columns(cls, event_ids: list[str], duplicate: list[bool], period: list[int],
                   periods: list[tuple[datetime, datetime]], errors: dict[int, EventError]) -> BatchOutcome:
        done = cls.__new__(cls)
        done.event_ids, done.duplicate, done.period, done.periods, done.errors = (event_ids, duplicate, period,
                                                                                 periods, errors)
        return done

    @property
    def outcomes(self) -> list[EventOutcome]:
        return [EventOutcome(i, error=self.errors[i]) if p < 0 else
                EventOutcome(i, Recorded(self.event_ids[i], self.duplicate[i], *self.periods[p]))
                for i, p in enumerate(self.period)]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BatchOutcome) and self.outcomes == other.outcomes

    __hash__ = None  # type: ignore[assignment]

    def count(self, what: str) -> int:
        if what == "rejected":
            return len(self.errors)
        dups = sum(self.duplicate)
        return dups if what == "duplicates" else len(self.period) - len(self.errors) - dups


@dataclass(eq=False)  # identity: calls are dict keys in a group
class BatchCall:
    """A RecordUsageBatch call checked for shape, ready to store alone or in a group
    (`usage_record.GroupCommit`): `events` are the events that passed the shape checks,
    `valid[k]` the request's index of `events[k]`; `request_digest` what a replay must match."""

    caller: Caller
    request_id: str
    size: int
    events: list[UsageEvent]
    valid: list[int]
    refused: dict[int, EventError]
    event_ids: list[str]
    request_digest: bytes
    operation: str = OPERATION
    future: asyncio.Future | None = field(default=None, repr=False)


def _shape_error(i: int, event_id: str, at: int | None, properties: dict) -> EventError | None:
    if not event_id:
        return EventError(3, "INVALID_EVENT_ID", f"events[{i}].event_id", "is required in a batch")
    if at is None:
        return EventError(3, "INVALID_OCCURRED_AT", f"events[{i}].occurred_at", "is required: when the usage happened")
    if len(properties) > MAX_PROPERTIES:
        return EventError(3, "INVALID_PROPERTIES", f"events[{i}].properties", f"at most {MAX_PROPERTIES} properties")
    return None


def new_batch_call(caller: Caller, request_id: str, events: list[EventInput] | BatchInput) -> BatchCall:
    """The call, or the error the request's shape alone deserves (raised before any queueing)."""
    idempotency.check_key(request_id)
    b = events if isinstance(events, BatchInput) else BatchInput.of(events)
    n = len(b)
    if not n:
        raise ValidationError("events", "at least one event")
    if n > MAX_EVENTS:
        raise ValidationError("events", f"at most {MAX_EVENTS} events per batch, got {n}")
    ids, subs, metrics, quantities, times, props = (b.event_ids, b.subscription_ids, b.metric_codes, b.quantities,
                                                    b.occurred_us, b.properties)
    texts = b.occurred_text if b.occurred_text is not None else utc_texts(times)
    # What the digest has always read: per event a dict of its fields (keys sorted when hashed).
    payload = [{"event_id": e, "metric_code": m, "occurred_at": t, "properties": p, "quantity": q,
                "subscription_id": s} for e, s, m, q, t, p in zip(ids, subs, metrics, quantities, texts, props)]
    tenant = str(caller.tenant_id)
    kept = [p or None for p in props]  # read, never written: the dicts the request was read into
    refused: dict[int, EventError] = {}
    if all(ids) and None not in times and not any(len(p) > MAX_PROPERTIES for p in props if p):
        valid = list(range(n))
        evs = list(map(_event, zip(ids, repeat(tenant), subs, metrics, quantities, times, kept)))
    else:
        valid, evs = [], []
        for i in range(n):
            at = times[i]
            err = _shape_error(i, ids[i], at, props[i])
            if err is not None:
                refused[i] = err
            else:
                assert at is not None  # _shape_error refused the event otherwise
                valid.append(i)
                evs.append(UsageEvent(ids[i], tenant, subs[i], metrics[i], quantities[i], at, kept[i]))
    return BatchCall(caller, request_id, n, evs, valid, refused, ids,
                     idempotency.digest_of_texts(OPERATION, payload))


async def record_batch(usage: Usage, db, caller: Caller, request_id: str,
                       events: list[EventInput] | BatchInput) -> BatchOutcome:
    call = new_batch_call(caller, request_id, events)
    if usage.group is not None:  # with the RecordUsage calls and batches of the tenant arriving meanwhile
        return await usage.group.submit(db, call)
    return await record_alone(usage, db, call)


async def record_alone(usage: Usage, db, call: BatchCall) -> BatchOutcome:
    """The batch in a transaction of its own."""
    now_us = to_us(datetime.now(timezone.utc))
    async with db.tenant_tx(call.caller.tenant_id) as conn:
        replay = await idempotency.claim(conn, call.caller, call.request_id, OPERATION, None,
                                         digest=call.request_digest)
        if replay is not None:
            return from_stored(replay, call.event_ids)
        result = await prepare(conn, call.events, now_us=now_us, limits=usage.limits, plans=usage.plans)
        await store(conn, result, want_ids=True)
        done = outcome(call, 0, {r.index: r for r in result.rejected}, result, set())
        await idempotency.remember(conn, call.caller, call.request_id, stored(done))
    return done


def outcome(call: BatchCall, base: int, rejected: dict[int, Rejection], result: IngestResult,
            seen: set[str]) -> BatchOutcome:
    """The batch's outcomes from a store whose input held its events from index `base` on;
    `seen`: the event ids answered before it in the same transaction (a later one is a duplicate)."""
    n = call.size
    ids = call.event_ids
    duplicate = [False] * n
    period = [-1] * n
    errors = dict(call.refused)
    inserted = result.inserted_ids
    attributed = result.periods
    numbers: dict[tuple[int, int], int] = {}  # a batch's events share a few periods
    add = seen.add
    for k, i in enumerate(call.valid):
        if rejected:
            r = rejected.get(base + k)
            if r is not None:
                kind, field_name = _REJECTION_STATUS.get(r.reason, ("invalid", r.reason))
                errors[i] = EventError(_CODES[kind], r.reason.upper(), f"events[{i}].{field_name}", r.detail)
                continue
        eid = ids[i]
        p = attributed[base + k]
        number = numbers.get(p)
        period[i] = number if number is not None else numbers.setdefault(p, len(numbers))
        duplicate[i] = eid not in inserted or eid in seen
        add(eid)
    return BatchOutcome.of_columns(ids, duplicate, period, [(from_us(s), from_us(e)) for s, e in numbers], errors)
