"""Amount thresholds and progressive billing through the real stack (docs/billing.md,
"Progressive billing"; docs/alerts.md): usage by RecordUsage crosses amount thresholds in
its transaction, invoice_on_cross writes threshold invoice requests, a billing run closes the
period, and the requests read from billing.invoice-requests.v1 sum to what one invoice
would have charged. Shares of a limit, a test clock's crossing time, and every bad input."""
from __future__ import annotations

import asyncio
import os
import random
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal as D

import grpc
import pytest

from billing import codec
from billing.domain.periods import to_us
from billing.v1 import billing_pb2 as pb
from tests.integration.test_billing_money import _run
from tests.integration.test_billing_runs import _read_invoices
from tests.integration.test_plans_api import plan_request
from tests.integration.test_subscriptions_api import rid, ts
from tests.integration.test_usage_alerts import _violations
from tests.kafka_helpers import running_roles

UTC = timezone.utc


@pytest.fixture(scope="module")
async def kafka_roles(migrated):
    async with running_roles(migrated, ("billing", "relay")) as svc:
        yield svc


async def _plan(stub, tenant, **kw) -> pb.Plan:
    fields = dict(interval=pb.INTERVAL_UNIT_DAY, interval_count=1, base_fee="5.00", trial_days=0,
                  billing_timing=pb.BILLING_TIMING_IN_ARREARS, minimum_commitment="20.00", usage_charges=[
                      pb.UsageCharge(metric_code="calls", aggregation=pb.AGGREGATION_SUM,
                                     pricing_model=pb.PRICING_MODEL_PER_UNIT, unit_price="0.01")],
                  features=[pb.Feature(code="calls-limit", kind=pb.FEATURE_KIND_METERED, metric_code="calls",
                                       limit="1000")])
    return (await stub.CreatePlan(plan_request(**{**fields, **kw}), metadata=tenant.md)).plan


async def _sub(stub, tenant, plan, start: datetime) -> pb.Subscription:
    return (await stub.CreateSubscription(pb.CreateSubscriptionRequest(
        request_id=rid(), customer_id="cust-progressive", plan_id=plan.id, activate=True, start_at=ts(start)),
        metadata=tenant.md)).subscription


async def _threshold(stub, tenant, sub_id: str, **kw) -> pb.Threshold:
    return (await stub.CreateThreshold(pb.CreateThresholdRequest(request_id=rid(), subscription_id=sub_id, **kw),
                                       metadata=tenant.md)).threshold


async def _use(stub, tenant, sub, quantity: str, at: datetime, event_id: str) -> None:
    await stub.RecordUsage(pb.RecordUsageRequest(request_id=rid(), event_id=event_id, subscription_id=sub.id,
                                                 metric_code="calls", quantity=quantity, occurred_at=ts(at)),
                           metadata=tenant.md)


async def _alerts(admin_conn, tenant, sub_id: str) -> list[dict]:
    rows = await admin_conn.fetch("select payload from outbox where tenant_id = $1 and stream = 'usage_alerts' "
                                  "order by id", uuid.UUID(tenant.id))
    alerts = [codec.decode(codec.Schema.USAGE_ALERT, r["payload"]) for r in rows]
    return [a for a in alerts if a["subscription_id"] == sub_id]


