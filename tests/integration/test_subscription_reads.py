"""GetSubscription, ListSubscriptions and GetUsage in one statement (migration 042,
store/subscription_reads.py): the same answers as the transaction path, not found and another
tenant's rows as before (row-level security in the caller's role), a revoked key refused by
the statement itself, and the cases GetUsage leaves to the transaction (a cold plan cache, a
unique count, a series)."""
from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import asyncpg
import grpc
import pytest

from billing.services import subscriptions
from billing.services.context import Caller
from billing.services.errors import NotFound
from billing.services.paging import PageTokens
from billing.services.plans import PlanCache
from billing.services.tenants import hash_key, revoke_key
from billing.services.uow import entry_keys
from billing.services.usage import Usage
from billing.store import subscriptions as store
from billing.v1 import billing_pb2 as pb
from tests.integration.test_plans_api import plan_request
from tests.integration.test_subscriptions_api import make_plan, make_sub, rid, ts
from tests.integration.test_usage_api import record
from tests.integration.test_usage_ingest import _setup

CALLS = pb.UsageCharge(metric_code="calls", aggregation=pb.AGGREGATION_SUM, pricing_model=pb.PRICING_MODEL_PER_UNIT,
                       unit_price="0.01")


class TxOnly:
    """The same database without `tenant_statement`: the services take the transaction path."""

    def __init__(self, db):
        self.tenant_tx = db.tenant_tx


def _caller(tenant) -> Caller:
    return Caller(uuid.UUID(tenant.id), f"api:{tenant.api_key_id}", api_key_hash=hash_key(tenant.api_key))


async def test_get_subscription_answers_as_the_transaction_does(service, stub, tenant, admin_conn):
    plan = await make_plan(stub, tenant)
    other = await make_plan(stub, tenant, base_fee="20.00")
    plain = await make_sub(stub, tenant, plan, metadata={"k": "v"})
    pending = await make_sub(stub, tenant, plan)
    await stub.ChangePlan(pb.ChangePlanRequest(request_id=rid(), id=pending.id, new_plan_id=other.id,
                                               timing=pb.CHANGE_TIMING_AT_PERIOD_END), metadata=tenant.md)
    clock = (await stub.CreateTestClock(pb.CreateTestClockRequest(
        request_id=rid(), name="c", frozen_time=ts(datetime.now(timezone.utc))),
                                        metadata=tenant.md)).test_clock
    clocked = await make_sub(stub, tenant, plan, test_clock_id=clock.id)
    db, caller = service.db, _caller(tenant)
    with entry_keys((caller.api_key_hash,)):
        for sub in (plain, pending, clocked):
            one = await subscriptions.get_subscription(db, caller, sub.id, False)
            assert one == await subscriptions.get_subscription(TxOnly(db), caller, sub.id, False)
            with_history = await subscriptions.get_subscription(db, caller, sub.id, True)  # the transaction
            assert with_history.history and replace(with_history, history=()) == one
        assert (await subscriptions.get_subscription(db, caller, pending.id, False)).pending_plan_code == other.code
        assert (await subscriptions.get_subscription(db, caller, clocked.id, False)).test_clock_id == uuid.UUID(clock.id)
        with pytest.raises(NotFound):
            await subscriptions.get_subscription(db, caller, str(uuid.uuid4()), False)
    got = (await stub.GetSubscription(pb.GetSubscriptionRequest(id=pending.id), metadata=tenant.md)).subscription
    assert got.plan_code == plan.code and got.pending_change.plan_code == other.code


async def test_list_subscriptions_pages_as_the_transaction_does(service, stub, tenant):
    plan = await make_plan(stub, tenant)
    other = await make_plan(stub, tenant)
    for i in range(5):
        await make_sub(stub, tenant, plan if i % 2 else other, activate=i != 3)
    db, caller, tokens = service.db, _caller(tenant), PageTokens()

    async def pages(**filters) -> list:
        found, token = [], ""
        while True:
            page = await subscriptions.list_subscriptions(db, caller, tokens=tokens, page_size=2, page_token=token,
                                                          **filters)
            found.extend(page.subscriptions)
            assert len(page.subscriptions) <= 2
            if not page.next_page_token:
                return found
            token = page.next_page_token

    async def reference(status=None, customer_id=None, plan_id=None) -> list:  # the transaction path
        async with db.tenant_tx(caller.tenant_id) as conn:
            subs = await store.list_page(conn, caller.tenant_id, status=status, customer_id=customer_id,
                                         plan_id=uuid.UUID(plan_id) if plan_id else None, after=None, limit=100)
            return await subscriptions._views(conn, caller, subs)

    with entry_keys((caller.api_key_hash,)):
        for filters in ({}, {"plan_id": plan.id}, {"status": "pending"}, {"customer_id": "cust-1"}):
            expected = await reference(**filters)
            assert await pages(**{"status": "", "customer_id": "", "plan_id": "", **filters}) == expected, filters
            assert expected
        assert len(await reference()) == 5 and len(await reference(plan_id=plan.id)) == 2


