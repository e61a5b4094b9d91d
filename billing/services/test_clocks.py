"""Test clocks: create, read, list, advance, delete (docs/time.md, "Test clocks").

A clock is a tenant's frozen time. Its subscriptions live on it (`clock_time`). An advance is
a billing run of the clock's subscriptions only, as of the target time, through the same
machinery as any run (outbox -> run request -> executor -> period close -> invoice requests);
the clock is `advancing` until the run completes, and takes its new time in the
transaction that completes the run (`advance_completed`). A repeated or resumed advance is
the run's own guarantee: billed_periods bills a period once.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

import asyncpg

from billing.domain.periods import to_us
from billing.ops import metrics
from billing.services import audit, auto_resume, billing_runs, idempotency, paging
from billing.services.clock_time import refuse_advancing
from billing.services.context import Caller
from billing.services.errors import NotFound, ValidationError, Violations
from billing.store import test_clocks as store
from billing.store.db import ConnectionScope

MAX_NAME = 255
# The time line a clock may be set on: wide enough for any replay, narrow enough that
# every period boundary stays a representable instant.
EARLIEST = datetime(2000, 1, 1, tzinfo=timezone.utc)
LATEST = datetime(2100, 1, 1, tzinfo=timezone.utc)
# Paused subscriptions of the clock resumed per transaction before an advance's run.
RESUME_BATCH = 500


@dataclass(frozen=True)
class TestClock:
    id: uuid.UUID
    name: str
    frozen_time: datetime
    status: str  # ready | advancing
    advance_to: datetime | None
    advance_run_id: uuid.UUID | None
    created_at: datetime


@dataclass(frozen=True)
class TestClockPage:
    clocks: list[TestClock]
    next_page_token: str


def _clock(row: asyncpg.Record) -> TestClock:
    return TestClock(row["id"], row["name"], row["frozen_time"], row["status"], row["advance_to"],
                     row["advance_run_id"], row["created_at"])


def _outcome(c: TestClock) -> dict:
    return {"id": str(c.id), "name": c.name, "frozen_time": c.frozen_time.isoformat(), "status": c.status,
            "advance_to": c.advance_to.isoformat() if c.advance_to else None,
            "advance_run_id": str(c.advance_run_id) if c.advance_run_id else None,
            "created_at": c.created_at.isoformat()}


def _from_outcome(d: dict) -> TestClock:
    return TestClock(uuid.UUID(d["id"]), d["name"], datetime.fromisoformat(d["frozen_time"]), d["status"],
                     datetime.fromisoformat(d["advance_to"]) if d["advance_to"] else None,
                     uuid.UUID(d["advance_run_id"]) if d["advance_run_id"] else None,
                     datetime.fromisoformat(d["created_at"]))


def _check_time(value: datetime | None, field: str) -> datetime:
    if value is None:
        raise ValidationError(field, "is required")
    if not EARLIEST <= value < LATEST:
        raise ValidationError(field, f"must be from {EARLIEST.date()} to before {LATEST.date()}")
    return value


def _check_name(name: str) -> str:
    if not name or len(name) > MAX_NAME or not name.isprintable():
        raise ValidationError("name", f"must be 1..{MAX_NAME} printable characters")
    return name


async def create_test_clock(db, caller: Caller, request_id: str, *, name: str,
                            frozen_time: datetime | None) -> TestClock:
    v = Violations()
    v.check(idempotency.check_key, request_id)
    v.check(_check_name, name)
    v.check(_check_time, frozen_time, "frozen_time")
    v.raise_if_any()
    assert frozen_time is not None
    async with db.tenant_tx(caller.tenant_id) as conn:
        replay = await idempotency.claim(conn, caller, request_id, "CreateTestClock",
                                         {"name": name, "frozen_time": frozen_time.isoformat()})
        if replay is not None:
            return _from_outcome(replay)
        clock = _clock(await store.insert(conn, caller.tenant_id, uuid.uuid4(), name, frozen_time))
        await audit.record_change(conn, caller, entity_type="test_clock", entity_id=clock.id,
                                  action="test_clock.created", before=None, after=_outcome(clock),
                                  request_id=request_id)
        await idempotency.remember(conn, caller, request_id, _outcome(clock))
    return clock


async def get_test_clock(db, caller: Caller, clock_id: str) -> TestClock:
    clock_uuid = paging.parse_uuid(clock_id, "id")
    async with db.tenant_tx(caller.tenant_id) as conn:
        row = await store.get(conn, caller.tenant_id, clock_uuid)
    if row is None:
        raise NotFound("test clock", clock_id)
    return _clock(row)


async def list_test_clocks(db, caller: Caller, *, tokens: paging.PageTokens, page_size: int,
                           page_token: str) -> TestClockPage:
    limit = paging.page_size(page_size)
    after = tokens.decode(page_token, "ListTestClocks", caller.tenant_id, {})
    async with db.tenant_tx(caller.tenant_id) as conn:
        rows = await store.list_page(conn, caller.tenant_id, after, limit + 1)
    token = tokens.encode("ListTestClocks", caller.tenant_id, {}, rows[limit - 1]["created_at"],
                          rows[limit - 1]["id"]) if len(rows) > limit else ""
    return TestClockPage([_clock(r) for r in rows[:limit]], token)


async def advance_test_clock(db, caller: Caller, request_id: str, clock_id: str, to: datetime | None, *,
                             shards: int = 1) -> TestClock:
    """Move the clock forward to `to`: the clock's paused subscriptions due to resume by then
    are resumed at their resume time (as the scheduler's round does before its run), and one
    billing run of the clock's subscriptions as of `to` is requested; the clock shows
    `advancing` with that run until the run completes."""
    v = Violations()
    v.check(idempotency.check_key, request_id)
    clock_uuid = v.check(paging.parse_uuid, clock_id, "id")
    v.check(_check_time, to, "frozen_time")
    v.raise_if_any()
    assert clock_uuid is not None and to is not None
    async with db.tenant_tx(caller.tenant_id) as conn:
        replay = await idempotency.claim(conn, caller, request_id, "AdvanceTestClock",
                                         {"id": str(clock_uuid), "frozen_time": to.isoformat()})
        if replay is not None:
            return _from_outcome(replay)
        row = await store.get(conn, caller.tenant_id, clock_uuid, for_update=True)
        if row is None:
            raise NotFound("test clock", clock_id)
        refuse_advancing(row["status"] == "advancing", row["id"])
        if to <= row["frozen_time"]:
            raise ValidationError("frozen_time", f"must be after the clock's time {row['frozen_time'].isoformat()}: "
                                                 "a test clock moves forward only")
        await _resume_due(conn, caller, clock_uuid, to)
        run, created = await billing_runs.request_run(conn, caller, f"test-clock:{clock_uuid}:{to_us(to)}", to,
                                                shards=shards, request_id=request_id, test_clock_id=clock_uuid)
        clock = _clock(await store.start_advance(conn, caller.tenant_id, clock_uuid, to, run.id))
        await audit.record_change(conn, caller, entity_type="test_clock", entity_id=clock_uuid,
                                  action="test_clock.advance_requested", before=_outcome(_clock(row)),
                                  after=_outcome(clock), request_id=request_id)
        await idempotency.remember(conn, caller, request_id, _outcome(clock))
    if created:
        metrics.BILLING_RUNS.labels("pending").inc()
    return clock


async def _resume_due(conn: asyncpg.Connection, caller: Caller, clock_id: uuid.UUID, to: datetime) -> None:
    scope = ConnectionScope(conn)  # each batch a savepoint of the advance's transaction
    failed: list[uuid.UUID] = []
    while True:
        batch = await auto_resume.resume_due_batch(scope, caller, to, RESUME_BATCH, failed, test_clock_id=clock_id)
        failed += batch.failed
        if len(batch.resumed) + len(batch.failed) < RESUME_BATCH:
            return


async def advance_completed(conn: asyncpg.Connection, caller: Caller, clock_id: uuid.UUID, run_id: uuid.UUID) -> None:
    """In the transaction that completes the advance's run: the clock at its target, ready."""
    row = await store.finish_advance(conn, caller.tenant_id, clock_id, run_id)
    if row is not None:
        await audit.record_change(conn, caller, entity_type="test_clock", entity_id=clock_id,
                                  action="test_clock.advanced", before=None, after=_outcome(_clock(row)),
                                  request_id=str(run_id))


async def delete_test_clock(db, caller: Caller, request_id: str, clock_id: str) -> int:
    """Remove the clock, its subscriptions and their rows (usage, billed periods, pending
    lines, pause windows); the audit trail, billing runs and invoice requests already
    written stay. Returns how many subscriptions were removed."""
    idempotency.check_key(request_id)
    clock_uuid = paging.parse_uuid(clock_id, "id")
    async with db.tenant_tx(caller.tenant_id) as conn:
        replay = await idempotency.claim(conn, caller, request_id, "DeleteTestClock", {"id": str(clock_uuid)})
        if replay is not None:
            return int(replay["deleted_subscriptions"])
        row = await store.get(conn, caller.tenant_id, clock_uuid, for_update=True)
        if row is None:
            raise NotFound("test clock", clock_id)
        refuse_advancing(row["status"] == "advancing", row["id"])
        removed = await store.delete(conn, clock_uuid)
        assert removed is not None  # locked above
        await audit.record_change(conn, caller, entity_type="test_clock", entity_id=clock_uuid,
                                  action="test_clock.deleted", before=_outcome(_clock(row)),
                                  after={"deleted_subscriptions": removed}, request_id=request_id)
        await idempotency.remember(conn, caller, request_id, {"deleted_subscriptions": removed})
    return removed