async def test_threshold_invoices_and_the_final_one_sum_to_the_single_invoice(
        kafka_roles, migrated, stub, tenant, admin_conn):
    plan = await _plan(stub, tenant)
    start = (datetime.now(UTC) - timedelta(days=1, hours=2)).replace(microsecond=0)
    end = start + timedelta(days=1)
    sub = await _sub(stub, tenant, plan, start)
    five = await _threshold(stub, tenant, sub.id, measure="amount", value="5", invoice_on_cross=True)
    half = await _threshold(stub, tenant, sub.id, measure="amount", percent="50")  # of the commitment: 10.00
    twelve = await _threshold(stub, tenant, sub.id, measure="amount", value="12", invoice_on_cross=True)
    never = await _threshold(stub, tenant, sub.id, measure="amount", value="1000", invoice_on_cross=True)
    assert (half.value, half.percent, half.measure, half.metric_code) == ("10.00", "50", "amount", "")
    assert five.invoice_on_cross and not half.invoice_on_cross

    at = start + timedelta(hours=3)
    await _use(stub, tenant, sub, "300", at, f"{sub.id}-1")  # 3.00: nothing crossed
    assert await _alerts(admin_conn, tenant, sub.id) == []
    await _use(stub, tenant, sub, "300", at, f"{sub.id}-2")  # 6.00: crosses 5, invoices 6.00
    await _use(stub, tenant, sub, "300", at, f"{sub.id}-2")  # a duplicate: nothing new
    await _use(stub, tenant, sub, "700", at, f"{sub.id}-3")  # 13.00: crosses 10 and 12, invoices 7.00
    alerts = await _alerts(admin_conn, tenant, sub.id)
    assert [(a["threshold_id"], a["quantity"], a["measure"], a["currency"]) for a in alerts] == [
        (five.id, "6.00", "amount", "EUR"), (half.id, "13.00", "amount", "EUR"),
        (twelve.id, "13.00", "amount", "EUR")]
    assert alerts[0]["invoice_request_id"] and alerts[2]["invoice_request_id"]
    assert alerts[1]["invoice_request_id"] is None and alerts[1]["metric_code"] == ""
    assert all(a["period_start_us"] == to_us(start) for a in alerts)

    await _run(stub, tenant, end + timedelta(minutes=1))
    found = await asyncio.to_thread(_read_invoices, migrated, sub.id, 3)
    requests = sorted((inv for _, inv in found), key=lambda inv: inv["issued_at_us"])
    assert [r["reason"] for r in requests] == ["threshold", "threshold", "period"]
    assert [r["threshold_id"] for r in requests] == [five.id, twelve.id, None]
    assert [r["invoice_request_id"] for r in requests[:2]] == [alerts[0]["invoice_request_id"],
                                                                alerts[2]["invoice_request_id"]]

    def lines(inv):
        return [(ln["kind"], ln["amount"]) for ln in inv["lines"]]
    assert lines(requests[0]) == [("usage", "6.00")]
    assert lines(requests[1]) == [("usage", "13.00"), ("progressive_billed", "-6.00")]
    # The single invoice: base 5.00 + usage 13.00 = 18.00, commitment 20.00: +2.00. Less the 13.00
    # the threshold invoices charged.
    assert lines(requests[2]) == [("base_fee", "5.00"), ("usage", "13.00"), ("commitment_true_up", "2.00"),
                                  ("progressive_billed", "-13.00")]
    totals = [D(r["total"]) for r in requests]
    assert totals == [D("6.00"), D("7.00"), D("7.00")] and sum(totals) == D("20.00")
    assert never.id not in {a["threshold_id"] for a in await _alerts(admin_conn, tenant, sub.id)}
    assert await admin_conn.fetchval("select count(*) from progressive_invoices where subscription_id = $1",
                                     uuid.UUID(sub.id)) == 2


async def test_a_random_stream_bills_what_a_twin_without_thresholds_is_billed(
        kafka_roles, migrated, stub, tenant, admin_conn):
    """The property through the real stack: two subscriptions of one plan get the same random
    usage; one has random invoicing amount thresholds. Their requests' totals are equal."""
    seed = int(os.environ.get("PROGRESSIVE_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    plan = await _plan(stub, tenant, minimum_commitment="40.00", usage_charges=[
        pb.UsageCharge(metric_code="calls", aggregation=pb.AGGREGATION_SUM, pricing_model=pb.PRICING_MODEL_GRADUATED,
                       tiers=[pb.Tier(up_to="1000", unit_price="0.0125"), pb.Tier(up_to="", unit_price="0.0037")]),
        pb.UsageCharge(metric_code="storage", aggregation=pb.AGGREGATION_SUM, pricing_model=pb.PRICING_MODEL_PER_UNIT,
                       unit_price="1.337", max_amount="5.00")])
    start = (datetime.now(UTC) - timedelta(days=1, hours=2)).replace(microsecond=0)
    progressive, twin = await _sub(stub, tenant, plan, start), await _sub(stub, tenant, plan, start)
    for sub in (progressive, twin):
        await stub.CreateDiscount(pb.CreateDiscountRequest(request_id=rid(), subscription_id=sub.id,
                                                           kind=pb.DISCOUNT_KIND_PERCENTAGE, value="10"),
                                  metadata=tenant.md)
    for _ in range(4):
        await _threshold(stub, tenant, progressive.id, measure="amount", value=f"{rng.uniform(0, 30):.2f}",
                         invoice_on_cross=True)
    await _threshold(stub, tenant, progressive.id, measure="amount", percent="50", invoice_on_cross=True)
    for n in range(12):
        metric, quantity = rng.choice(["calls", "calls", "storage"]), f"{rng.uniform(0, 800):.3f}"
        for sub in (progressive, twin):
            await stub.RecordUsage(pb.RecordUsageRequest(
                request_id=rid(), event_id=f"{sub.id}-{n}", subscription_id=sub.id, metric_code=metric,
                quantity=quantity, occurred_at=ts(start + timedelta(minutes=n + 1))), metadata=tenant.md)
    await _run(stub, tenant, start + timedelta(days=1, minutes=1))
    [(_, single)] = await asyncio.to_thread(_read_invoices, migrated, twin.id, 1)
    # Requests are keyed by their own id, so they spread over the topic's partitions: wait for
    # as many as were written (the threshold ones and the period's), in whatever order.
    written = await admin_conn.fetchval("select count(*) from progressive_invoices where subscription_id = $1",
                                        uuid.UUID(progressive.id))
    found = [inv for _, inv in await asyncio.to_thread(_read_invoices, migrated, progressive.id, written + 1)]
    final = [inv for inv in found if inv["reason"] == "period"]
    by_threshold = [inv for inv in found if inv["reason"] == "threshold"]
    assert len(final) == 1 and len(found) == len(by_threshold) + 1 <= 6, f"seed {seed}: {found}"
    total = sum((D(inv["total"]) for inv in found), D(0))
    assert total == D(single["total"]), f"seed {seed}: {[inv['total'] for inv in found]} vs {single['total']}"
    assert all(D(inv["total"]) > 0 for inv in by_threshold), f"seed {seed}"


