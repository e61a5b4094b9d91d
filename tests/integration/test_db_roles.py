"""Tenant isolation against the service's own database roles (migration 016, billing/store/roles.py).

Each hole of the API role (billing_app) is tried as an attacker holding its credentials would,
in plain SQL on the real database, and must be refused; the workers' role (billing_worker)
keeps what the consumers, the scheduler and the relay need; the service will not start as a
role that bypasses row-level security.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid

import asyncpg
import pytest

from billing.runtime import Service
from billing.services.tenants import hash_key
from billing.store.db import init_connection
from billing.store.roles import UnsafeDatabaseRole
from billing.store.tenants import key_for_hash
from billing.v1 import billing_pb2 as pb
from tests.conftest import PROJECT_ROOT
from tests.integration.test_plans_api import plan_request


async def _enter(conn: asyncpg.Connection, tenant_id: str, token: str | None = None) -> None:
    """Claim the tenant for the open transaction, as the store does: its id, and (the API
    role's way in) the token an API key of it was given."""
    if token is None:
        await conn.execute("select set_config('billing.tenant_id', $1, true)", tenant_id)
    else:
        await conn.execute("select set_config('billing.tenant_id', $1, true), set_config('billing.tenant_token', $2, true)",
                           tenant_id, token)


@pytest.fixture
async def app(migrated):
    conn = await asyncpg.connect(migrated.database_url)
    await init_connection(conn)
    yield conn
    await conn.close()


@pytest.fixture
async def worker(migrated):
    conn = await asyncpg.connect(migrated.worker_database_url)
    await init_connection(conn)
    yield conn
    await conn.close()


@pytest.fixture(autouse=True)
async def _no_rows_left_for_the_relay(admin_conn):
    """The rows these tests write name streams no relay knows: once a test is done they are
    marked published, so a relay of a later test never tries to deliver them."""
    yield
    await admin_conn.execute("update outbox set published_at = now() where stream like 'roles-%' "
                             "and published_at is null")


async def _outbox_row(admin_conn, tenant_id: str) -> int:
    return await admin_conn.fetchval(
        "insert into outbox (tenant_id, stream, key, payload) values ($1, $2, 'k', 'secret payload') returning id",
        uuid.UUID(tenant_id), f"roles-{uuid.uuid4().hex[:8]}")


@pytest.mark.parametrize("call", [
    "select * from outbox_pending($1 - 1, 10)",
    "select outbox_mark_published(array[$1]::bigint[])",
    "select outbox_park($1, 'x', 'y')",
    "select outbox_backlog() + $1",
    "select outbox_parked_count() + $1",
    "select outbox_release(array[$1]::bigint[])",
])
async def test_app_role_cannot_call_the_relays_functions(app, admin_conn, tenant, call):
    row = await _outbox_row(admin_conn, tenant.id)
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await app.fetch(call, row)
    # Nothing was suppressed: the row still waits for the relay.
    assert await admin_conn.fetchval("select published_at is null and parked_at is null from outbox where id = $1",
                                     row)


async def test_app_role_cannot_enter_a_tenant_by_setting_its_id(app, stub, new_tenant):
    a, b = await new_tenant(), await new_tenant()
    await stub.CreatePlan(plan_request(), metadata=b.md)
    for sql, args in [("select count(*) from plans", ()), ("select count(*) from tenants", ()),
                      ("insert into plans (tenant_id, id, code, spec) values ($1, $2, 'x', '{}')",
                       (uuid.UUID(b.id), uuid.uuid4()))]:
        async with app.transaction():
            await _enter(app, b.id)
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="without a valid tenant token"):
                await app.execute(sql, *args)
    # A's token (a key of A is known) does not open B either.
    await key_for_hash(app, hash_key(a.api_key))
    token = await app.fetchval("select token from authenticate_api_key_token($1)", hash_key(a.api_key))
    async with app.transaction():
        await _enter(app, b.id, token)
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await app.fetchval("select count(*) from plans")
    # The way in: the token of the key's own tenant, which sees that tenant alone.
    await stub.CreatePlan(plan_request(), metadata=a.md)
    async with app.transaction():
        await _enter(app, a.id, token)
        assert {r[0] for r in await app.fetch("select distinct tenant_id from plans")} == {uuid.UUID(a.id)}
    # An unknown or revoked key gets no token.
    assert await app.fetchrow("select * from authenticate_api_key_token($1)", hash_key("bk_nope")) is None


