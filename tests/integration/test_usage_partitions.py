"""usage_events partitions (migration 032, docs/usage.md "Partitions and retention"): dedup
across partitions, partitions created ahead, the default partition, and retention that never
removes anything unbilled, inside the late window or with unbilled late events.

Retention drops partitions of the whole database, so those tests run on a database of their own."""
from __future__ import annotations

import asyncio
import uuid
from datetime import date, datetime, timedelta, timezone
from types import SimpleNamespace

import asyncpg
import pytest

from billing.domain.periods import to_us
from billing.services import maintenance
from billing.services.scheduler import PartitionMaintainer
from billing.store import partitions
from billing.store import usage as usage_store
from billing.store.migrations import migrate
from tests.integration.test_migrations import fresh_database  # noqa: F401 - a fixture

UTC = timezone.utc


def _batch(rows: list[tuple[str, uuid.UUID, datetime, datetime, datetime, str]], late: bool = False):
    """rows of (event id, subscription, occurred at, period start, period end, quantity)."""
    b = usage_store.Batch()
    for i, (eid, sub, at, start, end, qty) in enumerate(rows):
        event = SimpleNamespace(event_id=eid, metric_code="calls", quantity=qty, occurred_at_us=to_us(at),
                                properties=None)
        b.add(i, event, sub, to_us(start), to_us(end), late)
    return b


async def _store(conn, tid: uuid.UUID, rows, late: bool = False) -> tuple[int, int, list[str]]:
    async with conn.transaction():
        await conn.execute("select set_config('billing.tenant_id', $1, true)", str(tid))
        return await usage_store.insert_batch(conn, tid, _batch(rows, late), want_ids=True)


async def _tenant(conn) -> uuid.UUID:
    tid = uuid.uuid4()
    await conn.execute("insert into tenants (id, name) values ($1, 'partitions')", tid)
    return tid


async def _where(conn, tid: uuid.UUID, event_id: str) -> str:
    return await conn.fetchval("select tableoid::regclass::text from usage_events where tenant_id = $1 and event_id = $2",
                               tid, event_id)


async def test_an_event_id_sent_again_with_another_time_in_another_partition_counts_once(admin_conn, worker_db):
    tid = await _tenant(admin_conn)
    sub = uuid.uuid4()
    jan, feb, mar = (datetime(2026, m, 1, tzinfo=UTC) for m in (1, 2, 3))
    async with worker_db.tx() as conn:
        for month in (jan, feb):
            await partitions.ensure(conn, month.date())
    async with worker_db.pool.acquire() as conn:
        assert (await _store(conn, tid, [("e-1", sub, jan + timedelta(days=3), jan, feb, "5")]))[:2] == (1, 0)
        # The same id a month later: another period, another partition. Not stored, not counted.
        assert await _store(conn, tid, [("e-1", sub, feb + timedelta(days=3), feb, mar, "7")]) == (0, 0, [])
        # Within one batch, with two times: the first row of the batch wins.
        inserted = await _store(conn, tid, [("e-2", sub, feb + timedelta(days=1), feb, mar, "2"),
                                            ("e-2", sub, jan + timedelta(days=1), jan, feb, "9"),
                                            ("e-3", sub, feb + timedelta(days=2), feb, mar, "1")])
        assert sorted(inserted[2]) == ["e-2", "e-3"] and inserted[:2] == (2, 0)
    totals = await admin_conn.fetch(
        "select period_start, quantity_sum, event_count from usage_totals where tenant_id = $1 order by 1", tid)
    assert [(r["period_start"], r["quantity_sum"], r["event_count"]) for r in totals] == [(jan, 5, 1), (feb, 3, 2)]
    assert await _where(admin_conn, tid, "e-1") == "usage_events_p2026_01"
    assert await _where(admin_conn, tid, "e-2") == "usage_events_p2026_02"
    assert await admin_conn.fetchval("select count(*) from usage_event_ids where tenant_id = $1", tid) == 3


