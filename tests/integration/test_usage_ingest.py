"""Usage ingestion against real PostgreSQL: dedup, totals per aggregation, periods, late events, rejections."""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import asyncpg
import pytest

from billing.services.usage import PlanCache, UsageEvent, UsageLimits, ingest, to_us
from billing.store.db import init_connection
from billing.v1 import billing_pb2 as pb
from tests.integration.test_plans_api import plan_request
from tests.integration.test_subscriptions_api import rid


@pytest.fixture
async def app_conn(migrated):
    conn = await asyncpg.connect(migrated.worker_database_url)
    await init_connection(conn)
    yield conn
    await conn.close()


async def _setup(stub, tenant, **sub_kw):
    req = plan_request(usage_charges=[
        pb.UsageCharge(metric_code="calls", aggregation=pb.AGGREGATION_SUM, pricing_model=pb.PRICING_MODEL_PER_UNIT,
                       unit_price="0.01"),
        pb.UsageCharge(metric_code="seats", aggregation=pb.AGGREGATION_UNIQUE_COUNT,
                       pricing_model=pb.PRICING_MODEL_PER_UNIT, unit_price="5", unique_property="user"),
    ], trial_days=0)
    plan = (await stub.CreatePlan(req, metadata=tenant.md)).plan
    sub = (await stub.CreateSubscription(pb.CreateSubscriptionRequest(
        request_id=rid(), customer_id="c", plan_id=plan.id, activate=True, **sub_kw), metadata=tenant.md)).subscription
    return plan, sub


def ev(tenant, sub, q="1", metric="calls", at=None, event_id=None, props=None) -> UsageEvent:
    at = at or datetime.now(timezone.utc)
    return UsageEvent(event_id or str(uuid.uuid4()), tenant.id, sub.id, metric, q, to_us(at), props)


async def _ingest(conn, events, now=None):
    async with conn.transaction():
        return await ingest(conn, events, now_us=to_us(now or datetime.now(timezone.utc)), limits=UsageLimits(),
                            plans=PlanCache())


async def test_totals_and_dedup_within_and_across_batches(stub, tenant, app_conn, admin_conn):
    _, sub = await _setup(stub, tenant)
    base = sub.start_at.ToDatetime(timezone.utc)
    now = base + timedelta(seconds=10)
    events = [ev(tenant, sub, q, at=base + timedelta(seconds=i)) for i, q in enumerate(["1.5", "2", "0.25", "7"])]
    batch = events + [events[1]]  # a duplicate inside the batch
    r = await _ingest(app_conn, batch, now=now)
    assert (r.received, r.inserted, r.duplicates, r.rejected) == (5, 4, 1, [])
    r2 = await _ingest(app_conn, events[:2], now=now)  # replayed later
    assert (r2.inserted, r2.duplicates) == (0, 2)
    row = await admin_conn.fetchrow("select * from usage_totals where subscription_id = $1", uuid.UUID(sub.id))
    assert row["quantity_sum"] == Decimal("10.75") and row["event_count"] == 4
    assert row["quantity_max"] == Decimal("7") and row["latest_quantity"] == Decimal("7")
    assert row["period_start"] == sub.current_period_start.ToDatetime(timezone.utc)
    assert await admin_conn.fetchval("select count(*) from usage_events where subscription_id = $1",
                                     uuid.UUID(sub.id)) == 4


async def test_latest_is_by_occurrence_time_not_arrival(stub, tenant, app_conn, admin_conn):
    _, sub = await _setup(stub, tenant)
    start = sub.start_at.ToDatetime(timezone.utc)
    now = start + timedelta(seconds=60)
    await _ingest(app_conn, [ev(tenant, sub, "5", at=start + timedelta(seconds=50))], now=now)
    await _ingest(app_conn, [ev(tenant, sub, "9", at=start + timedelta(seconds=20))], now=now)  # older, arrives later
    row = await admin_conn.fetchrow("select * from usage_totals where subscription_id = $1", uuid.UUID(sub.id))
    assert row["latest_quantity"] == Decimal("5") and row["quantity_max"] == Decimal("9")


async def test_period_boundary_event_at_end_belongs_to_next_period(stub, tenant, app_conn, admin_conn):
    _, sub = await _setup(stub, tenant)
    end = sub.current_period_end.ToDatetime(timezone.utc)
    start = sub.current_period_start.ToDatetime(timezone.utc)
    just_before = end - timedelta(microseconds=1)
    r = await _ingest(app_conn, [ev(tenant, sub, "1", at=just_before), ev(tenant, sub, "2", at=end)],
                      now=end + timedelta(seconds=1))
    assert r.inserted == 2 and r.late == 0
    rows = await admin_conn.fetch("select period_start, period_end, quantity_sum from usage_totals "
                                  "where subscription_id = $1 order by period_start", uuid.UUID(sub.id))
    assert [(x["period_start"], x["quantity_sum"]) for x in rows] == [(start, Decimal("1")), (end, Decimal("2"))]
    assert rows[1]["period_end"] > end


