"""CheckEntitlement in one statement (migration 040, `entitlement_check`): the same answers as
the transaction path (ListEntitlements' `_judge`) for every kind of feature and every
aggregation, counted from the stored totals or from the events, with the plan cached or not,
each in ONE statement; concurrent checks in one statement (`entitlement_groups`) answering
each as alone; a revoked key refused by the statement itself, and another tenant's
subscription invisible (docs/entitlements.md#reading-the-usage)."""
from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta, timezone

import asyncpg
import grpc
import pytest

from billing.domain.pricing import price_usage
from billing.services import entitlement_groups, entitlements, period_reads
from billing.services.context import Caller
from billing.services.errors import NotFound
from billing.services.plans import PlanCache
from billing.services.tenants import hash_key, revoke_key
from billing.services.uow import entry_keys
from billing.store import entitlement_reads
from billing.v1 import billing_pb2 as pb
from tests.integration.test_entitlements_api import CALLS, _check, _plan, _sub, features
from tests.integration.test_plans_api import plan_request
from tests.integration.test_subscriptions_api import rid, ts

SEATS = pb.UsageCharge(metric_code="seats", aggregation=pb.AGGREGATION_UNIQUE_COUNT,
                       pricing_model=pb.PRICING_MODEL_PER_UNIT, unit_price="1", unique_property="user_id")
GPUS = pb.UsageCharge(metric_code="gpus", aggregation=pb.AGGREGATION_WEIGHTED_SUM,
                      pricing_model=pb.PRICING_MODEL_PER_UNIT, unit_price="24")
PAYMENTS = pb.UsageCharge(metric_code="payments", aggregation=pb.AGGREGATION_SUM,
                          pricing_model=pb.PRICING_MODEL_PERCENTAGE, percentage_rate="2.9",
                          fixed_fee_per_event="0.30", min_fee_per_event="0.50", max_fee_per_event="5.00")
LLM = pb.UsageCharge(metric_code="llm", aggregation=pb.AGGREGATION_COUNT, pricing_model=pb.PRICING_MODEL_DYNAMIC,
                     amount_property="cost")
METERED = {"seats": ("seats", "3"), "gpus": ("gpus", "10"), "payments": ("payments", "1000"),
           "llm": ("llm", "2")}
CODES = ("sso", "tier", "calls", "calls-soft", *METERED, "not-listed")


def _caller(tenant) -> Caller:
    return Caller(uuid.UUID(tenant.id), f"api:{tenant.api_key_id}", api_key_hash=hash_key(tenant.api_key))


async def _use(stub, tenant, sub: pb.Subscription, metric: str, quantity: str, minutes: int = 1,
               **props: str) -> None:
    await stub.RecordUsage(pb.RecordUsageRequest(
        request_id=rid(), event_id=rid(), subscription_id=sub.id, metric_code=metric, quantity=quantity,
        occurred_at=ts(datetime.now(timezone.utc) - timedelta(minutes=minutes)), properties=props),
        metadata=tenant.md)


def _feats(seats_property: str = "user_id") -> list[pb.Feature]:
    return features("gold") + [pb.Feature(code=code, kind=pb.FEATURE_KIND_METERED, metric_code=metric, limit=limit)
                               for code, (metric, limit) in METERED.items()]


async def _setup(stub, tenant, name: str = "one-statement") -> pb.Subscription:
    plan = (await stub.CreatePlan(plan_request(trial_days=0, base_fee="1.00",
                                               usage_charges=[CALLS, SEATS, GPUS, PAYMENTS, LLM],
                                               features=_feats()), metadata=tenant.md)).plan
    sub = await _sub(stub, tenant, plan, name)
    await _use(stub, tenant, sub, "api_calls", "6")
    await _use(stub, tenant, sub, "seats", "1", user_id="a")
    await _use(stub, tenant, sub, "seats", "1", user_id="b")
    await _use(stub, tenant, sub, "seats", "1", user_id="a")
    await _use(stub, tenant, sub, "gpus", "2", minutes=30)
    await _use(stub, tenant, sub, "gpus", "3", minutes=10)
    await _use(stub, tenant, sub, "payments", "120")
    await _use(stub, tenant, sub, "llm", "1", cost="0.25")
    await _use(stub, tenant, sub, "llm", "1", cost="0.75")
    return sub


async def _by_transaction(db, caller: Caller, sub: pb.Subscription, code: str) -> entitlements.EntitlementView:
    """The answer of the transaction path ListEntitlements takes, for one feature."""
    async with db.tenant_tx(caller.tenant_id) as conn:
        s, spec = await entitlements._subscription(conn, caller, PlanCache(), uuid.UUID(sub.id), sub.id)
        feature = next((f for f in spec.features if f.code == code), None)
        return (await entitlements._judge(conn, caller, s, spec, [code], [feature]))[0]