async def test_partitions_are_created_ahead_once_and_a_month_without_one_lands_in_the_default(admin_conn, worker_db):
    now = datetime.now(UTC)
    async with worker_db.tx() as conn:  # the scheduler's role
        await maintenance.create_ahead(conn, now, 3)
        assert await maintenance.create_ahead(conn, now, 3) == []  # idempotent
    names = {p.name for p in await partitions.monthly(admin_conn)}
    outbox = {p.name for p in await partitions.monthly(admin_conn, partitions.OUTBOX)}
    for month in maintenance.months_from(now, 3):
        assert f"usage_events_p{month:%Y_%m}" in names and f"outbox_p{month:%Y_%m}" in outbox

    # A month far ahead (a test clock's, say): stored in the default partition, not refused ...
    tid = await _tenant(admin_conn)
    sub = uuid.uuid4()
    far, after = datetime(2091, 5, 1, tzinfo=UTC), datetime(2091, 6, 1, tzinfo=UTC)
    async with worker_db.pool.acquire() as conn:
        assert (await _store(conn, tid, [("far-1", sub, far, far, after, "4")]))[:2] == (1, 0)
    assert await _where(admin_conn, tid, "far-1") == "usage_events_default"
    # ... and moved into its month's partition when that is created; still deduplicated.
    async with worker_db.tx() as conn:
        assert await partitions.ensure(conn, date(2091, 5, 1)) is True
        assert await partitions.ensure(conn, date(2091, 5, 1)) is False
    assert await _where(admin_conn, tid, "far-1") == "usage_events_p2091_05"
    async with worker_db.pool.acquire() as conn:
        assert await _store(conn, tid, [("far-1", sub, far, far, after, "4")]) == (0, 0, [])
    assert await admin_conn.fetchval("select count(*) from usage_events where tenant_id = $1", tid) == 1


async def test_the_app_and_worker_roles_cannot_delete_usage_or_reach_a_partition(migrated, worker_db):
    async with worker_db.pool.acquire() as conn:
        for sql in ("delete from usage_events", "delete from usage_event_ids",
                    "select count(*) from usage_events_default", "alter table usage_events detach partition "
                    "usage_events_default"):
            with pytest.raises((asyncpg.InsufficientPrivilegeError, asyncpg.WrongObjectTypeError)):
                await conn.execute(sql)


async def test_the_scheduler_role_creates_the_partitions_ahead(admin_conn, worker_db):
    months = maintenance.months_from(datetime.now(UTC), 6)
    # A pass gives up on a lock another test holds (lock_timeout) and the next one tries
    # again: a short interval, and a deadline a loaded machine meets.
    task = PartitionMaintainer(worker_db, 0.5, 6)
    running = asyncio.create_task(task.run())
    deadline = asyncio.get_running_loop().time() + 60
    try:
        while True:
            names = {p.name for parent in (partitions.USAGE, partitions.OUTBOX, partitions.AUDIT)
                     for p in await partitions.monthly(admin_conn, parent)}
            if f"audit_events_p{months[-1]:%Y_%m}" in names or asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.1)
    finally:
        task.stop()
        await running
    for parent in (partitions.USAGE, partitions.OUTBOX, partitions.AUDIT):
        assert {f"{parent}_p{m:%Y_%m}" for m in months} <= names


@pytest.fixture
async def own_db(fresh_database, migrated):  # noqa: F811 - the imported fixture
    url = await fresh_database("usage_retention")
    await migrate(url, migrated.migrations_dir)
    conn = await asyncpg.connect(url)
    worker = await asyncpg.connect(url.replace("billing_owner:billing_owner", "billing_worker:billing_worker"))
    yield conn, worker
    await worker.close()
    await conn.close()


async def _billed(conn, tid, sub, start, end, billed_at) -> None:
    await conn.execute(
        """insert into billed_periods (tenant_id, subscription_id, period_start, period_end, run_id, billed_at)
           values ($1, $2, $3, $4, $5, $6)""", tid, sub, start, end, uuid.uuid4(), billed_at)


async def _subscription(conn, tid) -> uuid.UUID:
    plan, sub = uuid.uuid4(), uuid.uuid4()
    await conn.execute("insert into plans (tenant_id, id, code, spec) values ($1, $2, $3, '{}')", tid, plan, f"p-{plan}")
    t = datetime(2025, 1, 1, tzinfo=UTC)
    await conn.execute(
        """insert into subscriptions (tenant_id, id, customer_id, plan_id, status, created_at, start_at, billing_anchor,
                                      trial_days, current_period_start, current_period_end)
           values ($1, $2, 'c', $3, 'active', $4, $4, $4, 0, $4, $5)""", tid, sub, plan, t, t + timedelta(days=31))
    return sub