async def test_a_quantity_share_of_the_metered_limit(stub, tenant, admin_conn):
    plan = await _plan(stub, tenant)
    sub = await _sub(stub, tenant, plan, datetime.now(UTC) - timedelta(hours=1))
    t = await _threshold(stub, tenant, sub.id, metric_code="calls", percent="80")
    assert (t.value, t.percent, t.measure, t.aggregation) == ("800", "80", "quantity", "sum")
    await _use(stub, tenant, sub, "799", datetime.now(UTC) - timedelta(minutes=5), f"{sub.id}-a")
    assert await _alerts(admin_conn, tenant, sub.id) == []
    await _use(stub, tenant, sub, "1", datetime.now(UTC) - timedelta(minutes=5), f"{sub.id}-b")
    [alert] = await _alerts(admin_conn, tenant, sub.id)
    assert (alert["threshold_id"], alert["quantity"], alert["measure"]) == (t.id, "800", "quantity")


async def test_a_test_clock_subscription_crosses_at_its_clock_time(stub, tenant, admin_conn):
    from tests.integration.test_test_clocks import APRIL, clock_sub, make_clock, monthly_plan

    clock = await make_clock(stub, tenant, APRIL + timedelta(days=3), name="progressive")
    plan = await monthly_plan(stub, tenant, "0", timing=pb.BILLING_TIMING_IN_ARREARS)
    sub = await clock_sub(stub, tenant, plan, clock.id, start=APRIL)
    qty = await _threshold(stub, tenant, sub.id, metric_code="api_calls", value="10")
    amount = await _threshold(stub, tenant, sub.id, measure="amount", value="0.10", invoice_on_cross=True)
    await stub.RecordUsage(pb.RecordUsageRequest(request_id=rid(), event_id=f"{sub.id}-1", subscription_id=sub.id,
                                                 metric_code="api_calls", quantity="10",
                                                 occurred_at=ts(APRIL + timedelta(days=2))), metadata=tenant.md)
    rows = await admin_conn.fetch("select threshold_id, crossed_at from usage_threshold_crossings "
                                  "where tenant_id = $1 and threshold_id = any($2::uuid[])",
                                  uuid.UUID(tenant.id), [uuid.UUID(qty.id), uuid.UUID(amount.id)])
    assert {str(r["threshold_id"]): r["crossed_at"] for r in rows} == {
        qty.id: APRIL + timedelta(days=3), amount.id: APRIL + timedelta(days=3)}
    [alert_q, alert_a] = sorted(await _alerts(admin_conn, tenant, sub.id), key=lambda a: a["measure"] != "quantity")
    assert alert_q["crossed_at_us"] == alert_a["crossed_at_us"] == to_us(APRIL + timedelta(days=3))
    # The threshold invoice of a clock subscription is the clock's: issued at its time, marked.
    row = await admin_conn.fetchrow("select payload, headers from outbox where tenant_id = $1 and "
                                    "stream = 'invoice_requests' and key = $2", uuid.UUID(tenant.id),
                                    alert_a["invoice_request_id"].encode())
    request = codec.decode(codec.Schema.INVOICE_REQUEST, row["payload"])
    assert (request["reason"], request["test_clock_id"], request["total"]) == ("threshold", clock.id, "0.10")
    assert request["issued_at_us"] == to_us(APRIL + timedelta(days=3))


