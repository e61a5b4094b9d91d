"""Auth on every call, and tenants isolated both through gRPC and in the database itself."""
from __future__ import annotations

import uuid

import asyncpg
import grpc
import pytest

from billing.services.tenants import hash_key
from billing.store.db import set_tenant
from billing.store.tenants import key_for_hash
from billing.v1 import billing_pb2 as pb
from tests.integration.test_plans_api import plan_request


@pytest.mark.parametrize("metadata, why", [
    ((), "missing"),
    ((("authorization", "Bearer bk_not-a-real-key"),), "unknown"),
    ((("authorization", "bk_missing-bearer-word"),), "missing"),
    ((("authorization", "Bearer "),), "missing"),
    ((("authorization", "Basic dXNlcjpwYXNz"),), "missing"),
    ((("authorization", "Bearer " + "x" * 5000),), "unknown"),
])
async def test_missing_or_unknown_key_is_unauthenticated(stub, metadata, why):
    for call, req in [(stub.ListPlans, pb.ListPlansRequest()), (stub.CreatePlan, plan_request()),
                      (stub.GetBillingRun, pb.GetBillingRunRequest(id="x"))]:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call(req, metadata=metadata)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert why in err.value.details()


async def test_revoked_key_is_refused_at_once(stub, tenant, admin_conn):
    from billing.services.tenants import revoke_key

    await stub.ListPlans(pb.ListPlansRequest(), metadata=tenant.md)
    assert await revoke_key(admin_conn, uuid.UUID(tenant.api_key_id))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ListPlans(pb.ListPlansRequest(), metadata=tenant.md)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_api_key_is_stored_only_hashed(tenant, admin_conn):
    rows = await admin_conn.fetch("select key_hash::text, key_prefix from api_keys where tenant_id = $1",
                                  uuid.UUID(tenant.id))
    assert len(rows) == 1
    assert tenant.api_key not in rows[0]["key_hash"] and rows[0]["key_prefix"] == tenant.api_key[:10]


async def test_tenant_b_cannot_get_list_or_archive_tenant_a_plan(stub, new_tenant, admin_conn):
    a, b = await new_tenant("A"), await new_tenant("B")
    plan = (await stub.CreatePlan(plan_request(), metadata=a.md)).plan
    before = await admin_conn.fetchrow("select status, archived_at from plans where id = $1", uuid.UUID(plan.id))

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetPlan(pb.GetPlanRequest(id=plan.id), metadata=b.md)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ArchivePlan(pb.ArchivePlanRequest(request_id=str(uuid.uuid4()), id=plan.id), metadata=b.md)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    listed = await stub.ListPlans(pb.ListPlansRequest(include_archived=True, code=plan.code), metadata=b.md)
    assert list(listed.plans) == []

    after = await admin_conn.fetchrow("select status, archived_at from plans where id = $1", uuid.UUID(plan.id))
    assert after == before and after["status"] == "active"
    # And A still sees it, unchanged.
    assert (await stub.GetPlan(pb.GetPlanRequest(id=plan.id), metadata=a.md)).plan == plan


async def test_request_id_of_tenant_a_means_nothing_to_tenant_b(stub, new_tenant):
    a, b = await new_tenant(), await new_tenant()
    req = plan_request()
    plan_a = (await stub.CreatePlan(req, metadata=a.md)).plan
    plan_b = (await stub.CreatePlan(req, metadata=b.md)).plan  # same request_id, other tenant: a new plan
    assert plan_b.id != plan_a.id