async def test_retention_drops_only_billed_partitions_past_the_late_window(own_db):
    owner, worker = own_db
    tid = await _tenant(owner)
    subs = [await _subscription(owner, tid) for _ in range(4)]
    m = [datetime(2025, k, 1, tzinfo=UTC) for k in range(1, 8)]  # Jan .. Jul 2025
    for k in range(5):
        await partitions.ensure(owner, m[k].date())
    # Jan: billed long ago -> goes. Feb: never billed -> stays. Mar: billed, one late event
    # not billed yet -> stays. Apr: billed, but its period ended inside the late window -> stays.
    await _store(worker, tid, [("jan-1", subs[0], m[0] + timedelta(days=2), m[0], m[1], "1"),
                               ("jan-2", subs[0], m[0] + timedelta(days=3), m[0], m[1], "2")])
    await _billed(owner, tid, subs[0], m[0], m[1], m[1])
    await _store(worker, tid, [("feb-1", subs[1], m[1] + timedelta(days=2), m[1], m[2], "1")])
    await _store(worker, tid, [("mar-1", subs[2], m[2] + timedelta(days=2), m[2], m[3], "1")])
    await _billed(owner, tid, subs[2], m[2], m[3], m[3])
    await _store(worker, tid, [("mar-late", subs[2], m[2] + timedelta(days=5), m[2], m[3], "1")], late=True)
    apr_end = m[3] + timedelta(days=40)  # a 40-day period: Apr 1 -> May 11
    await _store(worker, tid, [("apr-1", subs[3], m[3] + timedelta(days=2), m[3], apr_end, "1")])
    await _billed(owner, tid, subs[3], m[3], apr_end, m[3] + timedelta(days=3))  # billed early (in advance)

    now = datetime(2025, 6, 5, tzinfo=UTC)  # one month of retention: billed before May 5
    policy = maintenance.RetentionPolicy(months=1, late_window=timedelta(days=35, seconds=300))
    report = await maintenance.apply_retention(owner, now, policy)
    assert report.dropped == ["usage_events_p2025_01"] and report.keys_deleted == 2
    assert report.kept["usage_events_p2025_02"]["unbilled"] == 1
    assert report.kept["usage_events_p2025_03"] == {"unbilled": 0, "in_late_window": 0, "late_unbilled": 1}
    assert report.kept["usage_events_p2025_04"] == {"unbilled": 0, "in_late_window": 1, "late_unbilled": 0}
    left = {r[0] for r in await owner.fetch("select event_id from usage_events where tenant_id = $1", tid)}
    assert left == {"feb-1", "mar-1", "mar-late", "apr-1"}
    assert "usage_events_p2025_01" not in {p.name for p in await partitions.monthly(owner)}
    assert await owner.fetchval("select to_regclass('usage_events_p2025_01')") is None
    # The totals (the billing record) stay; kept partitions still deduplicate.
    assert await owner.fetchval("select event_count from usage_totals where tenant_id = $1 and subscription_id = $2",
                                tid, subs[0]) == 2
    assert await _store(worker, tid, [("feb-1", subs[1], m[2], m[2], m[3], "1")]) == (0, 0, [])

    # The late event billed: March goes on the next pass; a second pass changes nothing more.
    await owner.execute("""insert into late_usage_billed (tenant_id, event_id, subscription_id, invoice_request_id,
                                                          run_id) values ($1, 'mar-late', $2, $3, $3)""",
                        tid, subs[2], uuid.uuid4())
    report = await maintenance.apply_retention(owner, now, policy)
    assert report.dropped == ["usage_events_p2025_03"]
    again = await maintenance.apply_retention(owner, now, policy)
    assert again.dropped == [] and set(again.kept) == {"usage_events_p2025_02", "usage_events_p2025_04"}


