"""Two group transactions of a tenant in flight at once (BILLING_USAGE_GROUPS_IN_FLIGHT):
many concurrent RecordUsage calls and RecordUsageBatch calls of one tenant, with event ids
overlapping across calls, batches and groups, on the same subscriptions and metrics. Every
lock a group takes comes in key order, so no group deadlocks; each call is answered once
with its exact outcome, each event id is stored once, the totals are the sum of the
distinct events."""
from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter
from datetime import datetime, timezone

import asyncpg
import pytest

from billing.services.context import Caller
from billing.services.plans import PlanCache
from billing.domain.periods import to_us
from billing.services.usage import Usage, UsageEvent, UsageLimits, ingest
from billing.services.usage_batch import BatchOutcome, EventInput, record_batch
from billing.services.usage_record import GroupCommit
from billing.store import idempotency as keys_store
from billing.store.db import Database
from tests.group_probe import watch_groups_in_flight
from tests.integration.test_subscriptions_api import rid
from tests.integration.test_usage_ingest import _setup


@pytest.fixture
async def app_db(migrated):
    db = await Database.connect(migrated.database_url, min_size=2, max_size=8)
    yield db
    await db.close()


def _usage(in_flight: int, window_s: float = 0.002, max_calls: int = 8) -> tuple[Usage, GroupCommit]:
    usage = Usage(UsageLimits(), PlanCache())
    usage.group = GroupCommit(usage, window_s, max_calls, in_flight)
    return usage, usage.group


class Ids:
    """Event id n always carries the same subscription, metric and quantity: a duplicate
    is the same event sent again, and the totals are a function of the distinct ids."""

    def __init__(self, subs: list[str], at: datetime):
        self.subs, self.at = subs, at

    def of(self, n: int) -> tuple[str, str, str, str, dict[str, str]]:
        metric = "calls" if n % 3 else "seats"
        props = {"user": f"u{n % 7}"} if metric == "seats" else {}
        return f"ev-{n}", self.subs[n % len(self.subs)], metric, str(n % 5 + 1), props

    def event(self, n: int) -> EventInput:
        eid, sub, metric, q, props = self.of(n)
        return EventInput(eid, sub, metric, q, self.at, props)


async def _record(usage, db, caller, ids: Ids, n: int, request_id: str):
    eid, sub, metric, q, props = ids.of(n)
    try:
        return await usage.record(db, caller, request_id=request_id, event_id=eid, subscription_id=sub,
                                  metric_code=metric, quantity=q, occurred_at=ids.at, properties=props)
    except Exception as exc:  # would be a failure of the test
        return exc


async def _batch(usage, db, caller, ids: Ids, ns: list[int], request_id: str):
    try:
        return await record_batch(usage, db, caller, request_id, [ids.event(n) for n in ns])
    except Exception as exc:
        return exc


async def test_two_groups_in_flight_keep_every_outcome_exact(stub, tenant, app_db, admin_conn):
    subs = [(await _setup(stub, tenant))[1].id for _ in range(3)]
    caller = Caller(uuid.UUID(tenant.id), "test")
    usage, group = _usage(in_flight=2)
    ids = Ids(subs, datetime.now(timezone.utc))
    rng = random.Random(24)
    pool = 300  # each wave draws from ids [100 * wave, 100 * wave + pool): new ids, and ids stored before
    seen_ids: set[int] = set()
    replays: list[tuple[int, int]] = []  # (index, index) of two calls sharing a request_id
    new: Counter = Counter()  # how many calls or events were answered "not a duplicate", per id
    for wave in range(4):
        jobs, kinds = [], []
        for _ in range(12):  # batches of ids in random order: they overlap each other and the calls
            ns = rng.sample(range(100 * wave, 100 * wave + pool), 60)
            seen_ids.update(ns)
            jobs.append(_batch(usage, app_db, caller, ids, ns, rid()))
            kinds.append(("batch", ns))
        for _ in range(80):
            n = rng.randrange(100 * wave, 100 * wave + pool)
            seen_ids.add(n)
            request_id = rid()
            jobs.append(_record(usage, app_db, caller, ids, n, request_id))
            kinds.append(("call", [n]))
            if rng.random() < 0.1:  # the same request sent twice at once: one outcome, answered twice
                replays.append((len(jobs) - 1, len(jobs)))
                jobs.append(_record(usage, app_db, caller, ids, n, request_id))
                kinds.append(("replay", [n]))
        order = list(range(len(jobs)))
        rng.shuffle(order)
        started = [asyncio.ensure_future(jobs[i]) for i in order]
        done = dict(zip(order, await asyncio.gather(*started)))
        results = [done[i] for i in range(len(jobs))]
        errors = [r for r in results if isinstance(r, Exception)]
        assert errors == [], errors[:3]
        for (kind, ns), r in zip(kinds, results):
            if kind == "batch":
                assert isinstance(r, BatchOutcome) and [o.recorded.event_id for o in r.outcomes] == [f"ev-{n}" for n in ns]
                new.update(o.recorded.event_id for o in r.outcomes if not o.recorded.duplicate)
            elif kind == "call":
                assert r.event_id == f"ev-{ns[0]}"
                new.update([r.event_id] if not r.duplicate else [])
        for a, b in replays:
            assert results[a] == results[b]  # a replay answers exactly what the first got
        replays.clear()
        # each id stored so far was answered "new" exactly once, over all the waves
        assert set(new) == {f"ev-{n}" for n in seen_ids} and set(new.values()) == {1}
        assert await admin_conn.fetchval("select count(*) from usage_events where tenant_id = $1",
                                         uuid.UUID(tenant.id)) == len(seen_ids)
    assert group.failed_groups == 0  # no group deadlocked (nor fell back for any other reason)
    assert group.groups > 4 * 12 * 2 // 8  # many groups, two at a time
    rows = await admin_conn.fetch(
        "select subscription_id::text as sub, metric_code, quantity_sum, event_count from usage_totals "
        "where tenant_id = $1", uuid.UUID(tenant.id))
    want: dict[tuple[str, str], list[int]] = {}
    for n in seen_ids:
        _, sub, metric, q, _ = ids.of(n)
        acc = want.setdefault((sub, metric), [0, 0])
        acc[0] += int(q)
        acc[1] += 1
    assert {(r["sub"], r["metric_code"]): [int(r["quantity_sum"]), r["event_count"]] for r in rows} == want
    assert await admin_conn.fetchval("select count(*) from usage_event_ids where tenant_id = $1",
                                     uuid.UUID(tenant.id)) == len(seen_ids)


