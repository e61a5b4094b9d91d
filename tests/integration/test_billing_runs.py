"""Billing runs end to end: RunBilling over gRPC -> outbox -> billing consumer -> invoice
requests on their topic, through the real broker; and the run's guarantees against the
database directly (two runs at once, a resumed run)."""
from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal as D

import grpc
import pytest

from billing import codec
from billing.domain.invoicing import invoice_request_id
from billing.services import billing_runs as billing_service
from billing.services.run_execution import execute_run
from billing.services.context import Caller
from billing.v1 import billing_pb2 as pb
from tests.integration.test_plans_api import plan_request
from tests.integration.test_subscriptions_api import rid, ts
from tests.kafka_helpers import TopicReader, running_roles, wait_until

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
async def kafka_roles(migrated):
    """The billing consumer and the outbox relay, running in this process."""
    async with running_roles(migrated, ("billing", "relay")) as svc:
        yield svc


_wait = wait_until


def _time(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


async def _usage_plan(stub, tenant, timing=pb.BILLING_TIMING_IN_ADVANCE) -> pb.Plan:
    req = plan_request(base_fee="10.00", trial_days=0, billing_timing=timing, usage_charges=[
        pb.UsageCharge(metric_code="api_calls", aggregation=pb.AGGREGATION_SUM,
                       pricing_model=pb.PRICING_MODEL_PER_UNIT, unit_price="0.0025")])
    return (await stub.CreatePlan(req, metadata=tenant.md)).plan


async def _sub_started(stub, tenant, plan, days_ago: int, labels: dict | None = None) -> pb.Subscription:
    start = datetime.now(timezone.utc) - timedelta(days=days_ago)
    return (await stub.CreateSubscription(pb.CreateSubscriptionRequest(
        request_id=rid(), customer_id="cust-9", plan_id=plan.id, activate=True, start_at=ts(start),
        metadata=labels or {}), metadata=tenant.md)).subscription


async def _completed(stub, tenant, run_id: str) -> pb.BillingRun:
    async def done():
        run = (await stub.GetBillingRun(pb.GetBillingRunRequest(id=run_id), metadata=tenant.md)).run
        return run if run.status == pb.BILLING_RUN_STATUS_COMPLETED else None
    return await _wait(done)


def _read_invoices(settings, subscription_id: str, wanted: int, *, headers: bool = False) -> list[tuple]:
    reader = TopicReader(settings, settings.topics.invoice_requests)

    def mine(ms):
        decoded = [codec.decode(codec.Schema.INVOICE_REQUEST, m.value()) for m in ms]
        return [d for d in decoded if d["subscription_id"] == subscription_id]

    try:
        reader.until(lambda ms: len(mine(ms)) >= wanted)
        msgs = list(reader.messages)
    finally:
        reader.close()
    found = [(m.key(), codec.decode(codec.Schema.INVOICE_REQUEST, m.value()),
              {k: v.decode() for k, v in m.headers() or []}) for m in msgs]
    return [(k, d, h) if headers else (k, d) for k, d, h in found if d["subscription_id"] == subscription_id]


async def test_run_billing_end_to_end(kafka_roles, migrated, stub, tenant, admin_conn):
    plan = await _usage_plan(stub, tenant)
    sub = await _sub_started(stub, tenant, plan, days_ago=40, labels={"crm": "42"})
    p1_start, p1_end = sub.current_period_start.ToDatetime(timezone.utc), sub.current_period_end.ToDatetime(timezone.utc)
    assert p1_end < datetime.now(timezone.utc)  # the first period has ended
    for q in ("1000", "234"):
        await stub.RecordUsage(pb.RecordUsageRequest(
            request_id=rid(), subscription_id=sub.id, metric_code="api_calls", quantity=q,
            occurred_at=ts(datetime.now(timezone.utc) - timedelta(days=30))), metadata=tenant.md)

    key = f"run-{uuid.uuid4()}"
    run = (await stub.RunBilling(pb.RunBillingRequest(request_id=rid(), idempotency_key=key),
                                 metadata=tenant.md)).run
    assert run.status == pb.BILLING_RUN_STATUS_PENDING and run.idempotency_key == key
    again = (await stub.RunBilling(pb.RunBillingRequest(request_id=rid(), idempotency_key=key),
                                   metadata=tenant.md)).run
    assert again.id == run.id  # same key, same run

    done = await _completed(stub, tenant, run.id)
    assert (done.subscriptions_due, done.subscriptions_billed, done.subscriptions_skipped,
            done.subscriptions_failed) == (1, 1, 0, 0)
    assert done.started_at.seconds and done.finished_at.seconds
    # 10.00 (first period, never charged in advance) + 10.00 (next period) + 1234 * 0.0025 = 3.085 -> 3.08.
    assert [(t.currency, t.amount) for t in done.totals] == [("EUR", "23.08")]

    found = await asyncio.to_thread(_read_invoices, migrated, sub.id, 1, headers=True)
    assert len(found) == 1
    msg_key, inv, headers = found[0]
    expected_id = str(invoice_request_id(uuid.UUID(tenant.id), uuid.UUID(sub.id), p1_start))
    assert msg_key == expected_id.encode() and inv["invoice_request_id"] == expected_id
    assert headers["invoice-request-id"] == expected_id
    assert headers["content-type"] == codec.content_type(codec.Schema.INVOICE_REQUEST)
    # CloudEvents binary mode (docs/kafka.md): the request id is the event id
    assert (headers["ce_specversion"], headers["ce_id"], headers["ce_type"], headers["ce_tenantid"]) == (
        "1.0", expected_id, "billing.v1.InvoiceRequest", tenant.id)
    assert (inv["tenant_id"], inv["customer_id"], inv["run_id"], inv["currency"]) == (tenant.id, "cust-9", run.id, "EUR")
    assert (_time(inv["period_start_us"]), _time(inv["period_end_us"])) == (p1_start, p1_end)
    lines = [(ln["kind"], ln["metric_code"], ln["quantity"], ln["unit_price"], ln["amount"],
              _time(ln["period_start_us"])) for ln in inv["lines"]]
    assert lines == [
        ("base_fee", None, "1", "10.00", "10.00", p1_start),
        ("base_fee", None, "1", "10.00", "10.00", p1_end),
        ("usage", "api_calls", "1234", "0.0025", "3.08", p1_start),
    ]
    assert inv["subtotal"] == inv["total"] == "23.08"
    assert inv["metadata"] == {"crm": "42"}  # the subscription's labels travel with the request
    assert sum(D(ln["amount"]) for ln in inv["lines"]) == D("23.08")

    after = (await stub.GetSubscription(pb.GetSubscriptionRequest(id=sub.id), metadata=tenant.md)).subscription
    assert after.current_period_start.ToDatetime(timezone.utc) == p1_end

    # A second run for the same time bills nothing: the subscription is no longer due.
    second = (await stub.RunBilling(pb.RunBillingRequest(request_id=rid(), idempotency_key=f"{key}-2",
                                                         as_of=done.as_of), metadata=tenant.md)).run
    assert second.id != run.id
    second = await _completed(stub, tenant, second.id)
    assert (second.subscriptions_due, second.subscriptions_billed) == (0, 0) and not second.totals
    assert await admin_conn.fetchval("select count(*) from billed_periods where subscription_id = $1",
                                     uuid.UUID(sub.id)) == 1

    listed = (await stub.ListBillingRuns(pb.ListBillingRunsRequest(status=pb.BILLING_RUN_STATUS_COMPLETED),
                                         metadata=tenant.md)).runs
    assert {r.id for r in listed} == {run.id, second.id}


async def test_bad_requests(stub, tenant):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetBillingRun(pb.GetBillingRunRequest(id=str(uuid.uuid4())), metadata=tenant.md)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetBillingRun(pb.GetBillingRunRequest(id="nope"), metadata=tenant.md)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "id" in err.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.RunBilling(pb.RunBillingRequest(request_id=rid(), as_of=ts(
            datetime.now(timezone.utc) + timedelta(days=1))), metadata=tenant.md)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "as_of" in err.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.RunBilling(pb.RunBillingRequest(), metadata=tenant.md)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "idempotency_key" in err.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ListBillingRuns(pb.ListBillingRunsRequest(page_token="junk"), metadata=tenant.md)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "page_token" in err.value.details()


async def test_list_billing_runs_pages_newest_first_and_filters_by_creation_time(service, stub, tenant):
    """ListBillingRuns: newest first, pages that neither repeat nor skip a run, and the
    created_after (inclusive) / created_before (exclusive) window."""
    made = []
    for i in range(5):
        made.append((await stub.RunBilling(pb.RunBillingRequest(request_id=rid(), idempotency_key=f"list-{i}"),
                                           metadata=tenant.md)).run)
        await asyncio.sleep(0.002)  # distinct creation times, so the window below is exact
    newest_first = [r.id for r in reversed(made)]

    pages, token = [], ""
    while True:
        resp = await stub.ListBillingRuns(pb.ListBillingRunsRequest(page_size=2, page_token=token),
                                          metadata=tenant.md)
        pages.append([r.id for r in resp.runs])
        token = resp.next_page_token
        if not token:
            break
    assert pages == [newest_first[0:2], newest_first[2:4], newest_first[4:]]

    window = pb.ListBillingRunsRequest(created_after=made[1].created_at, created_before=made[3].created_at)
    assert [r.id for r in (await stub.ListBillingRuns(window, metadata=tenant.md)).runs] == [made[2].id, made[1].id]
    later = pb.ListBillingRunsRequest(created_after=made[3].created_at, page_size=1)
    first = await stub.ListBillingRuns(later, metadata=tenant.md)
    rest = await stub.ListBillingRuns(pb.ListBillingRunsRequest(created_after=made[3].created_at, page_size=1,
                                                                page_token=first.next_page_token), metadata=tenant.md)
    assert ([r.id for r in first.runs], [r.id for r in rest.runs]) == ([made[4].id], [made[3].id])

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ListBillingRuns(pb.ListBillingRunsRequest(created_after=made[3].created_at,
                                                             created_before=made[1].created_at), metadata=tenant.md)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "created_before" in err.value.details()


async def test_two_runs_at_once_bill_each_period_once_and_a_rerun_resumes(service, stub, tenant, admin_conn):
    """execute_run called directly (no Kafka): two runs for the same time at once, then
    both executed again (a redelivered request) - every period is billed exactly once."""
    plan = await _usage_plan(stub, tenant, timing=pb.BILLING_TIMING_IN_ARREARS)
    # 70 days ago: two monthly periods have ended, billed one after the other.
    for _ in range(12):
        await _sub_started(stub, tenant, plan, days_ago=70)
    caller = Caller(uuid.UUID(tenant.id), "test")
    as_of = datetime.now(timezone.utc)
    a = await billing_service.run_billing(service.db, caller, rid(), "a", as_of)
    b = await billing_service.run_billing(service.db, caller, rid(), "b", as_of)
    ra, rb = await asyncio.gather(
        execute_run(service.db, caller.tenant_id, a.id, chunk_size=5),
        execute_run(service.db, caller.tenant_id, b.id, chunk_size=5))
    assert ra.status == rb.status == "completed"
    assert ra.subscriptions_billed + rb.subscriptions_billed == 12 and ra.subscriptions_failed == 0
    # In arrears, 10.00 per ended period, no usage: 12 subscriptions * 2 periods * 10.00 = 240.00.
    total = sum(D(dict(r.totals).get("EUR", "0")) for r in (ra, rb))
    assert total == D("240.00")
    rows = await admin_conn.fetch(
        "select subscription_id, count(*) as n from billed_periods where tenant_id = $1 group by 1",
        uuid.UUID(tenant.id))
    assert len(rows) == 12 and {r["n"] for r in rows} == {2}
    outbox = await admin_conn.fetchval(
        "select count(*) from outbox where tenant_id = $1 and stream = 'invoice_requests'", uuid.UUID(tenant.id))
    assert outbox == 24
    # Executing a run again (a redelivered request) changes nothing.
    again = await execute_run(service.db, caller.tenant_id, a.id)
    assert again == await billing_service.get_billing_run(service.db, caller, str(a.id))
    assert again.subscriptions_billed == ra.subscriptions_billed
    assert await admin_conn.fetchval(
        "select count(*) from outbox where tenant_id = $1 and stream = 'invoice_requests'",
        uuid.UUID(tenant.id)) == 24


async def test_a_failing_subscription_is_recorded_and_does_not_stop_the_run(service, stub, tenant, admin_conn):
    plan = await _usage_plan(stub, tenant, timing=pb.BILLING_TIMING_IN_ARREARS)
    good = [await _sub_started(stub, tenant, plan, days_ago=40) for _ in range(3)]
    bad = await _sub_started(stub, tenant, plan, days_ago=40)
    # Metadata the invoice request schema cannot carry (map of strings): encoding fails.
    await admin_conn.execute("""update subscriptions set metadata = '{"n": 1}' where id = $1""", uuid.UUID(bad.id))
    caller = Caller(uuid.UUID(tenant.id), "test")
    run = await billing_service.run_billing(service.db, caller, rid(), "", datetime.now(timezone.utc))
    done = await execute_run(service.db, caller.tenant_id, run.id, chunk_size=2)
    assert (done.status, done.subscriptions_due, done.subscriptions_billed, done.subscriptions_failed) == (
        "completed", 4, 3, 1)
    assert [s for s, _ in done.failures] == [bad.id] and "CodecError" in done.failures[0][1]
    assert done.totals == (("EUR", "30.00"),)  # 3 * 10.00 in arrears, no usage
    billed = {str(r["subscription_id"]) for r in await admin_conn.fetch(
        "select subscription_id from billed_periods where tenant_id = $1", uuid.UUID(tenant.id))}
    assert billed == {s.id for s in good}
    # The failed subscription was rolled back alone: still due, not advanced.
    row = await admin_conn.fetchrow("select current_period_start, start_at from subscriptions where id = $1",
                                    uuid.UUID(bad.id))
    assert row["current_period_start"] == row["start_at"]
