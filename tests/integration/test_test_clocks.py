"""Test clocks over gRPC, without the Kafka roles (an advance stays ADVANCING here until a test
executes its run itself): the API, the refusals, tenant isolation, usage on clock time, and
an advance interrupted mid-run and resumed, billing each period once."""
from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta, timezone

import grpc
import pytest

from billing.services.run_execution import execute_run
from billing.v1 import billing_pb2 as pb
from tests.integration.test_api_contract import refused
from tests.integration.test_plans_api import plan_request
from tests.integration.test_subscriptions_api import rid, ts

UTC = timezone.utc
APRIL = datetime(2026, 4, 1, tzinfo=UTC)
NOT_FOUND = grpc.StatusCode.NOT_FOUND
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION


async def make_clock(stub, tenant, at: datetime, name: str = "replay") -> pb.TestClock:
    return (await stub.CreateTestClock(pb.CreateTestClockRequest(request_id=rid(), name=name, frozen_time=ts(at)),
                                       metadata=tenant.md)).test_clock


async def monthly_plan(stub, tenant, fee: str, timing=pb.BILLING_TIMING_IN_ADVANCE, code: str | None = None,
                       usage: bool = True, trial_days: int = 0) -> pb.Plan:
    charges = [pb.UsageCharge(metric_code="api_calls", aggregation=pb.AGGREGATION_SUM,
                              pricing_model=pb.PRICING_MODEL_PER_UNIT, unit_price="0.01")] if usage else []
    req = plan_request(base_fee=fee, trial_days=trial_days, billing_timing=timing, usage_charges=charges,
                       **({"code": code} if code else {}))
    return (await stub.CreatePlan(req, metadata=tenant.md)).plan


async def clock_sub(stub, tenant, plan, clock_id: str, start: datetime | None = None, **kw) -> pb.Subscription:
    req = pb.CreateSubscriptionRequest(request_id=rid(), customer_id=kw.pop("customer_id", "cust-clock"),
                                       plan_id=plan.id, activate=True, test_clock_id=clock_id, **kw)
    if start is not None:
        req.start_at.CopyFrom(ts(start))
    return (await stub.CreateSubscription(req, metadata=tenant.md)).subscription


async def advance(stub, tenant, clock_id: str, to: datetime, request_id: str | None = None) -> pb.TestClock:
    return (await stub.AdvanceTestClock(pb.AdvanceTestClockRequest(
        request_id=request_id or rid(), id=clock_id, frozen_time=ts(to)), metadata=tenant.md)).test_clock


async def get_clock(stub, tenant, clock_id: str) -> pb.TestClock:
    return (await stub.GetTestClock(pb.GetTestClockRequest(id=clock_id), metadata=tenant.md)).test_clock


async def test_create_get_list_and_a_subscription_lives_on_clock_time(stub, tenant):
    clock = await make_clock(stub, tenant, APRIL, "april")
    assert (clock.name, clock.frozen_time.ToDatetime(UTC), clock.status) == (
        "april", APRIL, pb.TEST_CLOCK_STATUS_READY)
    assert await get_clock(stub, tenant, clock.id) == clock
    listed = (await stub.ListTestClocks(pb.ListTestClocksRequest(), metadata=tenant.md)).test_clocks
    assert [c.id for c in listed] == [clock.id]
    # A replayed CreateTestClock returns the same clock.
    req = pb.CreateTestClockRequest(request_id=rid(), name="again", frozen_time=ts(APRIL))
    first = (await stub.CreateTestClock(req, metadata=tenant.md)).test_clock
    assert (await stub.CreateTestClock(req, metadata=tenant.md)).test_clock == first

    plan = await monthly_plan(stub, tenant, "30.00")
    sub = await clock_sub(stub, tenant, plan, clock.id)
    # Created and started at the clock's time, not the wall clock's.
    assert sub.test_clock_id == clock.id
    assert sub.created_at.ToDatetime(UTC) == sub.start_at.ToDatetime(UTC) == APRIL
    assert sub.current_period_end.ToDatetime(UTC) == datetime(2026, 5, 1, tzinfo=UTC)
    got = (await stub.GetSubscription(pb.GetSubscriptionRequest(id=sub.id), metadata=tenant.md)).subscription
    assert got.test_clock_id == clock.id
    # More than a year before the clock's time is fine on a clock (real time refuses it).
    old = await clock_sub(stub, tenant, plan, clock.id, start=APRIL - timedelta(days=900))
    assert old.start_at.ToDatetime(UTC) == APRIL - timedelta(days=900)
    _, details = await refused(stub.CreateSubscription, pb.CreateSubscriptionRequest(
        request_id=rid(), customer_id="c", plan_id=plan.id, start_at=ts(APRIL - timedelta(days=900))), tenant.md)
    assert [v.field for v in details["BadRequest"].field_violations] == ["start_at"]
    # A pause happens at the clock's time.
    paused = (await stub.PauseSubscription(pb.PauseSubscriptionRequest(request_id=rid(), id=sub.id),
                                           metadata=tenant.md)).subscription
    assert paused.paused_at.ToDatetime(UTC) == APRIL


