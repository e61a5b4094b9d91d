"""The billing scheduler: one run per tenant and slot, whatever how many schedulers ask."""
from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timezone

from billing.services.scheduler import schedule_once, slot_start
from billing.store.db import Database


def test_slots_are_aligned():
    at = datetime(2026, 11, 24, 10, 17, 42, tzinfo=timezone.utc)
    assert slot_start(at, 3600) == datetime(2026, 11, 24, 10, 0, tzinfo=timezone.utc)
    assert slot_start(at, 300) == datetime(2026, 11, 24, 10, 15, tzinfo=timezone.utc)


async def test_every_tenant_gets_one_run_per_slot(migrated, new_tenant, admin_conn):
    a, b = await new_tenant(), await new_tenant()
    db = await Database.connect(migrated.worker_database_url, min_size=1, max_size=4)
    try:
        now = datetime.now(timezone.utc)
        # Three schedulers at once (replicas), then one more later in the same slot.
        await asyncio.gather(*(schedule_once(db, now, 3600) for _ in range(3)))
        await schedule_once(db, now, 3600)
    finally:
        await db.close()
    slot = slot_start(now, 3600)
    for t in (a, b):
        rows = await admin_conn.fetch("select idempotency_key, as_of from billing_runs where tenant_id = $1",
                                      uuid.UUID(t.id))
        assert [(r["idempotency_key"], r["as_of"]) for r in rows] == [(f"scheduler:{slot.isoformat()}", slot)]
