"""The dedup key of an event id (usage_event_ids.event_key) is computed by the service, not in
SQL: it must be exactly PostgreSQL's md5(event_id)::uuid, which migration 032, the keys of
earlier versions, delete_test_clock and the retention's key cleanup compute."""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

from billing.store import usage as usage_store
from tests.integration.test_usage_partitions import _store, _tenant

IDS = ["e-1", str(uuid.uuid4()), "ünïcödé-€-日本語", "\U0001F600" * 10, "a" * 200, " spaced\tid\n"]


async def test_the_key_of_an_event_id_is_postgresqls_md5_of_its_text(admin_conn):
    for event_id in IDS:
        assert usage_store.event_key(event_id) == await admin_conn.fetchval("select md5($1)::uuid", event_id), event_id


async def test_keys_stored_in_sql_refuse_the_event_and_stored_keys_are_found_by_sql(admin_conn, worker_db):
    tid = await _tenant(admin_conn)
    sub = uuid.uuid4()
    start = datetime.now(timezone.utc).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end, at = start + timedelta(days=28), start + timedelta(hours=1)
    # Stored by SQL (a previous version, the upgrade): the same ids sent now are duplicates.
    await admin_conn.execute("insert into usage_event_ids (tenant_id, event_key) select $1, md5(i)::uuid "
                             "from unnest($2::text[]) as i", tid, IDS[:3])
    async with worker_db.pool.acquire() as conn:
        inserted, _, ids = await _store(conn, tid, [(i, sub, at, start, end, "1") for i in IDS])
    assert (inserted, sorted(ids)) == (3, sorted(IDS[3:]))
    # Stored by the service: SQL finds each event's key from its text.
    assert await admin_conn.fetchval(
        """select count(*) from usage_events e join usage_event_ids k
               on k.tenant_id = e.tenant_id and k.event_key = md5(e.event_id)::uuid
            where e.tenant_id = $1""", tid) == 3
    assert await admin_conn.fetchval("select sum(event_count) from usage_totals where tenant_id = $1", tid) == 3
