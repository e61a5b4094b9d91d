"""The large batch's form of the usage statement (store/usage.py, `_MERGE_BATCH`): the same
events stored and the same totals as the ON CONFLICT form, a key another transaction
inserts meanwhile rolled back to that form (a duplicate, not an error), and the staging
table read for one tenant only when a transaction stores several."""
from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest

from billing.domain.periods import to_us
from billing.store import usage as usage_store

UTC = timezone.utc
START = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
END = START + timedelta(days=28)


def _batch(rows: list[tuple[str, uuid.UUID, str]]) -> usage_store.Batch:
    """rows of (event id, subscription, quantity), all in the period [START, END)."""
    b = usage_store.Batch()
    for i, (eid, sub, qty) in enumerate(rows):
        event = SimpleNamespace(event_id=eid, metric_code="calls", quantity=qty,
                                occurred_at_us=to_us(START + timedelta(seconds=i)), properties=None)
        b.add(i, event, sub, to_us(START), to_us(END), False)
    return b


async def _enter(conn, tid: uuid.UUID) -> None:
    await conn.execute("select set_config('billing.tenant_id', $1, true)", str(tid))


async def _tenant(conn) -> uuid.UUID:
    tid = uuid.uuid4()
    await conn.execute("insert into tenants (id, name) values ($1, 'merge-batch')", tid)
    return tid


async def _totals(conn, tid: uuid.UUID) -> dict:
    rows = await conn.fetch("select subscription_id, quantity_sum, event_count, latest_event_id from usage_totals "
                            "where tenant_id = $1", tid)
    return {r["subscription_id"]: (r["quantity_sum"], r["event_count"], r["latest_event_id"]) for r in rows}


@pytest.fixture
def merge_from_two(monkeypatch):
    monkeypatch.setattr(usage_store, "MERGE_MIN_ROWS", 2)


async def test_both_forms_store_the_same_events_and_totals(admin_conn, worker_db, monkeypatch):
    subs = [uuid.uuid4() for _ in range(3)]
    first = [(f"a-{i}", subs[i % 3], str(i % 7)) for i in range(30)]
    # Duplicates of the first batch, duplicates within the batch (the first row wins), new ids.
    second = [(f"a-{i}", subs[0], "100") for i in range(0, 30, 4)] + [("b-1", subs[1], "2"), ("b-1", subs[2], "50")] \
        + [(f"b-{i}", subs[i % 3], "3") for i in range(2, 12)]
    outcomes, totals = [], []
    for min_rows in (10_000, 2):  # the ON CONFLICT form, then the MERGE form
        monkeypatch.setattr(usage_store, "MERGE_MIN_ROWS", min_rows)
        tid = await _tenant(admin_conn)
        got = []
        async with worker_db.pool.acquire() as conn:
            for rows in (first, second):
                async with conn.transaction():
                    await _enter(conn, tid)
                    inserted, late, ids = await usage_store.insert_batch(conn, tid, _batch(rows), want_ids=True)
                    got.append((inserted, late, sorted(ids)))
        outcomes.append(got)
        totals.append(await _totals(admin_conn, tid))
        assert await admin_conn.fetchval("select count(*) from usage_events where tenant_id = $1", tid) == 41
        assert await admin_conn.fetchval("select quantity from usage_events where tenant_id = $1 and event_id = 'b-1'",
                                         tid) == 2
    assert outcomes[0] == outcomes[1]
    assert outcomes[1][1][:2] == (11, 0) and totals[0] == totals[1]


async def test_a_key_inserted_meanwhile_by_another_transaction_is_a_duplicate(admin_conn, worker_db, merge_from_two):
    tid = await _tenant(admin_conn)
    sub = uuid.uuid4()
    async with worker_db.pool.acquire() as other, worker_db.pool.acquire() as conn:
        other_tx = other.transaction()
        await other_tx.start()
        await _enter(other, tid)
        assert (await usage_store.insert_batch(other, tid, _batch([("x-5", sub, "1")]), want_ids=True))[0] == 1
        async with conn.transaction():
            await _enter(conn, tid)
            # x-5's key is taken by a transaction still open: the MERGE waits for it, and
            # fails on its commit; the ON CONFLICT form then counts x-5 as a duplicate.
            storing = asyncio.create_task(usage_store.insert_batch(
                conn, tid, _batch([(f"x-{i}", sub, "10") for i in range(10)]), want_ids=True))
            await asyncio.sleep(0.5)
            assert not storing.done()
            await other_tx.commit()
            inserted, late, ids = await storing
            assert (inserted, late) == (9, 0) and "x-5" not in ids
            assert await conn.fetchval("select count(*) from usage_staging") == 10  # nothing lost by the rollback
    assert await _totals(admin_conn, tid) == {sub: (91, 10, "x-9")}
    assert await admin_conn.fetchval("select count(*) from usage_event_ids where tenant_id = $1", tid) == 10


async def test_one_transaction_storing_two_tenants_reads_each_tenants_rows_only(admin_conn, worker_db, merge_from_two):
    a, b = await _tenant(admin_conn), await _tenant(admin_conn)
    sub_a, sub_b = uuid.uuid4(), uuid.uuid4()
    async with worker_db.pool.acquire() as conn:
        async with conn.transaction():
            await _enter(conn, a)
            assert (await usage_store.insert_batch(conn, a, _batch([("e-1", sub_a, "1"), ("e-2", sub_a, "2")])))[0] == 2
            await _enter(conn, b)
            assert (await usage_store.insert_batch(conn, b, _batch([("e-1", sub_b, "5"), ("e-3", sub_b, "6")])))[0] == 2
            # The same tenant again in the transaction: its earlier rows are read again, as duplicates.
            assert (await usage_store.insert_batch(conn, b, _batch([("e-4", sub_b, "7"), ("e-3", sub_b, "8")])))[0] == 1
        async with conn.transaction():  # a later transaction on the same connection, the first tenant again
            await _enter(conn, a)
            assert (await usage_store.insert_batch(conn, a, _batch([("e-5", sub_a, "3"), ("e-9", sub_a, "4")])))[0] == 2
    assert await _totals(admin_conn, a) == {sub_a: (10, 4, "e-9")}
    assert await _totals(admin_conn, b) == {sub_b: (18, 3, "e-3")}
    events = await admin_conn.fetch("select tenant_id, event_id from usage_events where tenant_id = any($1::uuid[])",
                                    [a, b])
    assert sorted((r["tenant_id"] == a, r["event_id"]) for r in events) == [
        (False, "e-1"), (False, "e-3"), (False, "e-4"), (True, "e-1"), (True, "e-2"), (True, "e-5"), (True, "e-9")]
