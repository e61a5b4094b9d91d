"""Settings reach the gRPC path through the composition root (billing/bootstrap.py), per
process: BILLING_USAGE_MAX_AGE_DAYS and BILLING_USAGE_MAX_FUTURE_SKEW_S change what
RecordUsage accepts (as they change what the usage consumer accepts), BILLING_RUN_SHARDS
the runs RunBilling requests."""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import grpc
import pytest

from billing.config import Settings
from billing.devstack import free_port
from billing.runtime import Service
from billing.v1 import billing_pb2 as pb
from billing.v1 import billing_pb2_grpc
from tests.integration.test_subscriptions_api import rid, ts
from tests.integration.test_usage_api import record
from tests.integration.test_usage_ingest import _setup


@pytest.fixture
async def strict_stub(migrated, monkeypatch):
    """A second api process whose limits are set through the environment."""
    monkeypatch.setenv("BILLING_USAGE_MAX_AGE_DAYS", "1")
    monkeypatch.setenv("BILLING_USAGE_MAX_FUTURE_SKEW_S", "10")
    fields = migrated.model_dump(exclude={"usage_max_age_days", "usage_max_future_skew_s", "http_port"})
    settings = Settings(**fields, http_port=free_port())
    assert (settings.usage_max_age_days, settings.usage_max_future_skew_s) == (1, 10)
    svc = Service(settings, roles=("api",))
    await svc.start()
    try:
        async with grpc.aio.insecure_channel(svc.grpc.address) as channel:
            yield billing_pb2_grpc.BillingServiceStub(channel)
    finally:
        await svc.stop()


async def test_record_usage_applies_the_configured_limits(stub, strict_stub, tenant):
    now = datetime.now(timezone.utc)
    _, sub = await _setup(stub, tenant, start_at=ts(now - timedelta(days=3)))
    two_days_ago, a_minute_ahead = now - timedelta(days=2), now + timedelta(seconds=60)

    # The defaults (35 days, 300 s) take both events ...
    assert not (await record(stub, tenant, sub, at=two_days_ago)).duplicate
    assert not (await record(stub, tenant, sub, at=a_minute_ahead)).duplicate

    # ... the process configured with 1 day and 10 s refuses both, naming the field.
    with pytest.raises(grpc.aio.AioRpcError) as old:
        await record(strict_stub, tenant, sub, at=two_days_ago)
    assert old.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "occurred_at" in old.value.details() and "older than 1 days" in old.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as ahead:
        await record(strict_stub, tenant, sub, at=a_minute_ahead)
    assert ahead.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "occurred_at" in ahead.value.details() and "ahead of now" in ahead.value.details()

    # Within its limits it records, and both processes share the store (the event is a duplicate there).
    recent = await record(strict_stub, tenant, sub, event_id="recent", at=now - timedelta(hours=1))
    assert not recent.duplicate
    assert (await record(stub, tenant, sub, event_id="recent", at=now - timedelta(hours=1))).duplicate


async def test_run_shards_come_from_the_settings_of_each_process(migrated, monkeypatch, stub, tenant, admin_conn):
    """BILLING_RUN_SHARDS reaches RunBilling through the composition root, per process: a
    second process configured with 3 shards leaves this session's default (1) alone."""
    monkeypatch.setenv("BILLING_RUN_SHARDS", "3")
    settings = Settings(**migrated.model_dump(exclude={"run_shards", "http_port"}), http_port=free_port())
    assert settings.run_shards == 3
    svc = Service(settings, roles=("api",))
    await svc.start()
    try:
        async with grpc.aio.insecure_channel(svc.grpc.address) as channel:
            sharded = (await billing_pb2_grpc.BillingServiceStub(channel).RunBilling(
                pb.RunBillingRequest(request_id=rid()), metadata=tenant.md)).run
    finally:
        await svc.stop()
    default = (await stub.RunBilling(pb.RunBillingRequest(request_id=rid()), metadata=tenant.md)).run
    shards = "select shard_count from billing_runs where id = $1"
    assert await admin_conn.fetchval(shards, uuid.UUID(sharded.id)) == 3
    assert await admin_conn.fetchval(shards, uuid.UUID(default.id)) == 1
