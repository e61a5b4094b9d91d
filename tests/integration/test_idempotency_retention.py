"""Retention of idempotency keys (BILLING_IDEMPOTENCY_RETENTION_DAYS, `billing maintenance`,
migration 037): keys older than N days go, a batch at a time, oldest first; younger ones stay;
nothing else changes; off by default; a replay inside the window is still answered from its
key, and one after its key went is a new request (docs/api.md)."""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

from billing.config import Settings
from billing.services import maintenance
from billing.store import idempotency as keys_store
from billing.v1 import billing_pb2 as pb
from tests.integration.test_subscriptions_api import make_plan, rid

UTC = timezone.utc
_OTHER_TABLES = ("subscriptions", "outbox", "audit_events", "usage_events", "usage_totals", "billed_periods",
                 "billing_runs", "tenants", "api_keys")


def _policy(days: int) -> maintenance.RetentionPolicy:
    # drop=False: this database is shared; the usage/outbox/audit parts are off (0) here.
    return maintenance.RetentionPolicy(months=0, late_window=timedelta(days=35), drop=False, idempotency_days=days)


async def _tenant(conn) -> uuid.UUID:
    tid = uuid.uuid4()
    await conn.execute("insert into tenants (id, name) values ($1, 'idempotency-retention')", tid)
    return tid


async def _keys(conn, tid: uuid.UUID, prefix: str, created: list[datetime]) -> None:
    await conn.executemany(
        """insert into idempotency_keys (tenant_id, key, operation, request_hash, response, created_at)
           values ($1, $2, 'CreateSubscription', '\\x00', '{}', $3)""",
        [(tid, f"{prefix}-{i:03d}", at) for i, at in enumerate(created)])


async def _left(conn, tid: uuid.UUID) -> list[str]:
    return [r[0] for r in await conn.fetch("select key from idempotency_keys where tenant_id = $1 order by key", tid)]


async def _counts(conn) -> dict[str, int]:
    return {t: await conn.fetchval(f"select count(*) from {t}") for t in _OTHER_TABLES}


async def test_keys_older_than_n_days_go_younger_ones_stay_and_nothing_else_changes(admin_conn):
    now = datetime.now(UTC)
    a, b = await _tenant(admin_conn), await _tenant(admin_conn)
    await _keys(admin_conn, a, "old", [now - timedelta(days=10, minutes=i) for i in range(25)])
    await _keys(admin_conn, a, "young", [now - timedelta(days=3), now - timedelta(days=7) + timedelta(seconds=30)])
    await _keys(admin_conn, b, "old", [now - timedelta(days=8), now - timedelta(days=7, seconds=1)])
    await _keys(admin_conn, b, "young", [now - timedelta(days=6, hours=23), now])
    before = await _counts(admin_conn)

    report = await maintenance.apply_retention(admin_conn, now, _policy(7))

    assert report.idempotency_keys_deleted >= 27  # (other tests' keys are all younger)
    assert await _left(admin_conn, a) == ["young-000", "young-001"]
    assert await _left(admin_conn, b) == ["young-000", "young-001"]
    assert await _counts(admin_conn) == before
    # Again: nothing left to delete, and the young keys stay.
    assert (await maintenance.apply_retention(admin_conn, now, _policy(7))).idempotency_keys_deleted == 0
    assert await _left(admin_conn, a) == ["young-000", "young-001"]


async def test_a_batch_takes_the_oldest_keys_first_and_the_pass_repeats_until_none_is_left(admin_conn):
    now = datetime.now(UTC)
    tid = await _tenant(admin_conn)
    # Keys named in reverse of their age: key-000 is the youngest of the old ones.
    await _keys(admin_conn, tid, "key", [now - timedelta(days=30) + timedelta(minutes=i) for i in range(25)][::-1])
    assert await keys_store.forget_before(admin_conn, tid, now - timedelta(days=1), 10) == 10
    assert await _left(admin_conn, tid) == [f"key-{i:03d}" for i in range(15)]
    assert await maintenance.forget_idempotency_keys(admin_conn, now - timedelta(days=1), batch=4) >= 15
    assert await _left(admin_conn, tid) == []


async def test_off_by_default(admin_conn):
    assert Settings().idempotency_retention_days == 0
    assert maintenance.RetentionPolicy(months=0, late_window=timedelta(days=35)).idempotency_days == 0
    now = datetime.now(UTC)
    tid = await _tenant(admin_conn)
    await _keys(admin_conn, tid, "ancient", [now - timedelta(days=3650)])
    report = await maintenance.apply_retention(
        admin_conn, now, maintenance.RetentionPolicy(months=0, late_window=timedelta(days=35), drop=False))
    assert report.idempotency_keys_deleted == 0
    assert await _left(admin_conn, tid) == ["ancient-000"]


async def test_a_replay_inside_the_window_is_answered_from_its_key_and_after_it_a_new_request(stub, tenant,
                                                                                             admin_conn):
    plan = await make_plan(stub, tenant)
    req = pb.CreateSubscriptionRequest(request_id=rid(), customer_id="c-retention", plan_id=plan.id, activate=True)
    first = (await stub.CreateSubscription(req, metadata=tenant.md)).subscription
    now = datetime.now(UTC)

    await maintenance.apply_retention(admin_conn, now, _policy(1))
    assert (await stub.CreateSubscription(req, metadata=tenant.md)).subscription == first

    # The key is two days old now: the retention of one day deletes it, and the same request
    # sent again is a new one (a second subscription), with a new key.
    await admin_conn.execute(
        "update idempotency_keys set created_at = created_at - interval '2 days' where tenant_id = $1 and key = $2",
        uuid.UUID(tenant.id), req.request_id)
    await maintenance.apply_retention(admin_conn, now, _policy(1))
    assert await admin_conn.fetchval("select count(*) from idempotency_keys where tenant_id = $1 and key = $2",
                                     uuid.UUID(tenant.id), req.request_id) == 0
    again = (await stub.CreateSubscription(req, metadata=tenant.md)).subscription
    assert again.id != first.id and again.customer_id == first.customer_id
    assert await admin_conn.fetchval(
        "select created_at > $3 from idempotency_keys where tenant_id = $1 and key = $2",
        uuid.UUID(tenant.id), req.request_id, now - timedelta(minutes=5))