@pytest.fixture
def statements(monkeypatch):
    """Every `entitlement_check` statement a check makes (the real one, counted); no
    transaction allowed."""
    calls: list[tuple] = []
    real = entitlement_reads.read

    async def counted(*args, **kwargs):
        calls.append(args[4:])
        return await real(*args, **kwargs)
    monkeypatch.setattr(entitlement_reads, "read", counted)
    return calls


async def test_one_statement_answers_as_the_transaction_does_warm_or_cold(service, stub, tenant, statements):
    sub = await _setup(stub, tenant)
    db, caller = service.db, _caller(tenant)
    expected = {code: await _by_transaction(db, caller, sub, code) for code in CODES}
    assert expected["seats"].decision.used == 2 and expected["llm"].decision.used == 2
    assert expected["payments"].decision.used == 120 and expected["calls"].decision.used == 6
    warm = PlanCache()
    with entry_keys((caller.api_key_hash,)):
        for code in CODES:
            cold = PlanCache()  # the plan not cached: its spec comes with the statement
            statements.clear()
            assert await entitlements.check(db, caller, cold, subscription_id=sub.id, feature_code=code) \
                == expected[code], code
            # Counted from the events by a plan no cached plan resembled: asked again, once.
            assert len(statements) == (2 if code in ("seats", "gpus") else 1), code
            await entitlements.check(db, caller, warm, subscription_id=sub.id, feature_code=code)
        for code in CODES:  # every plan cached: one statement each, whatever the metric
            statements.clear()
            assert await entitlements.check(db, caller, warm, subscription_id=sub.id, feature_code=code) \
                == expected[code], code
            assert len(statements) == 1, code
    assert expected["not-listed"].feature is None and not expected["not-listed"].decision.allowed


async def test_a_weighted_sum_is_used_as_the_period_close_prices_it(service, stub, tenant, statements):
    sub = await _setup(stub, tenant, "weighted")
    db, caller = service.db, _caller(tenant)
    async with db.tenant_tx(caller.tenant_id) as conn:
        s, spec = await entitlements._subscription(conn, caller, PlanCache(), uuid.UUID(sub.id), sub.id)
        usage, _ = await period_reads.usage_of_period(conn, caller.tenant_id, s.id, spec, s.current_period_start)
    priced = {p.charge.metric_code: p.quantity
              for p in price_usage(spec, usage, s.current_period_start, s.current_period_end)}
    assert 0 < priced["gpus"] < 5  # two changes within the last half hour of a month
    got = await _check(stub, tenant, sub, "gpus")
    assert got.allowed and got.used == str(priced["gpus"])


async def test_two_plans_counting_one_feature_by_different_properties(service, stub, tenant, statements):
    by_team = pb.UsageCharge(metric_code="seats", aggregation=pb.AGGREGATION_UNIQUE_COUNT,
                             pricing_model=pb.PRICING_MODEL_PER_UNIT, unit_price="1", unique_property="team")
    seats = [pb.Feature(code="seats", kind=pb.FEATURE_KIND_METERED, metric_code="seats", limit="3")]
    subs = []
    for charge in (SEATS, by_team):
        plan = (await stub.CreatePlan(plan_request(trial_days=0, base_fee="1.00", usage_charges=[charge],
                                                   features=seats), metadata=tenant.md)).plan
        sub = await _sub(stub, tenant, plan, f"by-{charge.unique_property}")
        for user, team in (("a", "x"), ("b", "x"), ("c", "y")):
            await _use(stub, tenant, sub, "seats", "1", user_id=user, team=team)
        subs.append(sub)
    db, caller = service.db, _caller(tenant)
    cache = PlanCache()
    with entry_keys((caller.api_key_hash,)):
        for sub in subs:  # both plans into the cache
            await entitlements.check(db, caller, cache, subscription_id=sub.id, feature_code="seats")
        for sub, used in zip(subs, (3, 2)):
            statements.clear()
            got = await entitlements.check(db, caller, cache, subscription_id=sub.id, feature_code="seats")
            assert got.decision.used == used and len(statements) == 1
            assert statements[0][3:5] == (["seats", "seats"], ["user_id", "team"])  # both asked, one counted


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


