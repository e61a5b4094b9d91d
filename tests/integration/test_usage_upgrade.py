"""Upgrading a populated database to partitioned usage (migration 032): every raw event,
total, billed period and late-usage record is there afterwards, duplicates of moved events
are still refused, and billing goes on, late usage of a period billed before the upgrade
included (docs/operations.md, "Upgrading to partitioned usage")."""
from __future__ import annotations

import shutil
from datetime import datetime, timedelta, timezone

import asyncpg
import grpc

from billing.devstack.stack import free_port
from billing.runtime import Service
from billing.services.tenants import create_tenant
from billing.store import usage as usage_store
from billing.store.migrations import migrate
from tests.conftest import Tenant
from billing.v1 import billing_pb2 as pb
from tests.integration.test_subscriptions_api import rid, ts
from tests.integration.test_billing_scale import _invoices, _run, _sub, _usage, _weekly_plan
from tests.integration.test_migrations import fresh_database  # noqa: F401 - a fixture

# The usage batch's statement before migration 032 (its dedup was usage_events' primary key):
# what a database at 029 (the last migration before it) was written by.
_OLD_DEDUP = """
with input as (
    select t.event_id, t.subscription_id, t.metric_code, t.quantity::numeric as quantity,
           timestamptz 'epoch' + t.occurred_us * interval '1 microsecond' as occurred_at,
           timestamptz 'epoch' + t.start_us * interval '1 microsecond' as period_start,
           timestamptz 'epoch' + t.end_us * interval '1 microsecond' as period_end,
           t.late, t.properties::jsonb as properties
      from usage_staging t
), new as (
    insert into usage_events (tenant_id, event_id, subscription_id, metric_code, quantity, occurred_at,
                              period_start, period_end, late, properties)
    select $1, event_id, subscription_id, metric_code, quantity, occurred_at, period_start, period_end, late,
           properties
      from input
    on conflict (tenant_id, event_id) do nothing
    returning event_id, subscription_id, metric_code, quantity, occurred_at, period_start, period_end, late
), folded as ("""


def _old(sql: str) -> str:
    """The old dedup, then today's fold (which reads the new rows sorted once: `sorted`)."""
    return _OLD_DEDUP + sql.split("), folded as (", 1)[1].replace("from sorted", "from new")


_TABLES = {
    "usage_events": "tenant_id, event_id",
    "usage_totals": "tenant_id, subscription_id, metric_code, period_start",
    "billed_periods": "tenant_id, subscription_id, period_start",
    "late_usage_billed": "tenant_id, event_id",
    "late_usage_pending": "tenant_id, subscription_id",
    "outbox": "id",
    "audit_events": "id",
}


async def _snapshot(conn) -> dict[str, list[dict]]:
    return {t: [dict(r) for r in await conn.fetch(f"select * from {t} order by {key}")] for t, key in _TABLES.items()}


async def _serving(settings):
    svc = Service(settings.model_copy(update={"http_port": free_port()}), roles=("api",))
    await svc.start()
    return svc


