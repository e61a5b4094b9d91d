"""RecordUsage group commit and RecordUsageBatch: concurrent calls share a transaction, and
each still gets exactly its own outcome (duplicates, refusals, replays, conflicts)."""
from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta, timezone

import asyncpg
import grpc
import pytest

from billing.services.context import Caller
from billing.services.errors import FailedPrecondition, IdempotencyConflict, NotFound, ValidationError
from billing.services.plans import PlanCache
from billing.services.usage import Usage, UsageLimits
from billing.services.usage_record import GroupCommit
from billing.store import idempotency as keys_store
from billing.store.db import Database
from billing.v1 import billing_pb2 as pb
from tests.integration.test_subscriptions_api import rid, ts
from tests.integration.test_usage_ingest import _setup


@pytest.fixture
async def app_db(migrated):
    db = await Database.connect(migrated.database_url, min_size=1, max_size=8)
    yield db
    await db.close()


def _usage(window_s: float = 0.2) -> tuple[Usage, GroupCommit]:
    usage = Usage(UsageLimits(), PlanCache())
    usage.group = GroupCommit(usage, window_s, 1000)
    return usage, usage.group


async def _call(usage, db, caller, sub, *, request_id=None, event_id="", quantity="1", metric="calls", at=None):
    try:
        return await usage.record(db, caller, request_id=request_id or rid(), event_id=event_id,
                                  subscription_id=sub, metric_code=metric, quantity=quantity,
                                  occurred_at=at or datetime.now(timezone.utc), properties={})
    except Exception as exc:  # the outcome under test
        return exc


async def _calls_total(admin_conn, tenant) -> tuple[int, int]:
    row = await admin_conn.fetchrow("select coalesce(sum(quantity_sum), 0) as q, coalesce(sum(event_count), 0) as n "
                                    "from usage_totals where tenant_id = $1 and metric_code = 'calls'",
                                    uuid.UUID(tenant.id))
    return int(row["q"]), int(row["n"])


async def test_one_group_answers_every_call_with_its_own_outcome(stub, tenant, app_db, admin_conn):
    _, sub = await _setup(stub, tenant)
    caller = Caller(uuid.UUID(tenant.id), "test")
    usage, group = _usage()
    replayed_id, at = rid(), datetime.now(timezone.utc)
    first = await _call(usage, app_db, caller, sub.id, request_id=replayed_id, event_id="r-1", quantity="7", at=at)
    assert first.duplicate is False
    groups_before = group.groups
    same_request, refused_request = rid(), rid()
    before_start = sub.start_at.ToDatetime(timezone.utc) - timedelta(days=1)
    plan = [
        ("new", dict(event_id="a", quantity="1")),
        ("new", dict(event_id="b", quantity="2")),
        ("same-event", dict(event_id="c", quantity="3")),
        ("same-event", dict(event_id="c", quantity="3")),
        ("dup-of-stored", dict(event_id="r-1", quantity="7")),
        ("replay", dict(request_id=replayed_id, event_id="r-1", quantity="7", at=at)),
        ("conflict", dict(request_id=replayed_id, event_id="r-1", quantity="8", at=at)),
        ("negative", dict(request_id=refused_request, event_id="n", quantity="-1")),
        ("metric", dict(event_id="m", metric="nope")),
        ("no-sub", dict(event_id="s", quantity="1", sub=str(uuid.uuid4()))),
        ("early", dict(event_id="early", at=before_start)),
        ("same-request", dict(request_id=same_request, event_id="d", quantity="4", at=at)),
        ("same-request", dict(request_id=same_request, event_id="d", quantity="4", at=at)),
    ]
    results = await asyncio.gather(*(
        _call(usage, app_db, caller, kw.pop("sub", sub.id), **kw) for _, kw in [(k, dict(v)) for k, v in plan]))
    assert group.groups - groups_before >= 1
    got = {}
    for (kind, _), r in zip(plan, results):
        got.setdefault(kind, []).append(r)
    assert [r.duplicate for r in got["new"]] == [False, False]
    assert sorted(r.duplicate for r in got["same-event"]) == [False, True]
    assert got["dup-of-stored"][0].duplicate is True
    assert got["replay"][0] == first
    assert isinstance(got["conflict"][0], IdempotencyConflict)
    assert isinstance(got["negative"][0], ValidationError) and got["negative"][0].field == "quantity"
    assert isinstance(got["metric"][0], ValidationError) and got["metric"][0].field == "metric_code"
    assert isinstance(got["no-sub"][0], NotFound)
    assert isinstance(got["early"][0], FailedPrecondition) and got["early"][0].reason == "BEFORE_SUBSCRIPTION_START"
    a, b = got["same-request"]
    assert a == b and a.duplicate is False  # the second is the first's replay
    # stored: r-1 (7) + a (1) + b (2) + c once (3) + d once (4)
    assert await _calls_total(admin_conn, tenant) == (17, 5)
    # a refused call leaves no key: the same request_id goes through once corrected
    retry = await _call(usage, app_db, caller, sub.id, request_id=refused_request, event_id="n", quantity="1")
    assert retry.duplicate is False