async def test_advance_backwards_unknown_clock_and_bad_fields_are_refused(stub, tenant):
    clock = await make_clock(stub, tenant, APRIL)
    for to in (APRIL - timedelta(seconds=1), APRIL):
        message, details = await refused(stub.AdvanceTestClock, pb.AdvanceTestClockRequest(
            request_id=rid(), id=clock.id, frozen_time=ts(to)), tenant.md)
        assert message.startswith("frozen_time") and "forward only" in message
        assert [v.field for v in details["BadRequest"].field_violations] == ["frozen_time"]
    assert await get_clock(stub, tenant, clock.id) == clock  # nothing changed
    _, details = await refused(stub.AdvanceTestClock, pb.AdvanceTestClockRequest(request_id=rid(), id=clock.id),
                               tenant.md)
    assert [v.field for v in details["BadRequest"].field_violations] == ["frozen_time"]
    _, details = await refused(stub.CreateTestClock, pb.CreateTestClockRequest(request_id=rid(), name=""),
                               tenant.md)
    assert sorted(v.field for v in details["BadRequest"].field_violations) == ["frozen_time", "name"]

    unknown = str(uuid.uuid4())
    for call, request in [
        (stub.GetTestClock, pb.GetTestClockRequest(id=unknown)),
        (stub.AdvanceTestClock, pb.AdvanceTestClockRequest(request_id=rid(), id=unknown,
                                                           frozen_time=ts(APRIL + timedelta(days=1)))),
        (stub.DeleteTestClock, pb.DeleteTestClockRequest(request_id=rid(), id=unknown)),
    ]:
        _, details = await refused(call, request, tenant.md, NOT_FOUND)
        assert details["ErrorInfo"].reason == "TEST_CLOCK_NOT_FOUND"
        assert (details["ResourceInfo"].resource_type, details["ResourceInfo"].resource_name) == (
            "test clock", unknown)
    plan = await monthly_plan(stub, tenant, "30.00")
    _, details = await refused(stub.CreateSubscription, pb.CreateSubscriptionRequest(
        request_id=rid(), customer_id="c", plan_id=plan.id, test_clock_id=unknown), tenant.md, NOT_FOUND)
    assert details["ErrorInfo"].reason == "TEST_CLOCK_NOT_FOUND"
    _, details = await refused(stub.CreateSubscription, pb.CreateSubscriptionRequest(
        request_id=rid(), customer_id="c", plan_id=plan.id, test_clock_id="not-a-uuid"), tenant.md)
    assert [v.field for v in details["BadRequest"].field_violations] == ["test_clock_id"]


