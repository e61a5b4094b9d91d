"""CheckEntitlement in one statement (migration 034, `entitlement_read`): the same answers as
the transaction path for every kind of feature, a revoked key refused by the statement
itself, and another tenant's subscription invisible (docs/entitlements.md#measured)."""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import asyncpg
import grpc
import pytest

from billing.services import entitlements
from billing.services.context import Caller
from billing.services.plans import PlanCache
from billing.services.tenants import hash_key, revoke_key
from billing.services.uow import entry_keys
from billing.v1 import billing_pb2 as pb
from tests.integration.test_entitlements_api import CALLS, _check, _plan, _sub, features
from tests.integration.test_plans_api import plan_request
from tests.integration.test_subscriptions_api import rid, ts

SEATS = pb.UsageCharge(metric_code="seats", aggregation=pb.AGGREGATION_UNIQUE_COUNT,
                       pricing_model=pb.PRICING_MODEL_PER_UNIT, unit_price="1", unique_property="user_id")
CODES = ("sso", "tier", "calls", "calls-soft", "seats", "not-listed")


def _caller(tenant) -> Caller:
    return Caller(uuid.UUID(tenant.id), f"api:{tenant.api_key_id}", api_key_hash=hash_key(tenant.api_key))


async def _use(stub, tenant, sub: pb.Subscription, metric: str, quantity: str, **props: str) -> None:
    await stub.RecordUsage(pb.RecordUsageRequest(
        request_id=rid(), event_id=rid(), subscription_id=sub.id, metric_code=metric, quantity=quantity,
        occurred_at=ts(datetime.now(timezone.utc) - timedelta(minutes=1)), properties=props), metadata=tenant.md)


async def _setup(stub, tenant) -> pb.Subscription:
    feats = features("gold") + [pb.Feature(code="seats", kind=pb.FEATURE_KIND_METERED, metric_code="seats",
                                           limit="3")]
    plan = (await stub.CreatePlan(plan_request(trial_days=0, base_fee="1.00", usage_charges=[CALLS, SEATS],
                                               features=feats), metadata=tenant.md)).plan
    return await _sub(stub, tenant, plan, "one-statement")


async def test_the_one_statement_answers_as_the_transaction_does(service, stub, tenant):
    sub = await _setup(stub, tenant)
    await _use(stub, tenant, sub, "api_calls", "6")
    await _use(stub, tenant, sub, "seats", "1", user_id="a")
    await _use(stub, tenant, sub, "seats", "1", user_id="b")
    db, caller = service.db, _caller(tenant)
    warm = PlanCache()
    with entry_keys((caller.api_key_hash,)):
        for code in CODES:
            # A cold cache: the one statement cannot price, so the transaction path answers.
            cold = PlanCache()
            assert await entitlements._check_in_one_statement(db, caller, cold, uuid.UUID(sub.id), sub.id,
                                                              code) is None
            before = await entitlements.check(db, caller, cold, subscription_id=sub.id, feature_code=code)
            await entitlements.check(db, caller, warm, subscription_id=sub.id, feature_code=code)
            one = await entitlements._check_in_one_statement(db, caller, warm, uuid.UUID(sub.id), sub.id, code)
            if code == "seats":  # a unique count is read from the events: the transaction path
                assert one is None
                assert before.decision.used == 2
            else:
                assert one == before, code
    assert before.feature is None and not before.decision.allowed  # "not-listed"
    calls = await _check(stub, tenant, sub, "calls")
    assert calls.allowed and (calls.used, calls.remaining) == ("6", "4")
    seats = await _check(stub, tenant, sub, "seats")
    assert (seats.used, seats.remaining) == ("2", "1")


async def test_a_paused_subscription_is_denied_by_the_one_statement(service, stub, tenant):
    plan = await _plan(stub, tenant, "1.00", features("gold"))
    sub = await _sub(stub, tenant, plan, "paused")
    await _check(stub, tenant, sub, "calls")  # the plan is in the cache from now on
    await stub.PauseSubscription(pb.PauseSubscriptionRequest(request_id=rid(), id=sub.id), metadata=tenant.md)
    caller = _caller(tenant)
    with entry_keys((caller.api_key_hash,)):
        one = await entitlements._check_in_one_statement(service.db, caller, service.components.usage.plans,
                                                         uuid.UUID(sub.id), sub.id, "calls")
    assert one is not None and not one.decision.allowed and one.decision.used is None
    got = await _check(stub, tenant, sub, "calls")
    assert not got.allowed and got.reason == one.decision.reason


async def test_a_revoked_key_is_refused_by_the_statement(service, stub, tenant, admin_conn):
    plan = await _plan(stub, tenant, "1.00", features("gold"))
    sub = await _sub(stub, tenant, plan, "revoked")
    await _check(stub, tenant, sub, "sso")
    caller = _caller(tenant)
    cache = service.components.usage.plans
    assert await revoke_key(admin_conn, uuid.UUID(tenant.api_key_id))
    with entry_keys((caller.api_key_hash,)), pytest.raises(asyncpg.InvalidAuthorizationSpecificationError):
        await entitlements._check_in_one_statement(service.db, caller, cache, uuid.UUID(sub.id), sub.id, "sso")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _check(stub, tenant, sub, "sso")
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_another_tenants_subscription_is_not_found(service, stub, tenant, new_tenant):
    plan = await _plan(stub, tenant, "1.00", features("gold"))
    sub = await _sub(stub, tenant, plan, "theirs")
    other = await new_tenant()
    for code in ("sso", "tier", "calls"):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _check(stub, other, sub, code)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    key = [hash_key(other.api_key)]
    async with service.db.pool.acquire() as conn:  # as billing_app, with the other tenant's key
        rows = await conn.fetch("select * from entitlement_read($1, $2, null, $3, true)", uuid.UUID(other.id), key,
                                uuid.UUID(sub.id))
        assert rows == []
        # Naming the subscription's own tenant with the other tenant's key: no token, refused.
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.fetch("select * from entitlement_read($1, $2, null, $3, true)", uuid.UUID(tenant.id), key,
                             uuid.UUID(sub.id))
        # No key and no token: the API role cannot enter any tenant.
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.fetch("select * from entitlement_read($1, '{}', null, $2, true)", uuid.UUID(tenant.id),
                             uuid.UUID(sub.id))