@pytest.mark.parametrize("field, kw", [
    ("measure", {"measure": "money"}),
    ("metric_code", {"measure": "amount", "metric_code": "calls", "value": "5"}),
    ("metric_code", {"value": "5"}),  # a quantity threshold needs its metric
    ("percent", {"metric_code": "calls", "value": "5", "percent": "50"}),
    ("percent", {"metric_code": "calls", "percent": "0"}),
    ("percent", {"metric_code": "calls", "percent": "1000.5"}),
    ("percent", {"metric_code": "calls", "percent": "abc"}),
    ("percent", {"measure": "amount", "percent": "50", "plan": {"minimum_commitment": ""}}),
    ("percent", {"metric_code": "calls", "percent": "50", "plan": {"features": []}}),
    ("invoice_on_cross", {"metric_code": "calls", "value": "5", "invoice_on_cross": True}),
    ("value", {"measure": "amount"}),  # neither value nor percent
])
async def test_bad_input_names_the_field(stub, tenant, field, kw):
    plan = await _plan(stub, tenant, **kw.pop("plan", {}))
    sub = await _sub(stub, tenant, plan, datetime.now(UTC) - timedelta(hours=1))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _threshold(stub, tenant, sub.id, **kw)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in _violations(info.value), _violations(info.value)


async def test_a_plans_thresholds_cross_once_per_subscription(stub, tenant, admin_conn):
    plan, other = await _plan(stub, tenant), await _plan(stub, tenant)
    at = datetime.now(UTC) - timedelta(minutes=5)
    subs = [await _sub(stub, tenant, plan, at - timedelta(hours=1)) for _ in range(2)]
    elsewhere = await _sub(stub, tenant, other, at - timedelta(hours=1))
    qty = (await stub.CreateThreshold(pb.CreateThresholdRequest(
        request_id=rid(), plan_id=plan.id, metric_code="calls", value="10"), metadata=tenant.md)).threshold
    amount = (await stub.CreateThreshold(pb.CreateThresholdRequest(
        request_id=rid(), plan_id=plan.id, measure="amount", value="0.10", invoice_on_cross=True),
        metadata=tenant.md)).threshold
    assert (qty.plan_id, qty.subscription_id) == (plan.id, "")
    for sub in [*subs, elsewhere]:
        for n in range(2):  # the second batch crosses nothing new
            await _use(stub, tenant, sub, "10", at, f"{sub.id}-{n}")
    for sub in subs:
        alerts = await _alerts(admin_conn, tenant, sub.id)
        assert sorted((a["threshold_id"], a["quantity"]) for a in alerts) == sorted(
            [(qty.id, "10"), (amount.id, "0.10")])
        assert all(a["invoice_request_id"] for a in alerts if a["measure"] == "amount")
    assert await _alerts(admin_conn, tenant, elsewhere.id) == []
    ids = {a["alert_id"] for sub in subs for a in await _alerts(admin_conn, tenant, sub.id)}
    assert len(ids) == 4  # one per (threshold, subscription, period)
    assert await admin_conn.fetchval("select count(*) from progressive_invoices where threshold_id = $1",
                                     uuid.UUID(amount.id)) == 2
    listed = await stub.ListThresholds(pb.ListThresholdsRequest(plan_id=plan.id), metadata=tenant.md)
    assert [t.id for t in listed.thresholds] == [qty.id, amount.id]
    own = await stub.ListThresholds(pb.ListThresholdsRequest(subscription_id=subs[0].id), metadata=tenant.md)
    assert list(own.thresholds) == []


async def test_plan_scope_bad_paths(stub, tenant):
    plan = await _plan(stub, tenant)
    sub = await _sub(stub, tenant, plan, datetime.now(UTC) - timedelta(hours=1))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.CreateThreshold(pb.CreateThresholdRequest(request_id=rid(), subscription_id=sub.id,
                                                             plan_id=plan.id, metric_code="calls", value="1"),
                                   metadata=tenant.md)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "plan_id" in _violations(info.value)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.CreateThreshold(pb.CreateThresholdRequest(request_id=rid(), plan_id=str(uuid.uuid4()),
                                                             metric_code="calls", value="1"), metadata=tenant.md)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND and "plan" in info.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.ListThresholds(pb.ListThresholdsRequest(subscription_id=sub.id, plan_id=plan.id),
                                  metadata=tenant.md)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "plan_id" in _violations(info.value)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.ListThresholds(pb.ListThresholdsRequest(plan_id=str(uuid.uuid4())), metadata=tenant.md)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
