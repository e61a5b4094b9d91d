"""RecordUsage and RecordUsageBatch: usage sent over gRPC, deduplicated with the Kafka path
by event id (both store through `usage.prepare` / `usage.store`).

`record_one` is one call in one transaction. `GroupCommit` coalesces the RecordUsage and
RecordUsageBatch calls of a tenant arriving within a few milliseconds into ONE transaction
(one commit, one flush of the WAL, a handful of statements for the whole group), up to
`in_flight` groups of a tenant at a time: each call is still answered with exactly what it would
have been answered alone, and only after the group's commit.

How a group keeps each call's outcome its own:
- replays and request_id conflicts are read first (keys committed before);
- the events are validated before anything is written; a refused RecordUsage call is
  answered with its error and leaves no key, as its own rolled-back transaction would have
  (a batch answers its refused events in its outcome and keeps its key, as alone);
- the keys of the accepted calls are inserted in one statement; a key another transaction
  took meanwhile (or a second call with the same request_id in the group) is left out and
  that call runs alone after the commit, where it sees the replay as it would have;
- an event id stored by an earlier call of the group is a duplicate for the later ones;
- any database error fails the group's transaction only: every call of it is then run
  alone, in its own transaction, so one call's failure is never another's.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any
from datetime import datetime, timezone

import asyncpg

from billing.domain.periods import from_us, to_us
from billing.services import idempotency, usage_batch
from billing.services.context import Caller
from billing.services.errors import FailedPrecondition, IdempotencyConflict, NotFound, ValidationError
from billing.services.usage import (_REJECTION_STATUS, MAX_PROPERTIES, Recorded, Rejection, Usage, UsageEvent,
                                    ingest, prepare, store)
from billing.services.uow import entry_keys
from billing.store import idempotency as keys_store

OPERATION = "RecordUsage"
log = logging.getLogger(__name__)


@dataclass(eq=False)  # identity: calls are dict keys, and two calls may carry equal values
class Call:
    caller: Caller
    request_id: str
    event: UsageEvent
    payload: dict
    subscription_id: str
    future: asyncio.Future | None = field(default=None, repr=False)
    operation: str = OPERATION

    @property
    def events(self) -> list[UsageEvent]:
        return [self.event]

    @property
    def request_digest(self) -> bytes:
        return idempotency.digest(OPERATION, self.payload)


def new_call(caller, *, request_id: str, event_id: str, subscription_id: str, metric_code: str, quantity: str,
             occurred_at: datetime | None, properties: dict[str, str]) -> Call:
    """The call, or the error the request's shape alone deserves (raised before any queueing)."""
    idempotency.check_key(request_id)
    event_id = event_id or request_id
    if occurred_at is None:
        raise ValidationError("occurred_at", "is required: when the usage happened")
    if len(properties) > MAX_PROPERTIES:
        raise ValidationError("properties", f"at most {MAX_PROPERTIES} properties")
    event = UsageEvent(event_id, str(caller.tenant_id), subscription_id, metric_code, quantity,
                       to_us(occurred_at), dict(properties) or None)
    payload = {"event_id": event_id, "subscription_id": subscription_id, "metric_code": metric_code,
               "quantity": quantity, "occurred_at": occurred_at.isoformat(), "properties": properties}
    return Call(caller, request_id, event, payload, subscription_id)


def rejection_error(r: Rejection, subscription_id: str) -> Exception:
    kind, field_name = _REJECTION_STATUS.get(r.reason, ("invalid", r.reason))
    if kind == "not_found":
        return NotFound("subscription", subscription_id)
    if kind == "precondition":
        return FailedPrecondition(f"{r.reason}: {r.detail}", reason=r.reason.upper())
    return ValidationError(field_name, r.detail)


def _now_us() -> int:
    return to_us(datetime.now(timezone.utc))


def _recorded(stored: dict) -> Recorded:
    return Recorded(stored["event_id"], stored["duplicate"], datetime.fromisoformat(stored["period_start"]),
                    datetime.fromisoformat(stored["period_end"]))


def _stored(r: Recorded) -> dict:
    return {"event_id": r.event_id, "duplicate": r.duplicate, "period_start": r.period_start.isoformat(),
            "period_end": r.period_end.isoformat()}