@pytest.mark.parametrize("in_flight", [1, 2])
async def test_at_most_the_setting_s_groups_in_flight(stub, tenant, app_db, admin_conn, monkeypatch, in_flight):
    _, sub = await _setup(stub, tenant)
    caller = Caller(uuid.UUID(tenant.id), "test")
    usage, group = _usage(in_flight, window_s=0.001, max_calls=5)
    ids = Ids([sub.id], datetime.now(timezone.utc))
    most = watch_groups_in_flight(monkeypatch)
    results = await asyncio.gather(*(_record(usage, app_db, caller, ids, 3 * i + 1, rid()) for i in range(30)))
    assert most[0] == in_flight
    assert [r.duplicate for r in results] == [False] * 30


async def test_a_deadlocked_group_runs_each_call_alone(stub, tenant, app_db, admin_conn, monkeypatch):
    _, sub = await _setup(stub, tenant)
    caller = Caller(uuid.UUID(tenant.id), "test")
    usage, group = _usage(in_flight=2, window_s=0.05, max_calls=100)
    ids = Ids([sub.id], datetime.now(timezone.utc))
    real, failed = keys_store.set_responses, []

    async def deadlock_once(conn, *args):
        if not failed:  # after the group stored its events: the rollback must take them away
            failed.append(True)
            raise asyncpg.exceptions.DeadlockDetectedError("injected: deadlock detected")
        return await real(conn, *args)

    monkeypatch.setattr(keys_store, "set_responses", deadlock_once)
    calls = [_record(usage, app_db, caller, ids, 3 * n + 1, rid()) for n in (1, 2, 2, 3)]
    batch = _batch(usage, app_db, caller, ids, [3 * n + 1 for n in (3, 4, 4)], rid())
    *singles, whole = await asyncio.gather(*calls, batch)
    assert failed and group.failed_groups == 1
    # alone, each in its own transaction: each of the 4 ids is new for exactly one call or event
    new = [r.event_id for r in singles if not r.duplicate]
    new += [o.recorded.event_id for o in whole.outcomes if not o.recorded.duplicate]
    assert sorted(new) == ["ev-10", "ev-13", "ev-4", "ev-7"]
    assert await admin_conn.fetchval("select count(*) from usage_events where tenant_id = $1",
                                     uuid.UUID(tenant.id)) == 4


async def test_two_transactions_storing_the_same_ids_in_other_orders_do_not_deadlock(stub, tenant, app_db,
                                                                                     admin_conn):
    """The store statement itself, two at once on the same new ids sent in different orders:
    the keys are inserted in key order, so one waits for the other instead of a cycle."""
    subs = [(await _setup(stub, tenant))[1].id for _ in range(2)]
    ids = Ids(subs, datetime.now(timezone.utc))
    limits, plans = UsageLimits(), PlanCache()
    now_us = to_us(datetime.now(timezone.utc))
    rng = random.Random(7)

    async def one(ns: list[int]):
        events = [UsageEvent(e.event_id, tenant.id, e.subscription_id, e.metric_code, e.quantity, to_us(ids.at),
                             e.properties or None) for e in map(ids.event, ns)]
        async with app_db.tenant_tx(uuid.UUID(tenant.id)) as conn:
            return await ingest(conn, events, now_us=now_us, limits=limits, plans=plans)

    for round_ in range(2):
        base = 3000 * round_
        a, b = list(range(base, base + 2000)), list(range(base + 500, base + 2500))
        rng.shuffle(a)
        rng.shuffle(b)
        ra, rb = await asyncio.gather(one(a), one(b))  # raises DeadlockDetectedError if they cycled
        assert (ra.inserted + rb.inserted, ra.duplicates + rb.duplicates) == (2500, 1500)
    assert await admin_conn.fetchval("select count(*) from usage_event_ids where tenant_id = $1",
                                     uuid.UUID(tenant.id)) == 5000