async def test_a_populated_database_keeps_every_row_and_bills_on_after_032(migrated, fresh_database, tmp_path,  # noqa: F811
                                                                       monkeypatch):
    url = await fresh_database("usage_upgrade")
    before_dir = tmp_path / "up_to_029"
    before_dir.mkdir()
    for f in migrated.migrations_dir.glob("*.sql"):
        if int(f.name[:3]) < 32:
            shutil.copy(f, before_dir / f.name)
    await migrate(url, before_dir)
    owner = await asyncpg.connect(url)
    new = await create_tenant(owner, "upgrade")
    tenant = Tenant(str(new.tenant_id), new.api_key, str(new.api_key_id))
    tid = new.tenant_id
    urls = {"database_url": url.replace("billing_owner:billing_owner", "billing_app:billing_app"),
            "worker_database_url": url.replace("billing_owner:billing_owner", "billing_worker:billing_worker"),
            "admin_database_url": url}

    # Before: the previous version (at 029) records usage, bills P1, then late usage of P1
    # (billed with P2), then one more late event that no run has billed yet.
    monkeypatch.setattr(usage_store, "_INSERT_BATCH", _old(usage_store._INSERT_BATCH))
    monkeypatch.setattr(usage_store, "_INSERT_BATCH_IDS", _old(usage_store._INSERT_BATCH_IDS))
    monkeypatch.setattr(usage_store, "_MERGE_BATCH", _old(usage_store._MERGE_BATCH))
    monkeypatch.setattr(usage_store, "_MERGE_BATCH_IDS", _old(usage_store._MERGE_BATCH_IDS))
    svc = await _serving(migrated.model_copy(update={**urls, "migrations_dir": before_dir}))
    now = datetime.now(timezone.utc)
    try:
        async with grpc.aio.insecure_channel(svc.grpc.address) as channel:
            from billing.v1 import billing_pb2_grpc

            stub = billing_pb2_grpc.BillingServiceStub(channel)
            plan = await _weekly_plan(stub, tenant)
            sub = await _sub(stub, tenant, plan, now - timedelta(days=23))  # P1 -23d, P2 -16d, P3 -9d, P4 -2d
            p1 = sub.current_period_start.ToDatetime(timezone.utc)
            week = timedelta(days=7)
            for i in range(30):
                await _usage(stub, tenant, sub.id, "10", p1 + timedelta(hours=i), event_id=f"p1-{i}")
            await _run(svc, tenant, p1 + week + timedelta(hours=1))
            for i in range(3):
                assert not (await _usage(stub, tenant, sub.id, "100", p1 + timedelta(days=2, hours=i),
                                         event_id=f"late-{i}")).duplicate
            await _usage(stub, tenant, sub.id, "5", p1 + week + timedelta(days=1), event_id="p2-0")
            await _run(svc, tenant, p1 + 2 * week + timedelta(hours=1))
            await _usage(stub, tenant, sub.id, "1000", p1 + timedelta(days=3), event_id="late-pending")
            await _usage(stub, tenant, sub.id, "7", p1 + 2 * week + timedelta(days=1), event_id="p3-0")
    finally:
        await svc.stop()
    before = await _snapshot(owner)
    assert len(before["usage_events"]) == 36 and len(before["late_usage_billed"]) == 3
    assert len(before["billed_periods"]) == 2 and len(before["late_usage_pending"]) == 1
    monkeypatch.undo()

    await migrate(url, migrated.migrations_dir)
    try:
        after = await _snapshot(owner)
        assert after == before  # every row, column for column
        assert await owner.fetchval("select count(*) from usage_event_ids") == 36
        assert await owner.fetchval("select count(*) from usage_events_default") == 0
        assert await owner.fetchval("select to_regclass('usage_events_unpartitioned')") is None
        assert await owner.fetchval("select count(*) from outbox_default") == 0
        assert await owner.fetchval("select count(*) from audit_events_default") == 0
    finally:
        await owner.close()

    # After: the service of this version, on the upgraded database.
    svc = await _serving(migrated.model_copy(update=urls))
    try:
        async with grpc.aio.insecure_channel(svc.grpc.address) as channel:
            from billing.v1 import billing_pb2_grpc

            stub = billing_pb2_grpc.BillingServiceStub(channel)
            # A moved event sent again, with another time (another period): still a duplicate.
            again = await stub.RecordUsage(pb.RecordUsageRequest(
                request_id=rid(), event_id="p1-0", subscription_id=sub.id, metric_code="api_calls", quantity="10",
                occurred_at=ts(p1 + 2 * week + timedelta(days=2))), metadata=tenant.md)
            assert again.duplicate
            assert not (await _usage(stub, tenant, sub.id, "1", p1 + timedelta(days=4), event_id="late-new")).duplicate
            await _run(svc, tenant, p1 + 3 * week + timedelta(hours=1))  # bills P3, with P1's late usage
    finally:
        await svc.stop()
    owner = await asyncpg.connect(url)
    try:
        invoices = await _invoices(owner, tid, sub.id)
    finally:
        await owner.close()
    assert len(invoices) == 3
    lines = {ln["kind"]: ln for ln in invoices[2]["lines"]}
    assert lines["usage"]["quantity"] == "7"
    # P1 had 300 + 300 (billed late before the upgrade); now 1000 (stored before) + 1 (after).
    assert lines["late_usage"]["quantity"] == "1001"
    assert lines["late_usage"]["original_period_start_us"] == int(p1.timestamp() * 1_000_000)
