"""RecordUsageBatch in the group commit: batches and single calls of a tenant share a
transaction, one group in flight per tenant, and each call keeps exactly its own outcome
(duplicates within a batch, across the group and against Kafka-stored events, rejected
events, replays, conflicts)."""
from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from billing.domain.periods import to_us
from billing.services.context import Caller
from billing.services.errors import IdempotencyConflict
from billing.services.plans import PlanCache
from billing.services.usage import Usage, UsageEvent, UsageLimits, ingest
from billing.services.usage_batch import BatchOutcome, EventInput, record_batch
from billing.services.usage_record import GroupCommit
from billing.store.db import Database
from tests.group_probe import watch_groups_in_flight
from tests.integration.test_subscriptions_api import rid
from tests.integration.test_usage_group_commit import _call, _calls_total
from tests.integration.test_usage_ingest import _setup


@pytest.fixture
async def app_db(migrated):
    db = await Database.connect(migrated.database_url, min_size=1, max_size=8)
    yield db
    await db.close()


def _usage(window_s: float = 0.2, max_calls: int = 1000) -> tuple[Usage, GroupCommit]:
    usage = Usage(UsageLimits(), PlanCache())
    usage.group = GroupCommit(usage, window_s, max_calls)
    return usage, usage.group


def _in(sub: str, event_id: str, quantity: str = "1", metric: str = "calls", at=None) -> EventInput:
    return EventInput(event_id, sub, metric, quantity, at or datetime.now(timezone.utc), {})


async def _batch(usage, db, caller, events, request_id=None) -> BatchOutcome | Exception:
    try:
        return await record_batch(usage, db, caller, request_id or rid(), events)
    except Exception as exc:  # the outcome under test
        return exc


def _shape(done: BatchOutcome) -> list:
    return [("error", o.error.reason) if o.error else ("dup" if o.recorded.duplicate else "new")
            for o in done.outcomes]


async def test_batches_and_calls_in_one_group_keep_their_own_outcomes(stub, tenant, app_db, admin_conn,
                                                                      worker_db):
    _, sub = await _setup(stub, tenant)
    caller = Caller(uuid.UUID(tenant.id), "test")
    now = datetime.now(timezone.utc)
    # an event stored earlier by the Kafka path (the consumer's function, as the worker role)
    async with worker_db.tx() as conn:
        kafka = await ingest(conn, [UsageEvent("k-1", tenant.id, sub.id, "calls", "10", to_us(now))],
                             now_us=to_us(now), limits=UsageLimits(), plans=PlanCache())
    assert kafka.inserted == 1
    usage, group = _usage()
    first_rid = rid()
    first_events = [_in(sub.id, "b-1", "2"), _in(sub.id, "b-1", "2"), _in(sub.id, "k-1", "10"),
                    _in(sub.id, "b-2", "-3"), _in(str(uuid.uuid4()), "b-3"), _in(sub.id, "b-4", metric="nope"),
                    _in(sub.id, "b-5", "5", at=now - timedelta(days=400))]
    second_events = [_in(sub.id, "b-1", "2"), _in(sub.id, "b-6", "6")]  # b-1: the first batch's, earlier in the group
    conflict_rid = rid()
    results = await asyncio.gather(
        _batch(usage, app_db, caller, first_events, first_rid),
        _batch(usage, app_db, caller, second_events),
        _call(usage, app_db, caller, sub.id, event_id="b-6", quantity="6"),  # after the second batch's b-6
        _call(usage, app_db, caller, sub.id, event_id="s-1", quantity="7"),
        _call(usage, app_db, caller, sub.id, event_id="s-2", quantity="-1"),  # refused: no key kept
        _batch(usage, app_db, caller, [_in(sub.id, "c-1")], conflict_rid),
        _batch(usage, app_db, caller, [_in(sub.id, "c-2")], conflict_rid),  # same request_id, other events
    )
    first, second, single_dup, single_new, single_refused, conflict_a, conflict_b = results
    assert group.groups == 1  # all in one transaction, but the second use of conflict_rid (after it)
    assert _shape(first) == ["new", "dup", "dup", ("error", "NEGATIVE_QUANTITY"), ("error", "UNKNOWN_SUBSCRIPTION"),
                             ("error", "UNKNOWN_METRIC"), ("error", "TOO_OLD")]
    assert first.outcomes[3].error.field == "events[3].quantity"
    assert _shape(second) == ["dup", "new"]
    assert single_dup.duplicate is True and single_new.duplicate is False
    assert single_refused.__class__.__name__ == "ValidationError"
    assert _shape(conflict_a) == ["new"] and isinstance(conflict_b, IdempotencyConflict)
    # stored once each: k-1 (10), b-1 (2), b-6 (6), s-1 (7), c-1 (1)
    assert await _calls_total(admin_conn, tenant) == (26, 5)
    # a replay, later and in another group, answers the first response exactly and stores nothing
    replay = await _batch(usage, app_db, caller, first_events, first_rid)
    assert replay == first
    assert await _calls_total(admin_conn, tenant) == (26, 5)
    # without the group (one transaction per batch) the replay reads the same stored outcome
    alone = Usage(UsageLimits(), PlanCache())
    assert await _batch(alone, app_db, caller, first_events, first_rid) == first


async def test_one_group_in_flight_per_tenant(stub, tenant, app_db, admin_conn, monkeypatch):
    _, sub = await _setup(stub, tenant)
    caller = Caller(uuid.UUID(tenant.id), "test")
    usage, group = _usage(window_s=0.001, max_calls=5)
    most = watch_groups_in_flight(monkeypatch)
    calls = [_call(usage, app_db, caller, sub.id, event_id=f"g-{i}") for i in range(23)]
    calls += [_batch(usage, app_db, caller, [_in(sub.id, f"gb-{i}-{j}") for j in range(50)]) for i in range(3)]
    results = await asyncio.gather(*calls)
    assert most[0] == 1  # never two transactions of the tenant at once
    assert group.groups >= 5  # at most 5 calls a group
    assert all(not r.duplicate for r in results[:23])
    assert all(_shape(r) == ["new"] * 50 for r in results[23:])
    assert await _calls_total(admin_conn, tenant) == (173, 173)


async def test_a_group_holds_at_most_its_events_and_a_larger_batch_goes_alone(stub, tenant, app_db, admin_conn):
    _, sub = await _setup(stub, tenant)
    caller = Caller(uuid.UUID(tenant.id), "test")
    usage = Usage(UsageLimits(), PlanCache())
    group = usage.group = GroupCommit(usage, 0.2, 1000, max_events=25)
    sizes = [10, 10, 10, 10, 10, 40]
    results = await asyncio.gather(*(_batch(usage, app_db, caller, [_in(sub.id, f"me-{i}-{j}") for j in range(n)])
                                     for i, n in enumerate(sizes)))
    assert [_shape(r) for r in results] == [["new"] * n for n in sizes]
    # 10 + 10 (a third would make 30), 10 + 10, 10 (with the 40: 50), then the 40 alone
    assert group.groups == 4
    assert await _calls_total(admin_conn, tenant) == (90, 90)


def test_the_events_of_a_group_are_a_setting():
    from pydantic import ValidationError as SettingError

    from billing.bootstrap import build
    from billing.config import Settings

    assert build(Settings(env_file="", usage_group_commit_max_events=500)).usage.group.max_events == 500
    assert build(Settings(env_file="")).usage.group.max_events == 20_000
    with pytest.raises(SettingError, match="usage_group_commit_max_events"):
        Settings(env_file="", usage_group_commit_max_events=0)
