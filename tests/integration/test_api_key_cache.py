"""The API key cache (billing/services/api_keys.py): keys are looked up once, and a revoked
key is refused through the real revocation paths, by the notification of migration 031 and,
for calls that reach tenant data, by the live check as each transaction opens."""
from __future__ import annotations

import asyncio
import time
import uuid

import asyncpg
import grpc
import pytest

from billing.services.tenants import hash_key, revoke_key, rotate_key
from billing.v1 import billing_pb2 as pb

# docs/api.md: a revocation's notification is in within milliseconds; this bound is
# generous for a loaded test machine.
NOTIFY_BOUND_S = 5.0


async def _wait_listening(keys) -> None:
    deadline = time.monotonic() + 10
    while not keys.active:
        assert time.monotonic() < deadline, "the key-change listener did not connect"
        await asyncio.sleep(0.05)


async def _notified(keys, before: int) -> None:
    deadline = time.monotonic() + NOTIFY_BOUND_S
    while keys.notifications == before:
        assert time.monotonic() < deadline, "no key-change notification within the bound"
        await asyncio.sleep(0.01)


async def _refused(call) -> bool:
    try:
        await call()
    except grpc.aio.AioRpcError as err:
        if err.code() == grpc.StatusCode.UNAUTHENTICATED:
            assert err.details() == "unknown or revoked API key"
            return True
        raise
    return False


async def test_a_key_is_looked_up_once_then_served_from_the_cache(service, stub, tenant):
    keys = service.grpc.keys
    await _wait_listening(keys)
    await stub.ListPlans(pb.ListPlansRequest(), metadata=tenant.md)
    lookups, hits = keys.lookups, keys.hits
    for _ in range(3):
        await stub.ListPlans(pb.ListPlansRequest(), metadata=tenant.md)
    assert (keys.lookups, keys.hits) == (lookups, hits + 3)


async def test_revoked_key_is_refused_by_the_next_call_and_forgotten(service, stub, tenant, admin_conn):
    keys = service.grpc.keys
    await _wait_listening(keys)
    await stub.ListPlans(pb.ListPlansRequest(), metadata=tenant.md)
    heard = keys.notifications
    assert await revoke_key(admin_conn, uuid.UUID(tenant.api_key_id))
    await _notified(keys, heard)
    assert hash_key(tenant.api_key) not in keys._entries
    # Refused whether the call reaches the database or is refused by its shape alone.
    assert await _refused(lambda: stub.GetPlan(pb.GetPlanRequest(id="not-a-uuid"), metadata=tenant.md))
    assert await _refused(lambda: stub.ListPlans(pb.ListPlansRequest(), metadata=tenant.md))


async def test_live_check_refuses_a_revoked_key_the_cache_never_heard_of(service, stub, tenant, admin_conn):
    """With the notification suppressed, the cached key still gets no tenant data: the
    statement that opens each transaction checks it, and the refusal evicts it."""
    keys = service.grpc.keys
    await _wait_listening(keys)
    await stub.ListPlans(pb.ListPlansRequest(), metadata=tenant.md)
    await admin_conn.execute("alter table api_keys disable trigger api_keys_changed")
    try:
        assert await revoke_key(admin_conn, uuid.UUID(tenant.api_key_id))
    finally:
        await admin_conn.execute("alter table api_keys enable trigger api_keys_changed")
    assert hash_key(tenant.api_key) in keys._entries  # not notified: still cached
    usage = pb.RecordUsageRequest(request_id=str(uuid.uuid4()), subscription_id=str(uuid.uuid4()),
                                  metric_code="calls", quantity="1")
    usage.occurred_at.GetCurrentTime()
    assert await _refused(lambda: stub.RecordUsage(usage, metadata=tenant.md))
    assert hash_key(tenant.api_key) not in keys._entries
    assert await _refused(lambda: stub.ListPlans(pb.ListPlansRequest(), metadata=tenant.md))
    count = await admin_conn.fetchval("select count(*) from idempotency_keys where tenant_id = $1",
                                      uuid.UUID(tenant.id))
    assert count == 0


