"""The large batch's key probe (store/usage.py, `_PROBE_PER_KEY`): the MERGE of the event
keys looks each staged key up in the key index, whatever the statistics say, and the
planner settings it needs last for that statement only."""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

from billing.domain.periods import to_us
from billing.store import usage as usage_store

UTC = timezone.utc
START = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
END = START + timedelta(days=28)
SETTINGS = ("enable_hashjoin", "enable_mergejoin", "enable_bitmapscan", "enable_seqscan", "enable_material")


def _batch(n: int, sub: uuid.UUID) -> usage_store.Batch:
    b = usage_store.Batch()
    for i in range(n):
        event = SimpleNamespace(event_id=str(uuid.uuid4()), metric_code="calls", quantity="1",
                                occurred_at_us=to_us(START + timedelta(seconds=i)), properties=None)
        b.add(i, event, sub, to_us(START), to_us(END), False)
    return b


async def _tenant_with_keys(admin_conn, keys: int) -> uuid.UUID:
    tid = uuid.uuid4()
    await admin_conn.execute("insert into tenants (id, name) values ($1, 'key-probe')", tid)
    await admin_conn.execute("insert into usage_event_ids (tenant_id, event_key) "
                             "select $1, gen_random_uuid() from generate_series(1, $2)", tid, keys)
    return tid


async def _settings(conn) -> list[str]:
    return [await conn.fetchval(f"show {name}") for name in SETTINGS]


async def test_the_merge_probes_the_key_index_per_key(admin_conn, worker_db):
    """A tenant whose keys the statistics do not know of (none analyzed since they were
    written): the generic plan, the one a prepared statement keeps, still probes per key."""
    tid = await _tenant_with_keys(admin_conn, 20_000)
    async with worker_db.pool.acquire() as conn:
        async with conn.transaction():
            await conn.execute("select set_config('billing.tenant_id', $1, true)", str(tid))
            await conn.copy_records_to_table("usage_staging", records=_batch(2000, uuid.uuid4()).rows)
            await conn.execute(f"set local plan_cache_mode = force_generic_plan; {usage_store._PROBE_PER_KEY}")
            plan = "\n".join(r[0] for r in await conn.fetch("explain " + usage_store._MERGE_BATCH, tid))
        # (committed: the staged rows go with it, ON COMMIT DELETE ROWS)
    lines = [line for line in plan.splitlines() if "usage_event_ids" in line and "Merge on" not in line]
    assert lines and all("Index Scan using usage_event_ids_pkey" in line for line in lines), plan
    assert "Hash" not in plan.split("CTE inserted")[0], plan


async def test_the_settings_last_for_the_statement_only(admin_conn, worker_db):
    tid = await _tenant_with_keys(admin_conn, 10)
    sub = uuid.uuid4()
    async with worker_db.pool.acquire() as conn:
        before = await _settings(conn)
        assert before == ["on"] * len(SETTINGS)
        async with conn.transaction():
            await conn.execute("select set_config('billing.tenant_id', $1, true)", str(tid))
            inserted, _, _ = await usage_store.insert_batch(conn, tid, _batch(usage_store.MERGE_MIN_ROWS, sub))
            assert inserted == usage_store.MERGE_MIN_ROWS
            assert await _settings(conn) == before  # the rest of the transaction plans as usual
        assert await _settings(conn) == before
    assert await admin_conn.fetchval("select count(*) from usage_event_ids where tenant_id = $1", tid) \
        == 10 + usage_store.MERGE_MIN_ROWS