async def test_sql_level_app_role_sees_only_its_tenant(migrated, stub, new_tenant):
    """Row-level security in PostgreSQL, not WHERE clauses: the app role with A set sees none of B's rows."""
    a, b = await new_tenant(), await new_tenant()
    await stub.CreatePlan(plan_request(), metadata=a.md)
    await stub.CreatePlan(plan_request(), metadata=b.md)
    conn = await asyncpg.connect(migrated.database_url)
    try:
        role = await conn.fetchrow("select rolsuper, rolbypassrls from pg_roles where rolname = current_user")
        assert not role["rolsuper"] and not role["rolbypassrls"]
        # The API role's way into a tenant: A's key gives A's token (tests/integration/test_db_roles.py).
        assert await key_for_hash(conn, hash_key(a.api_key)) == (uuid.UUID(a.id), uuid.UUID(a.api_key_id))
        async with conn.transaction():
            await set_tenant(conn, uuid.UUID(a.id))
            for table in ("plans", "audit_events", "idempotency_keys", "api_keys", "tenants"):
                column = "id" if table == "tenants" else "tenant_id"
                seen = {r[0] for r in await conn.fetch(f"select distinct {column} from {table}")}
                assert seen == {uuid.UUID(a.id)}, table
            # Even a query naming B explicitly finds nothing.
            assert await conn.fetchval("select count(*) from plans where tenant_id = $1", uuid.UUID(b.id)) == 0
            # Writing a row for B is refused by the policy's WITH CHECK.
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute("insert into plans (tenant_id, id, code, spec) values ($1, $2, 'x', '{}')",
                                   uuid.UUID(b.id), uuid.uuid4())
        # With no tenant set, no tenant rows at all.
        assert await conn.fetchval("select count(*) from plans") == 0
        # The audit trail cannot be rewritten, even by the app's own tenant.
        async with conn.transaction():
            await set_tenant(conn, uuid.UUID(a.id))
            with pytest.raises(asyncpg.PostgresError):
                await conn.execute("delete from audit_events")
    finally:
        await conn.close()


async def test_plan_pricing_cannot_be_edited_in_place(stub, tenant, admin_conn):
    plan = (await stub.CreatePlan(plan_request(), metadata=tenant.md)).plan
    with pytest.raises(asyncpg.RaiseError, match="immutable"):
        await admin_conn.execute("update plans set spec = '{}' where id = $1", uuid.UUID(plan.id))


async def test_every_tenant_table_has_row_level_security(admin_conn):
    """A guard for later migrations: a table with a tenant_id column and no RLS is a leak."""
    rows = await admin_conn.fetch(
        """select c.relname, c.relrowsecurity,
                  exists(select 1 from pg_policy p where p.polrelid = c.oid and p.polname = 'tenant_isolation') as policy
             from pg_class c join pg_attribute a on a.attrelid = c.oid
            where a.attname = 'tenant_id' and c.relkind = 'r' and c.relnamespace = 'public'::regnamespace""")
    assert len(rows) >= 8
    unprotected = [r["relname"] for r in rows if not (r["relrowsecurity"] and r["policy"])]
    assert unprotected == []


async def test_audit_actor_names_the_key_id_and_no_part_of_the_key(stub, tenant, admin_conn):
    from billing.services.tenants import issue_key

    plan = (await stub.CreatePlan(plan_request(trial_days=0), metadata=tenant.md)).plan
    sub = (await stub.CreateSubscription(pb.CreateSubscriptionRequest(
        request_id=str(uuid.uuid4()), customer_id="c", plan_id=plan.id, activate=True), metadata=tenant.md)).subscription
    # a second key of the same tenant: each change names the key that made it
    second_id, second = await issue_key(admin_conn, uuid.UUID(tenant.id))
    await stub.PauseSubscription(pb.PauseSubscriptionRequest(request_id=str(uuid.uuid4()), id=sub.id),
                                 metadata=(("authorization", f"Bearer {second}"),))
    got = (await stub.GetSubscription(pb.GetSubscriptionRequest(id=sub.id, include_history=True),
                                      metadata=tenant.md)).subscription
    actors = [h.actor for h in got.history]
    assert actors == [f"api_key:{tenant.api_key_id}"] * (len(actors) - 1) + [f"api_key:{second_id}"] \
        and len(actors) >= 3
    secret = tenant.api_key.removeprefix("bk_")
    for actor in actors:
        assert "bk_" not in actor
        for key in (secret, second.removeprefix("bk_")):  # not even 6 characters of a secret in a row
            assert not any(key[i:i + 6] in actor for i in range(len(key) - 5)), actor
