"""Usage thresholds through Kafka (docs/alerts.md): usage on the usage topic, with
duplicates, a late event and a replay of everything, crosses thresholds; the alerts on
billing.usage-alerts.v1 are exactly one per (threshold, period), none for a threshold not
crossed. And the thresholds' RPCs refuse bad input naming the field."""
from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from datetime import datetime, timedelta, timezone

import grpc
import pytest

from billing import codec
from billing.domain.periods import to_us
from billing.v1 import billing_pb2 as pb
from tests.integration.test_usage_consumer import avro
from tests.integration.test_usage_ingest import _setup, _ts
from tests.kafka_helpers import TopicReader, produce, running_roles, wait_until

UTC = timezone.utc


@pytest.fixture(scope="module")
async def roles(migrated):
    async with running_roles(migrated, ("usage", "relay")) as svc:
        yield svc


async def _threshold(stub, tenant, sub_id, value, **kw):
    return (await stub.CreateThreshold(pb.CreateThresholdRequest(
        request_id=str(uuid.uuid4()), subscription_id=sub_id, metric_code="calls", value=value, **kw),
        metadata=tenant.md)).threshold


async def test_exactly_one_alert_per_threshold_and_period(roles, migrated, stub, tenant, admin_conn):
    past_start = datetime.now(UTC) - timedelta(days=33)
    _, sub = await _setup(stub, tenant, start_at=_ts(past_start))
    # The first period is over (as a billing run would have left it): usage in it is late.
    first_end = sub.current_period_end.ToDatetime(UTC)
    await admin_conn.execute("update subscriptions set current_period_start = $2, current_period_end = $3 "
                             "where id = $1", uuid.UUID(sub.id), first_end, first_end + timedelta(days=30))
    t10 = await _threshold(stub, tenant, sub.id, "10")
    t20 = await _threshold(stub, tenant, sub.id, "20")
    never = await _threshold(stub, tenant, sub.id, "1000")
    once = await _threshold(stub, tenant, sub.id, "5", once=True)
    gone = await _threshold(stub, tenant, sub.id, "1")
    await stub.DeleteThreshold(pb.DeleteThresholdRequest(request_id=str(uuid.uuid4()), id=gone.id),
                               metadata=tenant.md)

    now = to_us(datetime.now(UTC)) - 60_000_000
    late = to_us(past_start + timedelta(days=2))

    def ev(n, q, at):
        return (sub.id, avro(tenant.id, sub.id, q, at, event_id=f"{sub.id}-{n}"))
    # Current period: 6 (sent twice), 5 -> 11 crosses 10 (and 5, once); 9 -> 20 crosses 20.
    # The late event (25, first period) crosses 10 and 20 of ITS period; `once` stays crossed.
    first = [ev(1, "6", now), ev(1, "6", now), ev(2, "5", now + 1), ev(3, "25", late), ev(4, "9", now + 2),
             ev(2, "5", now + 1)]
    await asyncio.to_thread(produce, migrated, migrated.topics.usage, first)

    async def all_counted():
        return await admin_conn.fetchval("select sum(event_count) = 4 from usage_totals where subscription_id = $1",
                                         uuid.UUID(sub.id))
    await wait_until(all_counted)
    await asyncio.to_thread(produce, migrated, migrated.topics.usage, first)  # the whole stream replayed
    # Crossed by the marker event only: above both periods' totals (20 and 25), so the replay,
    # which may be consumed after the marker is created, cannot cross it.
    marker = await _threshold(stub, tenant, sub.id, "26")
    await asyncio.to_thread(produce, migrated, migrated.topics.usage, [ev(5, "6", now + 3)])

    reader = TopicReader(migrated, migrated.topics.usage_alerts)
    try:
        msgs = await asyncio.to_thread(reader.until, lambda ms: any(
            codec.decode(codec.Schema.USAGE_ALERT, m.value())["threshold_id"] == marker.id for m in ms))
        await asyncio.sleep(2)  # anything the replay would have emitted is out by now too
        msgs = await asyncio.to_thread(reader.until, lambda ms: True, 1)
    finally:
        reader.close()
    alerts = [codec.decode(codec.Schema.USAGE_ALERT, m.value()) for m in msgs if m.key() == sub.id.encode()]
    seen = Counter((a["threshold_id"], a["period_start_us"]) for a in alerts)
    cur, old = to_us(first_end), to_us(past_start)
    # The one-off threshold fires once, in whichever period crossed it first (one batch or two).
    [once_period] = [k[1] for k in seen if k[0] == once.id]
    assert once_period in (cur, old)
    assert set(seen) == {(t10.id, cur), (t20.id, cur), (t10.id, old), (t20.id, old), (once.id, once_period),
                         (marker.id, cur)}
    assert set(seen.values()) == {1}, f"duplicate alerts: {seen}"
    assert len(seen) == 6 and never.id not in {a["threshold_id"] for a in alerts}
    assert gone.id not in {a["threshold_id"] for a in alerts}
    by = {(a["threshold_id"], a["period_start_us"]): a for a in alerts}
    assert by[(t10.id, old)]["quantity"] == "25" and by[(t20.id, cur)]["quantity"] == "20"
    assert all(a["type"] == "usage.threshold_crossed" and a["tenant_id"] == tenant.id for a in alerts)
    assert await admin_conn.fetchval(
        "select count(*) from usage_threshold_crossings where threshold_id = $1", uuid.UUID(once.id)) == 1


