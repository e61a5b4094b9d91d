"""Migrations: in order, once, under a lock, and a changed applied file is refused."""
from __future__ import annotations

import asyncio
import shutil

import asyncpg
import pytest

from billing.store.migrations import MigrationError, load_migrations, migrate, pending


@pytest.fixture
def fresh_database(stack, migrated):
    """A new empty database owned by the migration role, named for the test."""
    if stack is None:
        pytest.skip("needs the local stack's superuser to create databases")

    async def make(name: str) -> str:
        conn = await asyncpg.connect(stack.postgres.superuser_url)
        try:
            await conn.execute(f"drop database if exists {name}")
            await conn.execute(f"create database {name} owner billing_owner")
        finally:
            await conn.close()
        return migrated.admin_database_url.rsplit("/", 1)[0] + "/" + name

    return make


async def test_applied_in_order_once_and_recorded(migrated, fresh_database):
    url = await fresh_database("mig_order")
    names = [m.name for m in load_migrations(migrated.migrations_dir)]
    # Two processes migrating at once: the advisory lock lets one apply, the other finds nothing to do.
    results = await asyncio.gather(migrate(url, migrated.migrations_dir), migrate(url, migrated.migrations_dir))
    assert sorted(results, key=len) == [[], names]
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("select version, name, checksum from schema_migrations order by version")
        assert [r["name"] for r in rows] == names
        assert await pending(conn, migrated.migrations_dir) == []
    finally:
        await conn.close()
    assert await migrate(url, migrated.migrations_dir) == []


async def test_changed_applied_file_is_refused(migrated, fresh_database, tmp_path):
    url = await fresh_database("mig_changed")
    copy = tmp_path / "migrations"
    shutil.copytree(migrated.migrations_dir, copy)
    await migrate(url, copy)
    first = sorted(copy.glob("*.sql"))[0]
    first.write_text(first.read_text() + "\n-- an innocent-looking edit\n")
    with pytest.raises(MigrationError, match=f"{first.name} was changed after it was applied"):
        await migrate(url, copy)


async def test_pending_file_is_reported(migrated, fresh_database, tmp_path):
    url = await fresh_database("mig_pending")
    copy = tmp_path / "migrations"
    shutil.copytree(migrated.migrations_dir, copy)
    await migrate(url, copy)
    (copy / "999_later.sql").write_text("create table later_thing (id int primary key);")
    conn = await asyncpg.connect(url)
    try:
        assert await pending(conn, copy) == ["999_later.sql"]
    finally:
        await conn.close()


def test_badly_named_file_is_refused(tmp_path):
    (tmp_path / "add_things.sql").write_text("select 1")
    with pytest.raises(MigrationError, match="NNN_name.sql"):
        load_migrations(tmp_path)