async def test_concurrent_checks_share_a_statement_and_answer_as_alone(service, stub, tenant, statements):
    subs = [await _setup(stub, tenant, f"group-{i}") for i in range(3)]
    db, caller = service.db, _caller(tenant)
    missing = str(uuid.uuid4())
    asked = [(s.id, code) for s in subs for code in CODES] * 3 + [(missing, "calls"), (missing, "sso")]
    expected = {(s.id, code): await _by_transaction(db, caller, s, code) for s in subs for code in CODES}
    cache, groups = PlanCache(), entitlements.CheckGroups()
    with entry_keys((caller.api_key_hash,)):
        await entitlements.check(db, caller, cache, subscription_id=subs[0].id, feature_code="seats")
        statements.clear()
        got = await asyncio.gather(*(entitlements.check(db, caller, cache, subscription_id=sub, feature_code=code,
                                                        groups=groups) for sub, code in asked),
                                   return_exceptions=True)
    for (sub, code), answer in zip(asked, got):
        if sub == missing:
            assert isinstance(answer, NotFound)
        else:
            assert answer == expected[(sub, code)], (sub, code)
    # Checks made in the same turn of the loop go together: the statement starts at the next.
    assert groups.checks == len(asked) and len(statements) == groups.statements == 1
    assert len(set(statements[0][0])) == len(subs) + 1  # every subscription asked, the missing one too


async def test_a_statement_takes_at_most_max_group_checks(service, stub, tenant, statements, monkeypatch):
    monkeypatch.setattr(entitlement_groups, "MAX_GROUP", 4)
    plan = await _plan(stub, tenant, "1.00", features("gold"))
    subs = [await _sub(stub, tenant, plan, f"capped-{i}") for i in range(10)]
    caller, cache, groups = _caller(tenant), PlanCache(), entitlements.CheckGroups()
    with entry_keys((caller.api_key_hash,)):
        got = await asyncio.gather(*(entitlements.check(service.db, caller, cache, subscription_id=s.id,
                                                        feature_code="tier", groups=groups) for s in subs))
    assert [g.decision.value for g in got] == ["gold"] * 10
    assert [len(s[0]) for s in statements] == [4, 4, 2]  # by four, the rest after


async def test_a_check_given_up_before_its_statement_starts_is_left_out(service, stub, tenant, statements):
    plan = await _plan(stub, tenant, "1.00", features("gold"))
    subs = [await _sub(stub, tenant, plan, f"gave-up-{i}") for i in range(3)]
    caller, cache, groups = _caller(tenant), PlanCache(), entitlements.CheckGroups()
    with entry_keys((caller.api_key_hash,)):
        tasks = [asyncio.create_task(entitlements.check(service.db, caller, cache, subscription_id=s.id,
                                                        feature_code="tier", groups=groups)) for s in subs]
        await asyncio.sleep(0)  # each check waits for the statement of the next turn
        tasks[1].cancel()
        got = await asyncio.gather(*tasks, return_exceptions=True)
        alone = await entitlements.check(service.db, caller, cache, subscription_id=subs[1].id,
                                         feature_code="tier", groups=groups)
    assert isinstance(got[1], asyncio.CancelledError)
    assert [g.decision.value for g in (got[0], got[2], alone)] == ["gold"] * 3
    assert [sorted(map(str, s[0])) for s in statements] == [sorted([subs[0].id, subs[2].id]), [subs[1].id]]


async def test_a_revoked_key_fails_its_whole_group(service, stub, tenant, admin_conn):
    plan = await _plan(stub, tenant, "1.00", features("gold"))
    subs = [await _sub(stub, tenant, plan, f"revoked-{i}") for i in range(3)]
    caller, cache, groups = _caller(tenant), PlanCache(), entitlements.CheckGroups()
    assert await revoke_key(admin_conn, uuid.UUID(tenant.api_key_id))
    with entry_keys((caller.api_key_hash,)):
        got = await asyncio.gather(*(entitlements.check(service.db, caller, cache, subscription_id=s.id,
                                                        feature_code=code, groups=groups)
                                     for s in subs for code in ("sso", "calls")), return_exceptions=True)
    assert all(isinstance(e, asyncpg.InvalidAuthorizationSpecificationError) for e in got)


_CHECK = "select * from entitlement_check($1, $2, null, $3, true, '{}', '{}', '{}', '{}')"


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
        assert await conn.fetch(_CHECK, uuid.UUID(other.id), key, [uuid.UUID(sub.id)]) == []
        # Naming the subscription's own tenant with the other tenant's key: no token, refused.
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.fetch(_CHECK, uuid.UUID(tenant.id), key, [uuid.UUID(sub.id)])
        # No key and no token: the API role cannot enter any tenant.
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.fetch(_CHECK, uuid.UUID(tenant.id), [], [uuid.UUID(sub.id)])