async def test_event_before_current_period_is_late_with_its_original_period(stub, tenant, app_conn, admin_conn):
    past_start = datetime.now(timezone.utc) - timedelta(days=33)
    _, sub = await _setup(stub, tenant, start_at=_ts(past_start))
    # Simulate a billing run having closed the first period: advance the current period.
    first_end = sub.current_period_end.ToDatetime(timezone.utc)
    second_end = first_end + timedelta(days=30)
    await admin_conn.execute("update subscriptions set current_period_start = $2, current_period_end = $3 "
                             "where id = $1", uuid.UUID(sub.id), first_end, second_end)
    late_at = past_start + timedelta(days=3)
    r = await _ingest(app_conn, [ev(tenant, sub, "4", at=late_at)])
    assert r.late == 1
    row = await admin_conn.fetchrow("select late, period_start, period_end from usage_events where subscription_id = $1",
                                    uuid.UUID(sub.id))
    assert row["late"] and row["period_start"] == past_start.replace(microsecond=past_start.microsecond)
    assert row["period_end"] == first_end


def _ts(dt):
    from google.protobuf.timestamp_pb2 import Timestamp
    t = Timestamp()
    t.FromDatetime(dt)
    return t


@pytest.mark.parametrize("make, reason", [
    (lambda t, s: ev(t, s, "abc"), "invalid_quantity"),
    (lambda t, s: ev(t, s, "-1"), "negative_quantity"),
    (lambda t, s: ev(t, s, "1e3"), "invalid_quantity"),
    (lambda t, s: ev(t, s, "1", metric="nope"), "unknown_metric"),
    (lambda t, s: ev(t, s, "1", at=datetime.now(timezone.utc) + timedelta(hours=1)), "too_far_in_future"),
    (lambda t, s: ev(t, s, "1", at=datetime.now(timezone.utc) - timedelta(days=400)), "too_old"),
    (lambda t, s: UsageEvent("e", t.id, str(uuid.uuid4()), "calls", "1", to_us(datetime.now(timezone.utc))),
     "unknown_subscription"),
    (lambda t, s: UsageEvent("e", t.id, "not-a-uuid", "calls", "1", to_us(datetime.now(timezone.utc))),
     "unknown_subscription"),
    (lambda t, s: UsageEvent("e", str(uuid.uuid4()), s.id, "calls", "1", to_us(datetime.now(timezone.utc))),
     "unknown_tenant"),
    (lambda t, s: UsageEvent("e", "zzz", s.id, "calls", "1", to_us(datetime.now(timezone.utc))), "unknown_tenant"),
    (lambda t, s: ev(t, s, "1", event_id="x" * 300), "invalid_event_id"),
    (lambda t, s: ev(t, s, "1", event_id="nul\x00inside"), "invalid_event_id"),
    (lambda t, s: ev(t, s, "1", props={"k": "nul\x00"}), "invalid_properties"),
])
async def test_rejections_and_good_event_after_bad_still_counts(stub, tenant, app_conn, admin_conn, make, reason):
    _, sub = await _setup(stub, tenant)
    good = ev(tenant, sub, "3", at=datetime.now(timezone.utc))
    r = await _ingest(app_conn, [make(tenant, sub), good], now=datetime.now(timezone.utc) + timedelta(seconds=1))
    assert [x.reason for x in r.rejected] == [reason] and r.rejected[0].index == 0 and r.rejected[0].detail
    assert r.inserted == 1
    assert await admin_conn.fetchval("select quantity_sum from usage_totals where subscription_id = $1",
                                     uuid.UUID(sub.id)) == Decimal("3")


async def test_canceled_subscription_rejects_later_events(stub, tenant, app_conn):
    _, sub = await _setup(stub, tenant)
    before = sub.start_at.ToDatetime(timezone.utc)
    await stub.CancelSubscription(pb.CancelSubscriptionRequest(request_id=rid(), id=sub.id,
                                                               mode=pb.CANCEL_MODE_IMMEDIATELY), metadata=tenant.md)
    after = datetime.now(timezone.utc) + timedelta(seconds=1)
    r = await _ingest(app_conn, [ev(tenant, sub, "1", at=before), ev(tenant, sub, "1", at=after)],
                      now=after)
    assert r.inserted == 1 and [x.reason for x in r.rejected] == ["subscription_canceled"]


async def test_tenant_cannot_write_usage_to_another_tenants_subscription(stub, new_tenant, app_conn, admin_conn):
    a, b = await new_tenant(), await new_tenant()
    _, sub_b = await _setup(stub, b)
    r = await _ingest(app_conn, [ev(a, sub_b, "1")], now=datetime.now(timezone.utc) + timedelta(seconds=1))
    assert [x.reason for x in r.rejected] == ["unknown_subscription"]
    assert await admin_conn.fetchval("select count(*) from usage_events where subscription_id = $1",
                                     uuid.UUID(sub_b.id)) == 0