async def test_another_tenants_clock_is_not_found_and_unchanged(stub, new_tenant):
    a, b = await new_tenant(), await new_tenant()
    clock = await make_clock(stub, a, APRIL)
    plan_b = await monthly_plan(stub, b, "30.00")
    for call, request in [
        (stub.GetTestClock, pb.GetTestClockRequest(id=clock.id)),
        (stub.AdvanceTestClock, pb.AdvanceTestClockRequest(request_id=rid(), id=clock.id,
                                                           frozen_time=ts(APRIL + timedelta(days=40)))),
        (stub.DeleteTestClock, pb.DeleteTestClockRequest(request_id=rid(), id=clock.id)),
        (stub.CreateSubscription, pb.CreateSubscriptionRequest(request_id=rid(), customer_id="c", plan_id=plan_b.id,
                                                               test_clock_id=clock.id)),
    ]:
        _, details = await refused(call, request, b.md, NOT_FOUND)
        assert details["ErrorInfo"].reason == "TEST_CLOCK_NOT_FOUND"
    assert (await stub.ListTestClocks(pb.ListTestClocksRequest(), metadata=b.md)).test_clocks == []
    assert await get_clock(stub, a, clock.id) == clock


async def test_usage_of_a_clock_subscription_is_judged_by_clock_time(stub, tenant):
    clock = await make_clock(stub, tenant, APRIL + timedelta(days=10))
    plan = await monthly_plan(stub, tenant, "30.00")
    sub = await clock_sub(stub, tenant, plan, clock.id, start=APRIL)

    def usage(at: datetime) -> pb.RecordUsageRequest:
        return pb.RecordUsageRequest(request_id=rid(), subscription_id=sub.id, metric_code="api_calls",
                                     quantity="5", occurred_at=ts(at))

    # At clock time (eight months before the wall clock): accepted, in the clock's period.
    ok = await stub.RecordUsage(usage(APRIL + timedelta(days=9)), metadata=tenant.md)
    assert ok.period_start.ToDatetime(UTC) == APRIL and ok.period_end.ToDatetime(UTC) == datetime(2026, 5, 1, tzinfo=UTC)
    # The wall clock's now is far in the clock's future.
    message, details = await refused(stub.RecordUsage, usage(datetime.now(UTC)), tenant.md)
    assert message.startswith("occurred_at") and "ahead of its test clock" in message
    assert [v.field for v in details["BadRequest"].field_violations] == ["occurred_at"]
    # Older than the age limit, counted back from the clock's time.
    message, _ = await refused(stub.RecordUsage, usage(APRIL + timedelta(days=10) - timedelta(days=36)), tenant.md)
    assert message.startswith("occurred_at") and "older than" in message
    # Before the subscription's start on the clock.
    _, details = await refused(stub.RecordUsage, usage(APRIL - timedelta(hours=1)), tenant.md, PRECONDITION)
    assert details["ErrorInfo"].reason == "BEFORE_SUBSCRIPTION_START"