async def test_rotation_with_revoke_others_refuses_the_old_key(service, stub, tenant, admin_conn):
    await _wait_listening(service.grpc.keys)
    await stub.ListPlans(pb.ListPlansRequest(), metadata=tenant.md)
    heard = service.grpc.keys.notifications
    rotated = await rotate_key(admin_conn, uuid.UUID(tenant.id), revoke_others=True)
    assert await _refused(lambda: stub.ListPlans(pb.ListPlansRequest(), metadata=tenant.md))
    await _notified(service.grpc.keys, heard)
    new_md = (("authorization", f"Bearer {rotated.api_key}"),)
    assert (await stub.ListPlans(pb.ListPlansRequest(), metadata=new_md)).plans == []


async def test_without_the_listener_nothing_is_cached(service, stub, tenant, migrated):
    """The listening connection ends (PostgreSQL restarted, say): the cache is off and every
    call asks the database until the listener is back."""
    keys = service.grpc.keys
    await _wait_listening(keys)
    await stub.ListPlans(pb.ListPlansRequest(), metadata=tenant.md)
    assert keys._entries
    app = await asyncpg.connect(migrated.database_url)  # the listener's role: it may end its own backends
    try:
        ended = await app.fetchval("select count(pg_terminate_backend(pid)) from pg_stat_activity "
                                   "where query like 'LISTEN%billing_api_keys%'")
    finally:
        await app.close()
    assert ended >= 1
    deadline = time.monotonic() + 5
    while keys.active:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    assert not keys._entries
    lookups = keys.lookups
    await stub.ListPlans(pb.ListPlansRequest(), metadata=tenant.md)
    assert keys.lookups == lookups + 1 or keys.active  # asked the database (unless already back)
    await _wait_listening(keys)
    await stub.ListPlans(pb.ListPlansRequest(), metadata=tenant.md)
    await stub.ListPlans(pb.ListPlansRequest(), metadata=tenant.md)
    assert hash_key(tenant.api_key) in keys._entries


@pytest.mark.parametrize("ttl", [0.0])
async def test_ttl_zero_turns_the_cache_off(migrated, ttl):
    from billing.api.server import GrpcServer
    from billing.bootstrap import build
    from billing.store.db import Database

    db = await Database.connect(migrated.database_url)
    try:
        server = GrpcServer(db, "127.0.0.1", 0, usage=build(migrated).usage, run_shards=1, api_key_cache_ttl_s=ttl)
        server.keys.start()
        await asyncio.sleep(0.2)
        assert not server.keys.active
        await server.keys.stop()
    finally:
        await db.close()


async def test_a_group_commit_with_a_revoked_key_answers_each_call_by_its_own_key(stub, tenant, admin_conn,
                                                                                   migrated):
    """RecordUsage calls of one tenant under two keys share a group; one key is revoked:
    the group's live check fails, each call runs alone under its own key, so only that
    key's calls are refused and only the others' usage is stored."""
    from billing.services.context import Caller
    from billing.services.tenants import issue_key
    from billing.store.db import Database
    from tests.integration.test_usage_group_commit import _calls_total, _call, _usage
    from tests.integration.test_usage_ingest import _setup

    _, sub = await _setup(stub, tenant)
    other_id, other_key = await issue_key(admin_conn, uuid.UUID(tenant.id))
    live = Caller(uuid.UUID(tenant.id), "api:live", api_key_hash=hash_key(other_key))
    revoked = Caller(uuid.UUID(tenant.id), "api:revoked", api_key_hash=hash_key(tenant.api_key))
    assert await revoke_key(admin_conn, uuid.UUID(tenant.api_key_id))
    db = await Database.connect(migrated.database_url, min_size=1, max_size=4)
    try:
        usage, group = _usage()
        results = await asyncio.gather(*(_call(usage, db, c, sub.id, event_id=f"k-{i}")
                                         for i, c in enumerate([live, revoked] * 4)))
    finally:
        await db.close()
    assert group.groups == 0  # the group failed on the revoked key
    assert all(r.duplicate is False for r in results[0::2])
    assert all(isinstance(r, asyncpg.InvalidAuthorizationSpecificationError) for r in results[1::2])
    assert await _calls_total(admin_conn, tenant) == (4, 4)
