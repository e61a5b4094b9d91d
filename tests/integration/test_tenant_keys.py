"""Every tenant table is ready to be distributed by `tenant_id` (docs/scaling.md): read from the
catalog of the migrated database, so a new table or index that breaks the rule fails here.

On Citus a primary key or unique index must contain the distribution column, and a foreign key
between distributed tables must include it; leading with it keeps each tenant's rows together
in every index on one server too. Tables without `tenant_id` must be named below as global,
with the reason, so a table cannot lose its tenant by oversight.
"""
from __future__ import annotations

import re

import pytest

from tests.conftest import PROJECT_ROOT

# Tables without a tenant column and why (reference tables on Citus, or owner-only).
GLOBAL_TABLES = {
    "tenants": "the tenant list itself (the key is the tenant id)",
    "schema_migrations": "migration bookkeeping, owner only",
    "consumer_offsets": "Kafka positions of the worker's consumer groups, per topic partition",
    "tenant_context_secret": "the key tenant tokens are derived from, owner only",
}

# Tables with tenant_id that stay whole on every node (Citus reference tables), and why.
REFERENCE_TABLES = {
    "api_keys": "looked up by key hash before the tenant is known (a unique key_hash); small",
}


# Tenant tables without a primary key, and why.
NO_PRIMARY_KEY = {
    "usage_events": "partitioned by period start (migration 032): a key would have to contain it, so it could not "
                    "deduplicate; usage_event_ids (tenant_id, event_key) is the dedup key, and the raw table saves "
                    "the index entry per event",
}


def _migration_tables() -> set[str]:
    """The tables the migrations create (tests may create tables of their own beside them)."""
    found = set()
    for path in (PROJECT_ROOT / "migrations").glob("*.sql"):
        found |= {m.lower() for m in re.findall(r"create table (?:if not exists )?(\w+)", path.read_text(), re.I)}
    return found


async def _tenant_tables(conn) -> list[str]:
    rows = await conn.fetch(
        """select c.relname from pg_class c
             join pg_namespace n on n.oid = c.relnamespace
            where n.nspname = 'public' and c.relkind in ('r', 'p')
              and not c.relispartition and c.relname = any($1::text[])
              and exists (select 1 from pg_attribute a where a.attrelid = c.oid
                                and a.attname = 'tenant_id' and not a.attisdropped)
            order by 1""", sorted(_migration_tables()))
    return [r["relname"] for r in rows]


@pytest.mark.asyncio
async def test_every_table_has_a_tenant_or_is_named_global(admin_conn):
    rows = await admin_conn.fetch(
        """select c.relname,
                  exists (select 1 from pg_attribute a where a.attrelid = c.oid
                                and a.attname = 'tenant_id' and not a.attisdropped) as has_tenant
             from pg_class c join pg_namespace n on n.oid = c.relnamespace
            where n.nspname = 'public' and c.relkind in ('r', 'p') and not c.relispartition
              and c.relname = any($1::text[])""", sorted(_migration_tables() | {"schema_migrations"}))
    without = sorted(r["relname"] for r in rows if not r["has_tenant"])
    assert without == sorted(GLOBAL_TABLES), (
        "a table without tenant_id must be named in GLOBAL_TABLES with its reason "
        f"(docs/scaling.md): found {without}")
    assert len([r for r in rows if r["has_tenant"]]) >= 10


@pytest.mark.asyncio
async def test_primary_and_unique_keys_lead_with_tenant_id(admin_conn):
    tables = await _tenant_tables(admin_conn)
    assert "usage_events" in tables and "subscriptions" in tables
    rows = await admin_conn.fetch(
        """select t.relname as table_name, i.relname as index_name, x.indisprimary,
                  (select a.attname from pg_attribute a
                    where a.attrelid = x.indrelid and a.attnum = x.indkey[0]) as first_column
             from pg_index x
             join pg_class t on t.oid = x.indrelid
             join pg_class i on i.oid = x.indexrelid
             join pg_namespace n on n.oid = t.relnamespace
            where n.nspname = 'public' and x.indisunique and t.relname = any($1::text[])""",
        tables)
    keyed = {r["table_name"] for r in rows if r["indisprimary"]}
    assert keyed == set(tables) - set(NO_PRIMARY_KEY), (
        f"tenant tables without a primary key: {sorted(set(tables) - keyed)} (or name them in NO_PRIMARY_KEY)")
    wrong = sorted(f"{r['table_name']}.{r['index_name']} leads with {r['first_column']}"
                   for r in rows if r["first_column"] != "tenant_id" and r["table_name"] not in REFERENCE_TABLES)
    assert wrong == [], "unique indexes of tenant tables must lead with tenant_id: " + "; ".join(wrong)


@pytest.mark.asyncio
async def test_foreign_keys_between_tenant_tables_carry_the_tenant(admin_conn):
    tables = await _tenant_tables(admin_conn)
    rows = await admin_conn.fetch(
        """select c.conname, src.relname as source, dst.relname as target,
                  array(select a.attname from unnest(c.conkey) k
                          join pg_attribute a on a.attrelid = c.conrelid and a.attnum = k) as columns
             from pg_constraint c
             join pg_class src on src.oid = c.conrelid
             join pg_class dst on dst.oid = c.confrelid
            where c.contype = 'f' and src.relname = any($1::text[])""",
        tables)
    between_tenants = [r for r in rows if r["target"] in tables]
    assert between_tenants, "expected foreign keys between tenant tables (subscriptions -> plans at least)"
    wrong = sorted(f"{r['conname']} ({r['source']} -> {r['target']}: {list(r['columns'])})"
                   for r in between_tenants if r["columns"][0] != "tenant_id")
    assert wrong == [], "a foreign key between tenant tables must lead with tenant_id: " + "; ".join(wrong)
    to_global = sorted({r["target"] for r in rows if r["target"] not in tables})
    assert set(to_global) <= {"tenants"}, f"tenant tables reference global tables other than tenants: {to_global}"


@pytest.mark.asyncio
async def test_row_level_security_is_forced_on_every_tenant_table(admin_conn):
    tables = await _tenant_tables(admin_conn)
    rows = await admin_conn.fetch(
        "select relname from pg_class where relname = any($1::text[]) and relrowsecurity and relforcerowsecurity",
        tables)
    assert sorted(r["relname"] for r in rows) == tables