async def test_a_failing_group_falls_back_to_one_transaction_per_call(stub, tenant, app_db, admin_conn,
                                                                      monkeypatch):
    _, sub = await _setup(stub, tenant)
    caller = Caller(uuid.UUID(tenant.id), "test")
    usage, group = _usage()
    real = keys_store.set_responses
    failed = []

    async def fail_once(conn, *args):
        if not failed:
            failed.append(True)
            raise asyncpg.exceptions.SerializationError("injected: the group's transaction fails")
        return await real(conn, *args)

    monkeypatch.setattr(keys_store, "set_responses", fail_once)
    results = await asyncio.gather(*(_call(usage, app_db, caller, sub.id, event_id=f"f-{i}", quantity="1")
                                     for i in range(10)),
                                   _call(usage, app_db, caller, sub.id, event_id="bad", quantity="x"))
    assert failed and group.groups == 0  # the group rolled back; each call then ran alone
    assert [r.duplicate for r in results[:10]] == [False] * 10
    assert isinstance(results[10], ValidationError)
    assert await _calls_total(admin_conn, tenant) == (10, 10)


def _ev(sub, event_id, quantity="1", at=None, metric="calls"):
    e = pb.UsageEventInput(event_id=event_id, subscription_id=sub, metric_code=metric, quantity=quantity)
    if at is not False:
        e.occurred_at.CopyFrom(ts(at or datetime.now(timezone.utc)))
    return e


async def test_record_usage_batch_one_outcome_per_event(stub, tenant, admin_conn):
    _, sub = await _setup(stub, tenant)
    events = [_ev(sub.id, "x-1", "5"), _ev(sub.id, "x-2", "-1"), _ev(sub.id, "x-1", "5"),
              _ev(str(uuid.uuid4()), "x-3"), _ev(sub.id, "x-4", at=False), _ev(sub.id, "", "1"),
              _ev(sub.id, "x-5", "2", metric="nope"), _ev(sub.id, "x-6", "3")]
    req = pb.RecordUsageBatchRequest(request_id=rid(), events=events)
    resp = await stub.RecordUsageBatch(req, metadata=tenant.md)
    assert [o.index for o in resp.outcomes] == list(range(len(events)))
    kinds = [o.WhichOneof("result") for o in resp.outcomes]
    assert kinds == ["recorded", "error", "recorded", "error", "error", "error", "error", "recorded"]
    assert resp.outcomes[0].recorded.duplicate is False and resp.outcomes[2].recorded.duplicate is True
    errors = {o.index: o.error for o in resp.outcomes if o.WhichOneof("result") == "error"}
    assert (errors[1].code, errors[1].reason, errors[1].field) == (3, "NEGATIVE_QUANTITY", "events[1].quantity")
    assert (errors[3].code, errors[3].reason, errors[3].field) == (5, "UNKNOWN_SUBSCRIPTION",
                                                                   "events[3].subscription_id")
    assert errors[4].field == "events[4].occurred_at" and errors[5].field == "events[5].event_id"
    assert errors[6].field == "events[6].metric_code"
    assert (resp.recorded, resp.duplicates, resp.rejected) == (2, 1, 5)
    assert await _calls_total(admin_conn, tenant) == (8, 2)
    # a replay answers the first response exactly and stores nothing more
    assert await stub.RecordUsageBatch(req, metadata=tenant.md) == resp
    assert await _calls_total(admin_conn, tenant) == (8, 2)


@pytest.mark.parametrize("count", [0, 1001])
async def test_record_usage_batch_size_is_bounded(stub, tenant, count):
    _, sub = await _setup(stub, tenant)
    req = pb.RecordUsageBatchRequest(request_id=rid(), events=[_ev(sub.id, f"e-{i}") for i in range(count)])
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.RecordUsageBatch(req, metadata=tenant.md)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("events")


async def test_record_usage_batch_names_a_bad_timestamp_with_its_index(stub, tenant):
    _, sub = await _setup(stub, tenant)
    bad = _ev(sub.id, "t-1")
    bad.occurred_at.seconds = -10**12
    req = pb.RecordUsageBatchRequest(request_id=rid(), events=[_ev(sub.id, "t-0"), bad])
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.RecordUsageBatch(req, metadata=tenant.md)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("events[1].occurred_at")