async def test_record_usage_batch_crosses_in_its_transaction(stub, tenant, admin_conn):
    _, sub = await _setup(stub, tenant)
    t = await _threshold(stub, tenant, sub.id, "3")
    at = sub.start_at.ToDatetime(UTC) + timedelta(seconds=1)

    def batch(request_id):
        req = pb.RecordUsageBatchRequest(request_id=request_id)
        for i in range(4):
            e = req.events.add(event_id=f"{sub.id}-b{i}", subscription_id=sub.id, metric_code="calls", quantity="1")
            e.occurred_at.FromDatetime(at)
        return req
    await stub.RecordUsageBatch(batch("b-1"), metadata=tenant.md)
    await stub.RecordUsageBatch(batch("b-2"), metadata=tenant.md)  # duplicates under a new request id
    rows = await admin_conn.fetch("select payload from outbox where tenant_id = $1 and stream = 'usage_alerts'",
                                  uuid.UUID(tenant.id))
    mine = [codec.decode(codec.Schema.USAGE_ALERT, r["payload"]) for r in rows]
    mine = [a for a in mine if a["threshold_id"] == t.id]
    assert len(mine) == 1 and mine[0]["quantity"] == "4" and mine[0]["threshold_value"] == "3"


async def test_create_list_delete_are_idempotent(stub, tenant, admin_conn):
    _, sub = await _setup(stub, tenant)
    req = pb.CreateThresholdRequest(request_id=str(uuid.uuid4()), subscription_id=sub.id, metric_code="calls",
                                    value="10.5")
    a = (await stub.CreateThreshold(req, metadata=tenant.md)).threshold
    b = (await stub.CreateThreshold(req, metadata=tenant.md)).threshold
    assert a == b and a.value == "10.5" and a.recurring and a.aggregation == "sum"
    listed = (await stub.ListThresholds(pb.ListThresholdsRequest(subscription_id=sub.id), metadata=tenant.md))
    assert [t.id for t in listed.thresholds] == [a.id]
    d1 = (await stub.DeleteThreshold(pb.DeleteThresholdRequest(request_id=str(uuid.uuid4()), id=a.id),
                                     metadata=tenant.md)).threshold
    d2 = (await stub.DeleteThreshold(pb.DeleteThresholdRequest(request_id=str(uuid.uuid4()), id=a.id),
                                     metadata=tenant.md)).threshold
    assert d1 == d2 and d1.HasField("deleted_at")
    listed = (await stub.ListThresholds(pb.ListThresholdsRequest(subscription_id=sub.id), metadata=tenant.md))
    assert list(listed.thresholds) == []
    actions = await admin_conn.fetch("select action from audit_events where entity_type = 'threshold' "
                                     "and entity_id = $1 order by id", uuid.UUID(a.id))
    assert [r["action"] for r in actions] == ["threshold.created", "threshold.deleted"]