async def record_one(usage: Usage, db, call: Call) -> Recorded:
    """One call in its own transaction."""
    now_us = _now_us()
    async with db.tenant_tx(call.caller.tenant_id) as conn:
        replay = await idempotency.claim(conn, call.caller, call.request_id, OPERATION, call.payload)
        if replay is not None:
            return _recorded(replay)
        result = await ingest(conn, [call.event], now_us=now_us, limits=usage.limits, plans=usage.plans)
        if result.rejected:  # raised inside the transaction: the request_id is not kept
            raise rejection_error(result.rejected[0], call.subscription_id)
        start, end = result.periods[0]
        recorded = Recorded(call.event.event_id, result.inserted == 0, from_us(start), from_us(end))
        await idempotency.remember(conn, call.caller, call.request_id, _stored(recorded))
    return recorded


# A group holds at most this many events by default (RecordUsageBatch calls count their
# events; BILLING_USAGE_GROUP_COMMIT_MAX_EVENTS): twenty full batches, as many as the Kafka
# path stores per statement. Per group, PostgreSQL reads each subscription and upserts each
# total once, and sorts; larger groups spread that over more events (docs/usage.md).
MAX_GROUP_EVENTS = 20000


class GroupCommit:
    """Concurrent RecordUsage and RecordUsageBatch calls of a tenant in one transaction: the
    calls arriving within `window_s` of the first, up to `max_calls` calls and `max_events`
    events. Up to `in_flight` groups of a tenant run at once (per process):
    the calls arriving while that many are in flight wait and form the next group as soon as
    one commits, so groups grow with the load. With two in flight, one group's Python
    overlaps the other's statements in PostgreSQL; they cannot deadlock, since every
    statement takes its locks in key order (the keys, the event ids, the totals: docs/usage.md);
    a group that fails all the same (a deadlock with another writer) runs each call alone."""

    def __init__(self, usage: Usage, window_s: float, max_calls: int, in_flight: int = 1,
                 max_events: int = MAX_GROUP_EVENTS):
        self.usage = usage
        self.window_s = window_s
        self.max_calls = max_calls
        self.max_events = max_events
        self.in_flight = in_flight
        self._pending: dict[uuid.UUID, collections.deque] = {}
        self._events: dict[uuid.UUID, int] = {}  # events pending per tenant
        self._timers: dict[uuid.UUID, asyncio.TimerHandle] = {}
        self._running: dict[uuid.UUID, int] = {}  # groups in flight per tenant
        self._flushing: set[asyncio.Task] = set()
        # Transactions run for groups, and calls answered by one (for tests and metrics).
        self.groups = 0
        self.grouped_calls = 0
        self.failed_groups = 0  # groups whose transaction failed: each call then ran alone

    async def submit(self, db, call):
        """`call`: a `Call` (answered with Recorded) or a `usage_batch.BatchCall` (BatchOutcome)."""
        loop = asyncio.get_running_loop()
        call.future = loop.create_future()
        tenant = call.caller.tenant_id
        calls = self._pending.setdefault(tenant, collections.deque())
        calls.append(call)
        events = self._events[tenant] = self._events.get(tenant, 0) + len(call.events)
        if self._running.get(tenant, 0) >= self.in_flight:
            pass  # the next group, as soon as one in flight commits
        elif len(calls) >= self.max_calls or events >= self.max_events:
            self._flush(db, tenant)
        elif tenant not in self._timers:
            self._timers[tenant] = loop.call_later(self.window_s, self._flush, db, tenant)
        return await call.future

    def _flush(self, db, tenant: uuid.UUID) -> None:
        timer = self._timers.pop(tenant, None)
        if timer is not None:
            timer.cancel()
        calls = self._pending.get(tenant)
        if self._running.get(tenant, 0) >= self.in_flight or not calls:
            return
        group: list = []
        events = 0
        while calls and len(group) < self.max_calls and (not group or events + len(calls[0].events) <= self.max_events):
            group.append(calls.popleft())
            events += len(group[-1].events)
        self._events[tenant] -= events
        if not calls:
            del self._pending[tenant], self._events[tenant]
        self._running[tenant] = self._running.get(tenant, 0) + 1
        task = asyncio.get_running_loop().create_task(self._run(db, tenant, group))
        self._flushing.add(task)
        task.add_done_callback(self._flushing.discard)

    async def _run(self, db, tenant: uuid.UUID, calls: list) -> None:
        try:
            answers, alone = await self._group(db, tenant, calls)
            self.groups += 1
            self.grouped_calls += len(answers)
        except asyncpg.InvalidAuthorizationSpecificationError:  # a caller's key revoked: a refusal, not a fault
            log.info("RecordUsage group of %d calls has a revoked API key; running each alone", len(calls))
            answers, alone = {}, calls
        except Exception:  # the group's transaction failed (a deadlock too): each call in a transaction of its own
            self.failed_groups += 1
            log.warning("RecordUsage group of %d calls failed; running each alone", len(calls), exc_info=True)
            answers, alone = {}, calls
        finally:
            if self._running[tenant] <= 1:
                del self._running[tenant]
            else:
                self._running[tenant] -= 1
            self._flush(db, tenant)  # the calls that arrived meanwhile
        for call, answer in answers.items():
            _answer(call, answer)
        if alone:
            await asyncio.gather(*(self._alone(db, c) for c in alone))

    async def _alone(self, db, call) -> None:
        try:
            with entry_keys(_keys_of([call])):
                if call.operation == OPERATION:
                    _answer(call, await record_one(self.usage, db, call))
                else:
                    _answer(call, await usage_batch.record_alone(self.usage, db, call))
        except Exception as exc:
            _answer(call, exc)

    async def _group(self, db, tenant: uuid.UUID, calls: list) -> tuple[dict, list]:
        """({call: its answer or the exception to raise}, the calls to run alone afterwards)."""
        alone: list = []
        first: dict[str, Any] = {}
        for c in calls:  # a request_id twice in a group: the later call after the commit (a replay then)
            (alone.append(c) if c.request_id in first else first.__setitem__(c.request_id, c))
        group = list(first.values())
        digests = {c: c.request_digest for c in group}
        now_us = _now_us()
        # Every caller's key is checked live as the group's transaction opens: one revoked
        # fails the group, and each call is then run alone under its own key.
        with entry_keys(_keys_of(calls)):
            async with db.tenant_tx(tenant) as conn:
                answers = await self._in_tx(conn, tenant, group, digests, now_us, alone)
        return answers, alone

    async def _in_tx(self, conn, tenant: uuid.UUID, group: list, digests: dict, now_us: int, alone: list) -> dict:
        answers: dict = {}
        known = await keys_store.get_keys(conn, tenant, [c.request_id for c in group])
        new: list = []
        for c in group:
            row = known.get(c.request_id)
            if row is None:
                new.append(c)
            elif row["operation"] != c.operation or bytes(row["request_hash"]) != digests[c]:
                answers[c] = IdempotencyConflict(c.request_id, c.operation)
            else:
                answers[c] = _replayed(c, row["response"])
        if not new:
            return answers
        starts: list[int] = []
        flat: list[UsageEvent] = []
        for c in new:
            starts.append(len(flat))
            flat += c.events
        result = await prepare(conn, flat, now_us=now_us, limits=self.usage.limits, plans=self.usage.plans)
        rejected = {r.index: r for r in result.rejected}
        accepted = []
        for k, c in enumerate(new):
            r = rejected.get(starts[k]) if c.operation == OPERATION else None
            if r is not None:  # a refused call leaves no key, as its own transaction would
                answers[c] = rejection_error(r, c.subscription_id)
            else:  # a batch keeps its key whatever its events' outcomes
                accepted.append(k)
        claimed = await keys_store.insert_keys(conn, tenant, [new[k].request_id for k in accepted],
                                               [new[k].operation for k in accepted],
                                               [digests[new[k]] for k in accepted]) if accepted else set()
        lost = [k for k in accepted if new[k].request_id not in claimed]
        alone += [new[k] for k in lost]
        drop = frozenset(i for k in lost for i in range(starts[k], starts[k] + len(new[k].events)))
        await store(conn, result, drop=drop, want_ids=True)
        seen: set[str] = set()
        responses: dict[str, dict] = {}
        for k in accepted:
            c = new[k]
            if c.request_id not in claimed:
                continue
            if c.operation == OPERATION:
                eid = c.event.event_id
                start, end = result.periods[starts[k]]
                recorded = Recorded(eid, eid not in result.inserted_ids or eid in seen, from_us(start), from_us(end))
                seen.add(eid)
                responses[c.request_id] = _stored(recorded)
                answers[c] = recorded
            else:
                done = usage_batch.outcome(c, starts[k], rejected, result, seen)
                responses[c.request_id] = usage_batch.stored(done)
                answers[c] = done
        if responses:
            await keys_store.set_responses(conn, tenant, responses)
        return answers


def _replayed(call, response: dict):
    return _recorded(response) if call.operation == OPERATION else usage_batch.from_stored(response, call.event_ids)


def _keys_of(calls: list) -> tuple[bytes, ...]:
    return tuple({c.caller.api_key_hash: None for c in calls if c.caller.api_key_hash is not None})


def _answer(call, answer) -> None:
    fut = call.future
    if fut is None or fut.done():  # the caller went away (deadline, cancel): its outcome is stored all the same
        return
    if isinstance(answer, BaseException):
        fut.set_exception(answer)
    else:
        fut.set_result(answer)