async def test_app_role_cannot_read_or_make_tokens(app, tenant):
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await app.fetch("select * from tenant_context_secret")
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await app.fetchval("select tenant_token_for($1)", uuid.UUID(tenant.id))


async def test_app_role_cannot_list_tenants(app, tenant):
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await app.fetch("select tenant_ids()")


@pytest.mark.parametrize("sql", [
    "select * from consumer_offsets",
    "insert into consumer_offsets (consumer_group, topic, partition, next_offset) values ('g', 't', 0, 0)",
    "update consumer_offsets set next_offset = 0",
])
async def test_app_role_cannot_touch_consumer_offsets(app, sql):
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await app.execute(sql)


async def test_app_role_cannot_rewrite_its_own_tenants_outbox(app, admin_conn, tenant):
    """Even inside its tenant, with its own key's token, the API role may add outbox rows but
    not change one waiting for the relay (migration 025)."""
    row = await _outbox_row(admin_conn, tenant.id)
    token = await app.fetchval("select token from authenticate_api_key_token($1)", hash_key(tenant.api_key))
    for sql in ("update outbox set payload = 'forged' where id = $1", "delete from outbox where id = $1"):
        async with app.transaction():
            await _enter(app, tenant.id, token)
            assert await app.fetchval("select count(*) from outbox where id = $1", row) == 1
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await app.execute(sql, row)
    assert await admin_conn.fetchval("select payload from outbox where id = $1", row) == b"secret payload"


async def test_worker_role_enters_any_tenant_and_runs_the_relay(worker, admin_conn, new_tenant):
    a, b = await new_tenant(), await new_tenant()
    ra, rb = await _outbox_row(admin_conn, a.id), await _outbox_row(admin_conn, b.id)
    for t, own in ((a, ra), (b, rb)):
        async with worker.transaction():
            await _enter(worker, t.id)
            assert [r[0] for r in await worker.fetch("select id from outbox where id in ($1, $2)", ra, rb)] == [own]
    assert await worker.fetchval("select count(*) from outbox where id in ($1, $2)", ra, rb) == 0  # no tenant: none
    pending = {r["id"] for r in await worker.fetch("select id from outbox_pending($1, 100000)", ra - 1)}
    assert {ra, rb} <= pending
    assert {uuid.UUID(a.id), uuid.UUID(b.id)} <= {r[0] for r in await worker.fetch("select tenant_ids()")}
    await worker.fetch("select * from consumer_offsets limit 1")


async def test_rls_is_forced_on_every_tenant_table_through_current_tenant(admin_conn):
    rows = await admin_conn.fetch(
        """select c.relname, c.relrowsecurity, c.relforcerowsecurity, pg_get_expr(p.polqual, p.polrelid) as qual,
                  pg_get_expr(p.polwithcheck, p.polrelid) as check
             from pg_class c left join pg_policy p on p.polrelid = c.oid and p.polname = 'tenant_isolation'
            where c.relkind = 'r' and c.relnamespace = 'public'::regnamespace
              and (c.relname = 'tenants' or exists (select 1 from pg_attribute a where a.attrelid = c.oid
                                                       and a.attname = 'tenant_id' and not a.attisdropped))""")
    assert len(rows) >= 15
    weak = [r["relname"] for r in rows if not (r["relrowsecurity"] and r["relforcerowsecurity"]
                                               and "current_tenant()" in (r["qual"] or "")
                                               and "current_tenant()" in (r["check"] or ""))]
    assert weak == []
    # A later migration's table gets the same through enable_tenant_isolation().
    tx = admin_conn.transaction()
    await tx.start()
    try:
        await admin_conn.execute("create table roles_probe (tenant_id uuid not null, x int)")
        await admin_conn.execute("select enable_tenant_isolation('roles_probe')")
        probe = await admin_conn.fetchrow("select relforcerowsecurity, (select array_agg(polname order by polname) "
                                          "from pg_policy where polrelid = c.oid) as policies "
                                          "from pg_class c where oid = 'roles_probe'::regclass")
    finally:
        await tx.rollback()
    assert probe["relforcerowsecurity"] and probe["policies"] == ["owner_all", "tenant_isolation"]


