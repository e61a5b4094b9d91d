"""RecordUsage and GetUsage over gRPC."""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import grpc
import pytest

from billing.v1 import billing_pb2 as pb
from tests.integration.test_usage_ingest import _setup
from tests.integration.test_subscriptions_api import rid, ts


async def record(stub, tenant, sub, quantity="1", metric="calls", event_id="", props=None, at=None):
    req = pb.RecordUsageRequest(request_id=rid(), event_id=event_id, subscription_id=sub.id, metric_code=metric,
                                quantity=quantity, properties=props or {})
    req.occurred_at.CopyFrom(ts(at or datetime.now(timezone.utc)))
    return await stub.RecordUsage(req, metadata=tenant.md)


async def test_record_is_visible_at_once_with_preview_and_series(stub, tenant):
    _, sub = await _setup(stub, tenant)
    start = sub.start_at.ToDatetime(timezone.utc)
    first = await record(stub, tenant, sub, "1234", event_id="e-1", at=start + timedelta(seconds=1))
    assert not first.duplicate and first.event_id == "e-1"
    assert first.period_start == sub.current_period_start and first.period_end == sub.current_period_end
    again = await record(stub, tenant, sub, "1234", event_id="e-1", at=start + timedelta(seconds=1))
    assert again.duplicate
    for user in ("ann", "bob", "ann"):
        await record(stub, tenant, sub, "1", metric="seats", props={"user": user}, at=start + timedelta(seconds=2))
    usage = await stub.GetUsage(pb.GetUsageRequest(subscription_id=sub.id, series=pb.SERIES_GRANULARITY_HOUR),
                                metadata=tenant.md)
    by_metric = {m.metric_code: m for m in usage.metrics}
    # 1234 calls at 0.01 = 12.34; 2 unique seats at 5 = 10.00
    assert by_metric["calls"].quantity == "1234" and by_metric["calls"].amount == "12.34"
    assert by_metric["seats"].quantity == "2" and by_metric["seats"].amount == "10.00"
    assert usage.total_amount == "22.34" and usage.currency == "EUR"
    assert sum(int(p.quantity) for p in by_metric["calls"].series) == 1234
    assert usage.period_start == sub.current_period_start


async def test_get_usage_of_a_period_without_usage(stub, tenant):
    _, sub = await _setup(stub, tenant)
    usage = await stub.GetUsage(pb.GetUsageRequest(subscription_id=sub.id, period_start=sub.current_period_end),
                                metadata=tenant.md)
    assert usage.total_amount == "0.00" and usage.period_start == sub.current_period_end
    assert usage.period_end.ToDatetime() > usage.period_start.ToDatetime()


@pytest.mark.parametrize("overrides, code, field", [
    ({"quantity": "-1"}, grpc.StatusCode.INVALID_ARGUMENT, "quantity"),
    ({"quantity": "ten"}, grpc.StatusCode.INVALID_ARGUMENT, "quantity"),
    ({"quantity": "1" * 30}, grpc.StatusCode.INVALID_ARGUMENT, "quantity"),
    ({"metric_code": "nope"}, grpc.StatusCode.INVALID_ARGUMENT, "metric_code"),
    ({"subscription_id": str(uuid.uuid4())}, grpc.StatusCode.NOT_FOUND, None),
    ({"subscription_id": "garbage"}, grpc.StatusCode.NOT_FOUND, None),
    ({"request_id": ""}, grpc.StatusCode.INVALID_ARGUMENT, "request_id"),
    ({"event_id": "x" * 300}, grpc.StatusCode.INVALID_ARGUMENT, "event_id"),
])
async def test_bad_record_usage(stub, tenant, admin_conn, overrides, code, field):
    _, sub = await _setup(stub, tenant)
    fields = dict(request_id=rid(), subscription_id=sub.id, metric_code="calls", quantity="1",
                  occurred_at=ts(datetime.now(timezone.utc)))
    fields.update(overrides)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.RecordUsage(pb.RecordUsageRequest(**fields), metadata=tenant.md)
    assert err.value.code() == code, err.value.details()
    if field:
        assert err.value.details().startswith(field)
    assert await admin_conn.fetchval("select count(*) from usage_events where tenant_id = $1",
                                     uuid.UUID(tenant.id)) == 0


async def test_usage_is_isolated_between_tenants(stub, new_tenant):
    a, b = await new_tenant(), await new_tenant()
    _, sub_a = await _setup(stub, a)
    await record(stub, a, sub_a, "5")
    for call, req in [(stub.GetUsage, pb.GetUsageRequest(subscription_id=sub_a.id)),
                      (stub.RecordUsage, pb.RecordUsageRequest(request_id=rid(), subscription_id=sub_a.id,
                                                               metric_code="calls", quantity="1",
                                                               occurred_at=ts(datetime.now(timezone.utc))))]:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call(req, metadata=b.md)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