async def test_another_tenants_subscription_is_not_found(service, stub, tenant, new_tenant):
    plan = await make_plan(stub, tenant)
    sub = await make_sub(stub, tenant, plan)
    other = await new_tenant()
    for call in (stub.GetSubscription(pb.GetSubscriptionRequest(id=sub.id), metadata=other.md),
                 stub.GetUsage(pb.GetUsageRequest(subscription_id=sub.id), metadata=other.md),
                 stub.GetSubscription(pb.GetSubscriptionRequest(id=str(uuid.uuid4())), metadata=tenant.md),
                 stub.GetUsage(pb.GetUsageRequest(subscription_id=str(uuid.uuid4())), metadata=tenant.md)):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    listed = await stub.ListSubscriptions(pb.ListSubscriptionsRequest(), metadata=other.md)
    assert list(listed.subscriptions) == []
    key = [hash_key(other.api_key)]
    reads = ("select * from subscription_read($1, $2, null, $3, null, null, null, null, null, 10)",
             "select * from subscription_read($1, $2, null, null, null, null, null, null, null, 10)",
             "select * from usage_read($1, $2, null, $3, null)")
    async with service.db.pool.acquire() as conn:  # as billing_app, with the other tenant's key
        for sql in reads:
            args = (uuid.UUID(sub.id),) if "$3" in sql else ()
            assert await conn.fetch(sql, uuid.UUID(other.id), key, *args) == []
            # Naming the subscription's own tenant with the other tenant's key: no token, refused.
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.fetch(sql, uuid.UUID(tenant.id), key, *args)
            # No key and no token: the API role cannot enter any tenant.
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.fetch(sql, uuid.UUID(tenant.id), [], *args)


async def test_a_revoked_key_is_refused_by_the_statement(service, stub, tenant, admin_conn):
    _, sub = await _setup(stub, tenant)
    await stub.GetSubscription(pb.GetSubscriptionRequest(id=sub.id), metadata=tenant.md)  # the key is cached
    caller = _caller(tenant)
    assert await revoke_key(admin_conn, uuid.UUID(tenant.api_key_id))
    usage = Usage(service.components.usage.limits, service.components.usage.plans)
    with entry_keys((caller.api_key_hash,)):
        for read in (subscriptions.get_subscription(service.db, caller, sub.id, False),
                     subscriptions.list_subscriptions(service.db, caller, tokens=PageTokens(), page_size=0,
                                                      page_token="", status="", customer_id="", plan_id=""),
                     usage.get(service.db, caller, subscription_id=sub.id, period_start=None, series="")):
            with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError):
                await read
    for call in (stub.GetSubscription(pb.GetSubscriptionRequest(id=sub.id), metadata=tenant.md),
                 stub.GetUsage(pb.GetUsageRequest(subscription_id=sub.id), metadata=tenant.md)):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def _late(admin_conn, tenant, sub, quantity: str, billed: bool) -> None:
    """A late event of the current period, as ingestion stores one after its period was billed."""
    event_id = rid()
    start = sub.current_period_start.ToDatetime(timezone.utc)
    await admin_conn.execute(
        "insert into usage_events (tenant_id, event_id, subscription_id, metric_code, quantity, occurred_at,"
        " period_start, period_end, late) values ($1, $2, $3, 'calls', $4::numeric, $5, $5, $6, true)",
        uuid.UUID(tenant.id), event_id, uuid.UUID(sub.id), quantity, start,
        sub.current_period_end.ToDatetime(timezone.utc))
    if billed:
        await admin_conn.execute(
            "insert into late_usage_billed (tenant_id, event_id, subscription_id, invoice_request_id, run_id)"
            " values ($1, $2, $3, $4, $5)", uuid.UUID(tenant.id), event_id, uuid.UUID(sub.id), uuid.uuid4(),
            uuid.uuid4())