async def test_policy_evaluates_the_tenant_once_per_statement(worker, tenant):
    """`(select current_tenant())` is an initplan: one call per statement, not one per row
    (the usage batch inserts tens of thousands of rows in one statement)."""
    async with worker.transaction():
        await _enter(worker, tenant.id)
        plan = "\n".join(r[0] for r in await worker.fetch(
            "explain (verbose, costs off) select * from usage_events where quantity > 0"))
    # usage_events is partitioned (migration 032): one index scan per partition, each on the initplan's value.
    assert re.search(r"Index Cond: \(usage_events(_\d+)?\.tenant_id = \(InitPlan 1\)\.col1\)", plan), plan
    assert re.search(r"InitPlan 1\n +->  Result\n +Output: (public\.)?current_tenant\(\)$", plan, re.M), plan


@pytest.mark.parametrize("setting, purpose", [("database_url", "api"), ("worker_database_url", "relay")])
async def test_service_refuses_to_start_as_the_owner(migrated, setting, purpose):
    bad = migrated.model_copy(update={setting: migrated.admin_database_url})
    with pytest.raises(UnsafeDatabaseRole, match="owns the"):
        await Service(bad, roles=(purpose,)).start()


async def test_service_refuses_a_superuser_and_mixed_up_roles(stack, migrated):
    if stack is None:
        pytest.skip("needs the local stack's superuser")
    superuser = stack.postgres.superuser_url.rsplit("/", 1)[0] + "/billing"
    for update, roles, why in [({"database_url": superuser}, ("api",), "is a superuser"),
                               ({"database_url": migrated.worker_database_url}, ("api",), "may enter any tenant"),
                               ({"worker_database_url": migrated.database_url}, ("usage",), "cannot enter")]:
        with pytest.raises(UnsafeDatabaseRole, match=why):
            await Service(migrated.model_copy(update=update), roles=roles).start()


def test_billing_serve_with_the_owners_url_exits_with_a_clear_error(migrated):
    env = {**os.environ, "BILLING_DATABASE_URL": migrated.admin_database_url,
           "BILLING_WORKER_DATABASE_URL": migrated.worker_database_url,
           "BILLING_ADMIN_DATABASE_URL": migrated.admin_database_url,
           "BILLING_KAFKA_BOOTSTRAP_SERVERS": migrated.kafka_bootstrap_servers, "BILLING_GRPC_PORT": "0"}
    proc = subprocess.run([sys.executable, "-m", "billing.cli", "serve", "--roles", "api"], env=env, cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "BILLING_DATABASE_URL connects as role 'billing_owner'" in proc.stderr
    assert "row-level security would not isolate tenants" in proc.stderr


async def test_a_new_secret_voids_issued_tokens_and_calls_go_on(app, stub, tenant, admin_conn):
    token = await app.fetchval("select token from authenticate_api_key_token($1)", hash_key(tenant.api_key))
    await stub.ListPlans(pb.ListPlansRequest(), metadata=tenant.md)
    await admin_conn.execute(
        "update tenant_context_secret set secret = decode(replace(gen_random_uuid()::text || gen_random_uuid()::text,"
        " '-', ''), 'hex')")
    async with app.transaction():
        await _enter(app, tenant.id, token)
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await app.fetchval("select count(*) from plans")
    # The API authenticates every call, so it holds the new token at once.
    await stub.CreatePlan(plan_request(), metadata=tenant.md)
    assert len((await stub.ListPlans(pb.ListPlansRequest(), metadata=tenant.md)).plans) == 1