def _violations(err) -> dict[str, str]:
    from google.rpc import error_details_pb2, status_pb2

    md = dict(err.trailing_metadata() or ())
    status = status_pb2.Status.FromString(md["grpc-status-details-bin"])
    out = {}
    for d in status.details:
        if d.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            br = error_details_pb2.BadRequest()
            d.Unpack(br)
            out.update({v.field: v.description for v in br.field_violations})
    return out


@pytest.mark.parametrize("field, kw, code", [
    ("value", {"value": "-1"}, grpc.StatusCode.INVALID_ARGUMENT),
    ("value", {"value": "ten"}, grpc.StatusCode.INVALID_ARGUMENT),
    ("metric_code", {"metric_code": "nope"}, grpc.StatusCode.INVALID_ARGUMENT),
    ("metric_code", {"metric_code": "seats"}, grpc.StatusCode.INVALID_ARGUMENT),  # unique_count: not supported
    ("subscription_id", {"subscription_id": "not-a-uuid"}, grpc.StatusCode.INVALID_ARGUMENT),
    (None, {"subscription_id": "00000000-0000-4000-8000-000000000000"}, grpc.StatusCode.NOT_FOUND),
])
async def test_bad_input_names_the_field(stub, tenant, field, kw, code):
    _, sub = await _setup(stub, tenant)
    fields = {"request_id": str(uuid.uuid4()), "subscription_id": sub.id, "metric_code": "calls", "value": "10",
              **kw}
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.CreateThreshold(pb.CreateThresholdRequest(**fields), metadata=tenant.md)
    assert info.value.code() == code
    if field:
        assert field in _violations(info.value)
    else:
        assert "subscription" in info.value.details()


async def test_deleting_an_unknown_threshold_is_not_found(stub, tenant):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.DeleteThreshold(pb.DeleteThresholdRequest(request_id=str(uuid.uuid4()), id=str(uuid.uuid4())),
                                   metadata=tenant.md)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert "threshold" in info.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.DeleteThreshold(pb.DeleteThresholdRequest(request_id="", id="not-a-uuid"), metadata=tenant.md)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert {"request_id", "id"} <= set(_violations(info.value))


async def test_deleting_a_test_clock_removes_its_subscriptions_thresholds(stub, tenant, admin_conn):
    from tests.integration.test_subscriptions_api import rid
    from tests.integration.test_test_clocks import APRIL, clock_sub, make_clock, monthly_plan

    clock = await make_clock(stub, tenant, APRIL, name="thresholds")
    sub = await clock_sub(stub, tenant, await monthly_plan(stub, tenant, "30.00"), clock.id)
    await stub.CreateThreshold(pb.CreateThresholdRequest(request_id=rid(), subscription_id=sub.id,
                                                         metric_code="api_calls", value="10"), metadata=tenant.md)
    count = "select count(*) from usage_thresholds where tenant_id = $1 and subscription_id = $2"
    assert await admin_conn.fetchval(count, uuid.UUID(tenant.id), uuid.UUID(sub.id)) == 1
    deleted = await stub.DeleteTestClock(pb.DeleteTestClockRequest(request_id=rid(), id=clock.id),
                                         metadata=tenant.md)
    assert deleted.deleted_subscriptions == 1
    assert await admin_conn.fetchval(count, uuid.UUID(tenant.id), uuid.UUID(sub.id)) == 0