async def test_get_usage_answers_as_the_transaction_does(service, stub, tenant, admin_conn):
    plan = (await stub.CreatePlan(plan_request(usage_charges=[CALLS], trial_days=0), metadata=tenant.md)).plan
    sub = await make_sub(stub, tenant, plan)
    idle = await make_sub(stub, tenant, plan)
    start = sub.start_at.ToDatetime(timezone.utc)
    for q in ("5", "7"):
        await record(stub, tenant, sub, q, at=start + timedelta(seconds=1))
    await _late(admin_conn, tenant, sub, "3", billed=True)
    await _late(admin_conn, tenant, sub, "2", billed=False)
    db, caller = service.db, _caller(tenant)
    cache = PlanCache()
    usage = Usage(service.components.usage.limits, cache)
    with entry_keys((caller.api_key_hash,)):
        # A cold cache: the one statement cannot price, so the transaction path answers (and fills it).
        assert await usage._get_in_one(db, caller, uuid.UUID(sub.id), sub.id, None) is None
        for s, at in ((sub, None), (idle, None), (sub, sub.current_period_end.ToDatetime(timezone.utc))):
            tx = await usage.get(TxOnly(db), caller, subscription_id=s.id, period_start=at, series="")
            one = await usage._get_in_one(db, caller, uuid.UUID(s.id), s.id, at)
            assert one == tx
        got = await usage.get(db, caller, subscription_id=sub.id, period_start=None, series="")
    calls = got.metrics[0]
    # 5 + 7 on time and 3 + 2 late (ingest keeps the totals; these two were inserted by hand)
    assert (calls.quantity, calls.amount) == (Decimal(12), Decimal("0.12"))
    assert (calls.late.event_count, calls.late.quantity_sum, calls.late.billed_event_count) == (2, 5, 1)
    answer = await stub.GetUsage(pb.GetUsageRequest(subscription_id=sub.id), metadata=tenant.md)
    assert answer.metrics[0].quantity == "12" and answer.total_amount == got.total.to_eng_string()


async def test_get_usage_leaves_counted_events_and_series_to_the_transaction(service, stub, tenant):
    _, sub = await _setup(stub, tenant)  # "seats": a unique count, read from the events
    start = sub.start_at.ToDatetime(timezone.utc)
    for user in ("ann", "bob", "ann"):
        await record(stub, tenant, sub, "1", metric="seats", props={"user": user}, at=start + timedelta(seconds=2))
    await stub.GetUsage(pb.GetUsageRequest(subscription_id=sub.id), metadata=tenant.md)  # the plan is cached
    caller, usage = _caller(tenant), service.components.usage
    with entry_keys((caller.api_key_hash,)):
        assert await usage._get_in_one(service.db, caller, uuid.UUID(sub.id), sub.id, None) is None
    answer = await stub.GetUsage(pb.GetUsageRequest(subscription_id=sub.id, series=pb.SERIES_GRANULARITY_DAY),
                                 metadata=tenant.md)
    seats = {m.metric_code: m for m in answer.metrics}["seats"]
    assert seats.quantity == "2" and sum(int(p.quantity) for p in seats.series) == 3


async def test_get_usage_errors_are_unchanged(stub, tenant):
    plan = (await stub.CreatePlan(plan_request(usage_charges=[CALLS], trial_days=0), metadata=tenant.md)).plan
    pending = await make_sub(stub, tenant, plan, activate=False)
    active = await make_sub(stub, tenant, plan)
    await stub.GetUsage(pb.GetUsageRequest(subscription_id=active.id), metadata=tenant.md)  # the plan is cached
    odd = active.current_period_start.ToDatetime(timezone.utc) + timedelta(hours=1)
    for req, code, reason in (
            (pb.GetUsageRequest(subscription_id=pending.id), grpc.StatusCode.FAILED_PRECONDITION,
             "SUBSCRIPTION_NOT_STARTED"),
            (pb.GetUsageRequest(subscription_id=active.id, period_start=ts(odd)), grpc.StatusCode.INVALID_ARGUMENT,
             "INVALID_FIELD"),
            (pb.GetUsageRequest(subscription_id="garbage"), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD")):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetUsage(req, metadata=tenant.md)
        assert err.value.code() == code, req
        if reason:
            assert reason in str(err.value.trailing_metadata())