async def test_retention_can_keep_a_partition_detached_for_an_archive_and_is_off_at_zero(own_db):
    owner, worker = own_db
    tid = await _tenant(owner)
    sub = await _subscription(owner, tid)
    jan, feb = datetime(2025, 1, 1, tzinfo=UTC), datetime(2025, 2, 1, tzinfo=UTC)
    await partitions.ensure(owner, jan.date())
    await _store(worker, tid, [("a-1", sub, jan + timedelta(days=1), jan, feb, "1")])
    await _billed(owner, tid, sub, jan, feb, feb)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    window = timedelta(days=35)
    off = await maintenance.apply_retention(owner, now, maintenance.RetentionPolicy(months=0, late_window=window))
    assert off.dropped == [] and off.detached == []
    # A long reader of usage_events holds the detach back: this pass gives up at its lock timeout.
    async with worker.transaction():
        await worker.execute("select set_config('billing.tenant_id', $1, true)", str(tid))
        await worker.fetchval("select count(*) from usage_events")
        impatient = maintenance.RetentionPolicy(months=1, late_window=window, lock_timeout_s=0.2)
        blocked = await maintenance.apply_retention(owner, now, impatient)
    assert blocked.kept == {"usage_events_p2025_01": {"lock_timeout": 1}} and blocked.dropped == []
    keep = maintenance.RetentionPolicy(months=1, late_window=window, drop=False)
    report = await maintenance.apply_retention(owner, now, keep)
    assert report.detached == ["usage_events_p2025_01"] and report.dropped == []
    assert await owner.fetchval("select count(*) from usage_events where tenant_id = $1", tid) == 0
    assert await owner.fetchval("select count(*) from usage_events_p2025_01") == 1  # the archive, detached


async def test_outbox_months_go_once_every_row_is_published_and_ids_go_on(own_db):
    owner, _ = own_db
    tid = await _tenant(owner)
    jan, feb = datetime(2025, 1, 10, tzinfo=UTC), datetime(2025, 2, 10, tzinfo=UTC)
    for m in (jan, feb):
        await partitions.ensure(owner, m.date().replace(day=1), partitions.OUTBOX)
    ids = [await owner.fetchval("""insert into outbox (tenant_id, stream, payload, created_at, published_at)
                                   values ($1, 's', 'x', $2, $3) returning id""", tid, at, published)
           for at, published in ((jan, jan), (jan, jan), (feb, feb), (feb, None))]
    assert ids == sorted(ids)
    now = datetime(2025, 6, 1, tzinfo=UTC)
    policy = maintenance.RetentionPolicy(months=0, late_window=timedelta(days=35), outbox_days=30)
    report = await maintenance.apply_retention(owner, now, policy)
    assert report.dropped == ["outbox_p2025_01"] and report.kept == {"outbox_p2025_02": {"unpublished": 1}}
    assert [r[0] for r in await owner.fetch("select id from outbox where tenant_id = $1 order by id", tid)] == ids[2:]
    later = await owner.fetchval("insert into outbox (tenant_id, stream, payload) values ($1, 's', 'y') returning id",
                                 tid)
    assert later > ids[-1]
    assert await owner.fetchval("select tableoid::regclass::text from outbox where id = $1", later) != "outbox_default"


async def test_audit_months_are_detached_for_an_archive_never_dropped_and_rows_never_deleted(own_db):
    owner, worker = own_db
    tid = await _tenant(owner)
    old, recent = datetime(2025, 1, 10, tzinfo=UTC), datetime(2025, 5, 10, tzinfo=UTC)
    for m in (old, recent):
        await partitions.ensure(owner, m.date().replace(day=1), partitions.AUDIT)
    for at in (old, recent):
        await owner.execute("""insert into audit_events (tenant_id, entity_type, entity_id, action, actor, at)
                               values ($1, 'subscription', $2, 'created', 'test', $3)""", tid, uuid.uuid4(), at)
    policy = maintenance.RetentionPolicy(months=0, late_window=timedelta(days=35), audit_months=3)
    report = await maintenance.apply_retention(owner, datetime(2025, 6, 1, tzinfo=UTC), policy)
    assert report.detached == ["audit_events_p2025_01"] and report.dropped == []
    assert await owner.fetchval("select count(*) from audit_events_p2025_01") == 1  # the archive
    assert await owner.fetchval("select count(*) from audit_events where tenant_id = $1", tid) == 1
    again = await maintenance.apply_retention(owner, datetime(2025, 6, 1, tzinfo=UTC), policy)
    assert again.dropped == [] and await owner.fetchval("select to_regclass('audit_events_p2025_01')") is not None
    # Rows are never deleted, not even by the owner; the worker has no DELETE at all.
    with pytest.raises(asyncpg.RaiseError, match="append-only"):
        await owner.execute("delete from audit_events where tenant_id = $1", tid)
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await worker.execute("delete from audit_events")