async def test_an_advancing_clock_refuses_changes_and_an_interrupted_advance_bills_once(
        service, stub, tenant, admin_conn):
    clock = await make_clock(stub, tenant, APRIL)
    plan = await monthly_plan(stub, tenant, "30.00", timing=pb.BILLING_TIMING_IN_ARREARS, usage=False)
    subs = [await clock_sub(stub, tenant, plan, clock.id) for _ in range(4)]
    # A real-time subscription of the same tenant whose period ended long ago: no clock touches it.
    real = (await stub.CreateSubscription(pb.CreateSubscriptionRequest(
        request_id=rid(), customer_id="real", plan_id=plan.id, activate=True,
        start_at=ts(datetime.now(UTC) - timedelta(days=70))), metadata=tenant.md)).subscription

    # Three months on: April, May and June close; no Kafka roles run here, so the clock waits.
    to = datetime(2026, 7, 1, 0, 0, 1, tzinfo=UTC)
    request_id = rid()
    advancing = await advance(stub, tenant, clock.id, to, request_id)
    assert advancing.status == pb.TEST_CLOCK_STATUS_ADVANCING and advancing.advance_to.ToDatetime(UTC) == to
    assert advancing.frozen_time.ToDatetime(UTC) == APRIL and advancing.advance_run_id
    assert await advance(stub, tenant, clock.id, to, request_id) == advancing  # a replay: the same advance
    run = (await stub.GetBillingRun(pb.GetBillingRunRequest(id=advancing.advance_run_id), metadata=tenant.md)).run
    assert run.test_clock_id == clock.id and run.as_of.ToDatetime(UTC) == to
    for call, request in [
        (stub.AdvanceTestClock, pb.AdvanceTestClockRequest(request_id=rid(), id=clock.id,
                                                           frozen_time=ts(to + timedelta(days=1)))),
        (stub.DeleteTestClock, pb.DeleteTestClockRequest(request_id=rid(), id=clock.id)),
        (stub.CancelSubscription, pb.CancelSubscriptionRequest(request_id=rid(), id=subs[0].id,
                                                               mode=pb.CANCEL_MODE_IMMEDIATELY)),
        (stub.CreateSubscription, pb.CreateSubscriptionRequest(request_id=rid(), customer_id="c", plan_id=plan.id,
                                                               test_clock_id=clock.id)),
    ]:
        _, details = await refused(call, request, tenant.md, PRECONDITION)
        assert details["ErrorInfo"].reason == "TEST_CLOCK_ADVANCING"

    # The interruption: one subscription is held by another transaction, so the executor
    # bills the other three and waits; it dies there (cancelled), the clock still advancing.
    tenant_id, run_id = uuid.UUID(tenant.id), uuid.UUID(advancing.advance_run_id)
    async with admin_conn.transaction():
        await admin_conn.execute("select 1 from subscriptions where id = $1 for update", uuid.UUID(subs[3].id))
        task = asyncio.create_task(execute_run(service.db, tenant_id, run_id, chunk_size=1, workers=1))
        deadline = asyncio.get_running_loop().time() + 30
        while await _billed(service, tenant_id) < 9:
            assert asyncio.get_running_loop().time() < deadline, "the executor billed nothing"
            await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert (await get_clock(stub, tenant, clock.id)).status == pb.TEST_CLOCK_STATUS_ADVANCING

    # Resumed (an executor claims the job again): the rest is billed, each period once.
    done = await execute_run(service.db, tenant_id, run_id, chunk_size=1)
    assert done.status == "completed" and done.subscriptions_failed == 0
    again = await execute_run(service.db, tenant_id, run_id)  # a redelivered request: nothing more
    assert again.subscriptions_billed == done.subscriptions_billed
    rows = await admin_conn.fetch(
        "select subscription_id, period_start from billed_periods where tenant_id = $1 order by 1, 2", tenant_id)
    months = [datetime(2026, m, 1, tzinfo=UTC) for m in (4, 5, 6)]
    assert sorted((str(r["subscription_id"]), r["period_start"]) for r in rows) == sorted(
        (s.id, m) for s in subs for m in months)
    headers = await admin_conn.fetch(
        "select headers from outbox where tenant_id = $1 and stream = 'invoice_requests'", tenant_id)
    assert len(headers) == 12 and {h["headers"]["billing-test-clock"] for h in headers} == {clock.id}
    ready = await get_clock(stub, tenant, clock.id)
    assert (ready.status, ready.frozen_time.ToDatetime(UTC), ready.advance_run_id) == (
        pb.TEST_CLOCK_STATUS_READY, to, "")
    # The real-time subscription was never billed by the clock's run.
    assert str(real.id) not in {str(r["subscription_id"]) for r in rows}

    # DeleteTestClock removes the clock and its subscriptions with their rows.
    deleted = await stub.DeleteTestClock(pb.DeleteTestClockRequest(request_id=rid(), id=clock.id),
                                         metadata=tenant.md)
    assert deleted.deleted_subscriptions == 4
    await refused(stub.GetTestClock, pb.GetTestClockRequest(id=clock.id), tenant.md, NOT_FOUND)
    await refused(stub.GetSubscription, pb.GetSubscriptionRequest(id=subs[0].id), tenant.md, NOT_FOUND)
    assert await admin_conn.fetchval("select count(*) from billed_periods where tenant_id = $1", tenant_id) == 0
    got = (await stub.GetSubscription(pb.GetSubscriptionRequest(id=real.id), metadata=tenant.md)).subscription
    assert got.id == real.id


