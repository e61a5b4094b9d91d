"""Migrations: in order, once, under a lock, and a changed applied file is refused."""
from __future__ import annotations

import asyncio
import shutil
import uuid
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import asyncpg
import pytest

from billing.domain.periods import to_us
from billing.devstack.stack import free_port
from billing.runtime import Service
from billing.store import usage as usage_store
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


async def test_late_usage_pending_is_filled_on_upgrade_and_kept_by_the_database(migrated, fresh_database, tmp_path):
    """Migrations 014 and 015 on a database with late usage (docs/operations.md, upgrades):
    014 fills late_usage_pending with the subscriptions that have unbilled late events; a
    late event stored after it by a replica of the previous version (an insert that does
    not write the row) gets its row from 015's fill; after 015 the trigger writes it for
    whatever code inserts, under the tenant's row-level security, and only for events the
    statement really inserted."""
    url = await fresh_database("mig_late_pending")
    copy = tmp_path / "migrations"
    copy.mkdir()
    files = sorted(migrated.migrations_dir.glob("*.sql"))

    async def migrate_up_to(version: int) -> None:
        for f in files:
            if int(f.name[:3]) <= version:
                shutil.copy(f, copy / f.name)
        await migrate(url, copy)

    tid = uuid.uuid4()
    s = {name: uuid.uuid4() for name in ("late", "billed", "on_time", "old_replica", "after", "duplicate")}
    start = datetime(2026, 11, 1, tzinfo=timezone.utc)

    async def insert(conn, event_id: str, sub: uuid.UUID, late: bool) -> str:
        return await conn.execute(
            """insert into usage_events (tenant_id, event_id, subscription_id, metric_code, quantity, occurred_at,
                                         period_start, period_end, late)
               values ($1, $2, $3, 'calls', 1, $4, $4, $5, $6) on conflict do nothing""",
            tid, event_id, sub, start, start + timedelta(days=30), late)

    async def pending_subs(conn) -> set[uuid.UUID]:
        return {r["subscription_id"] for r in await conn.fetch("select subscription_id from late_usage_pending")}

    await migrate_up_to(13)
    admin = await asyncpg.connect(url)
    try:
        await insert(admin, "e-late", s["late"], True)
        await insert(admin, "e-billed", s["billed"], True)
        await admin.execute("""insert into late_usage_billed (tenant_id, event_id, subscription_id, invoice_request_id,
                                                              run_id) values ($1, 'e-billed', $2, $3, $3)""",
                            tid, s["billed"], uuid.uuid4())
        await insert(admin, "e-on-time", s["on_time"], False)

        await migrate_up_to(14)
        assert await pending_subs(admin) == {s["late"]}
        await insert(admin, "e-old-replica", s["old_replica"], True)  # what the previous version's batch wrote
        assert await pending_subs(admin) == {s["late"]}

        await migrate_up_to(15)
        assert await pending_subs(admin) == {s["late"], s["old_replica"]}
    finally:
        await admin.close()

    await migrate_up_to(10_000)  # the batch below is today's code: every migration (032 moves the rows)

    app = await asyncpg.connect(url.replace("billing_owner:billing_owner", "billing_worker:billing_worker"))
    try:
        async with app.transaction():
            await app.execute("select set_config('billing.tenant_id', $1, true)", str(tid))
            batch = usage_store.Batch()
            event = SimpleNamespace(metric_code="calls", quantity="2", occurred_at_us=to_us(start), properties=None)
            span = (to_us(start), to_us(start + timedelta(days=30)))
            batch.add(0, SimpleNamespace(**vars(event), event_id="e-after"), s["after"], *span, True)
            batch.add(1, SimpleNamespace(**vars(event), event_id="e-after-on-time"), s["on_time"], *span, False)
            batch.add(2, SimpleNamespace(**vars(event), event_id="e-late"), s["duplicate"], *span, True)  # stored already
            assert await usage_store.insert_batch(app, tid, batch) == (2, 1, [])
    finally:
        await app.close()
    admin = await asyncpg.connect(url)
    try:
        assert await pending_subs(admin) == {s["late"], s["old_replica"], s["after"]}
    finally:
        await admin.close()


class _Probe:
    """A role that records whether it was started (the roles' common interface: run, stop)."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self._stop = asyncio.Event()

    async def run(self) -> None:
        self.started.set()
        await self._stop.wait()

    def stop(self) -> None:
        self._stop.set()


async def test_roles_start_only_once_every_migration_is_applied(migrated, fresh_database, tmp_path):
    """A replica deployed before `billing migrate` consumes and writes nothing: its roles wait
    (new code may rely on a pending migration, as the usage batch relies on 015's trigger),
    and start by themselves once the migration is applied. Stopped while waiting, a role
    ends without having started."""
    url = await fresh_database("mig_roles_wait")
    copy = tmp_path / "migrations"
    shutil.copytree(migrated.migrations_dir, copy)
    await migrate(url, copy)
    (copy / "999_later.sql").write_text("create table later_thing (id int primary key);")
    app_url = url.replace("billing_owner:billing_owner", "billing_app:billing_app")
    waiting, never = (Service(migrated.model_copy(update={"database_url": app_url, "migrations_dir": copy,
                                                          "http_port": free_port()}), roles=())
                      for _ in range(2))
    await waiting.start()
    await never.start()
    try:
        probe, unstarted = _Probe(), _Probe()
        waiting._start_role("probe", probe)
        never._start_role("probe", unstarted)
        await asyncio.sleep(3 * waiting.readiness.interval_s)
        assert not probe.started.is_set() and not unstarted.started.is_set()
        assert waiting.readiness.checks["migrations"] == "pending: 999_later.sql"

        await never.stop()
        assert not unstarted.started.is_set()
        assert never._roles[0][2].done()

        assert await migrate(url, copy) == ["999_later.sql"]
        await asyncio.wait_for(probe.started.wait(), timeout=10 * waiting.readiness.interval_s)
    finally:
        await waiting.stop()