async def _billed(service, tenant_id: uuid.UUID) -> int:
    async with service.db.tenant_tx(tenant_id) as conn:
        return await conn.fetchval("select count(*) from billed_periods where tenant_id = $1", tenant_id)


async def test_an_advance_resumes_the_clocks_paused_subscriptions_at_their_time_only(stub, tenant, admin_conn):
    clock = await make_clock(stub, tenant, APRIL)
    plan = await monthly_plan(stub, tenant, "30.00")
    sub = await clock_sub(stub, tenant, plan, clock.id)
    resumes = APRIL + timedelta(days=5, hours=3)
    await stub.PauseSubscription(pb.PauseSubscriptionRequest(request_id=rid(), id=sub.id, resumes_at=ts(resumes)),
                                 metadata=tenant.md)
    # A real-time subscription paused until a minute from now: no clock resumes it.
    real = (await stub.CreateSubscription(pb.CreateSubscriptionRequest(
        request_id=rid(), customer_id="real", plan_id=plan.id, activate=True), metadata=tenant.md)).subscription
    await stub.PauseSubscription(pb.PauseSubscriptionRequest(
        request_id=rid(), id=real.id, resumes_at=ts(datetime.now(UTC) + timedelta(minutes=1))), metadata=tenant.md)

    await advance(stub, tenant, clock.id, APRIL + timedelta(days=10))
    got = (await stub.GetSubscription(pb.GetSubscriptionRequest(id=sub.id, include_history=True),
                                      metadata=tenant.md)).subscription
    assert got.status == pb.SUBSCRIPTION_STATUS_ACTIVE
    assert [(h.action, h.actor) for h in got.history][-1][0] == "resumed"
    # Resumed at its resume time on the clock: the pause window ends there.
    window = await admin_conn.fetchrow("select paused_at, resumed_at from pause_windows where subscription_id = $1",
                                       uuid.UUID(sub.id))
    assert (window["paused_at"], window["resumed_at"]) == (APRIL, resumes)
    other = (await stub.GetSubscription(pb.GetSubscriptionRequest(id=real.id), metadata=tenant.md)).subscription
    assert other.status == pb.SUBSCRIPTION_STATUS_PAUSED


async def test_an_immediate_cancel_on_a_clock_bills_at_clock_time_and_is_marked(stub, tenant, admin_conn):
    from billing import codec

    clock = await make_clock(stub, tenant, APRIL + timedelta(days=6))
    plan = await monthly_plan(stub, tenant, "30.00", timing=pb.BILLING_TIMING_IN_ARREARS, usage=False)
    sub = await clock_sub(stub, tenant, plan, clock.id, start=APRIL)
    canceled = (await stub.CancelSubscription(pb.CancelSubscriptionRequest(
        request_id=rid(), id=sub.id, mode=pb.CANCEL_MODE_IMMEDIATELY), metadata=tenant.md)).subscription
    assert canceled.canceled_at.ToDatetime(UTC) == APRIL + timedelta(days=6)
    [row] = await admin_conn.fetch(
        "select payload, headers from outbox where tenant_id = $1 and stream = 'invoice_requests'", uuid.UUID(tenant.id))
    request = codec.decode(codec.Schema.INVOICE_REQUEST, bytes(row["payload"]))
    # Six of April's thirty days used, to the second of the clock: 30.00 * 6/30.
    assert [(ln["kind"], ln["amount"], ln["fraction"]) for ln in request["lines"]] == [
        ("proration_charge", "6.00", "1/5")]
    assert request["test_clock_id"] == clock.id and row["headers"]["billing-test-clock"] == clock.id
    assert request["issued_at_us"] == int((APRIL + timedelta(days=6)).timestamp() * 1_000_000)
