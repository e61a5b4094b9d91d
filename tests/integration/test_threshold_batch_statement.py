"""The thresholds judged inside the usage batch's statement (store/thresholds.BATCH_CTES,
store/usage.store_batch; docs/alerts.md): both forms of the statement (ON CONFLICT for small
batches, MERGE for large ones, whose planner settings differ) record the same crossings and
write one alert each, none again for later batches or a replay; a threshold created above
the total fires with the next batch that adds usage; and a crossing another transaction
records while the batch's statement runs is not announced by the batch."""
from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timezone

import pytest

from billing import codec
from billing.domain.periods import to_us
from billing.services.usage import PlanCache, UsageEvent, UsageLimits, ingest
from billing.store import usage as usage_store
from billing.v1 import billing_pb2 as pb
from tests.integration.test_usage_ingest import _setup

UTC = timezone.utc


async def _threshold(stub, tenant, sub_id: str, value: str, **kw):
    return (await stub.CreateThreshold(pb.CreateThresholdRequest(
        request_id=str(uuid.uuid4()), subscription_id=sub_id, value=value, **kw), metadata=tenant.md)).threshold


async def _store(worker_db, tenant, sub_id: str, quantities: list[str], prefix: str) -> None:
    now = to_us(datetime.now(UTC))
    events = [UsageEvent(f"{prefix}-{i}", tenant.id, sub_id, "calls", q, now + i) for i, q in enumerate(quantities)]
    async with worker_db.pool.acquire() as conn:
        async with conn.transaction():
            result = await ingest(conn, events, now_us=now + 1_000_000, limits=UsageLimits(), plans=PlanCache())
    assert not result.rejected


async def _alerts(admin_conn, tenant) -> list[tuple[str, str, str]]:
    rows = await admin_conn.fetch("select payload from outbox where tenant_id = $1 and stream = 'usage_alerts' "
                                  "order by id", uuid.UUID(tenant.id))
    out = []
    for r in rows:
        a = codec.decode(codec.Schema.USAGE_ALERT, bytes(r["payload"]))
        out.append((a["threshold_id"], a["threshold_value"], a["quantity"]))
    return out


@pytest.mark.parametrize("merge_min_rows", [10_000, 2], ids=["on_conflict", "merge"])
async def test_each_crossing_recorded_and_announced_once(stub, new_tenant, admin_conn, worker_db, monkeypatch,
                                                         merge_min_rows):
    monkeypatch.setattr(usage_store, "MERGE_MIN_ROWS", merge_min_rows)
    tenant = await new_tenant()
    plan, sub = await _setup(stub, tenant)
    five = await _threshold(stub, tenant, sub.id, "5", metric_code="calls")
    ten = await _threshold(stub, tenant, sub.id, "10", metric_code="calls")
    once = await _threshold(stub, tenant, sub.id, "3", metric_code="calls", once=True)
    await _threshold(stub, tenant, sub.id, "1000", metric_code="calls")  # never reached
    plan_wide = (await stub.CreateThreshold(pb.CreateThresholdRequest(
        request_id=str(uuid.uuid4()), plan_id=plan.id, metric_code="calls", value="7"), metadata=tenant.md)).threshold
    amount = await _threshold(stub, tenant, sub.id, "0.05", measure="amount")  # calls at 0.01: 5 calls

    await _store(worker_db, tenant, sub.id, ["2", "2"], "a")  # 4: crosses the one-off (3) only
    await _store(worker_db, tenant, sub.id, ["4", "4", "1"], "b")  # 13: 5, 7 (the plan's), 10, amount 0.13
    await _store(worker_db, tenant, sub.id, ["4", "4", "1"], "b")  # a replay: nothing inserted, nothing crossed
    await _store(worker_db, tenant, sub.id, ["1"], "c")  # 14: nothing new
    eleven = await _threshold(stub, tenant, sub.id, "11", metric_code="calls")  # created above the total
    await _store(worker_db, tenant, sub.id, ["1"], "d")  # 15: fires it

    alerts = await _alerts(admin_conn, tenant)
    assert alerts == [(once.id, "3", "4"), (five.id, "5", "13"), (plan_wide.id, "7", "13"), (ten.id, "10", "13"),
                      (amount.id, "0.05", "0.13"), (eleven.id, "11", "15")]
    crossings = await admin_conn.fetchval("select count(*) from usage_threshold_crossings where tenant_id = $1",
                                          uuid.UUID(tenant.id))
    assert crossings == len(alerts)


async def test_a_crossing_recorded_meanwhile_by_another_transaction_is_not_announced(
        stub, new_tenant, admin_conn, worker_db):
    tenant = await new_tenant()
    _, sub = await _setup(stub, tenant)
    five = await _threshold(stub, tenant, sub.id, "5", metric_code="calls")
    ten = await _threshold(stub, tenant, sub.id, "10", metric_code="calls")
    period_start = await admin_conn.fetchval("select current_period_start from subscriptions where id = $1",
                                             uuid.UUID(sub.id))
    other = admin_conn.transaction()
    await other.start()
    try:
        # Recorded, not committed yet: the batch's statement does not see it, and its insert waits.
        await admin_conn.execute(
            "insert into usage_threshold_crossings (tenant_id, threshold_id, subscription_id, period_start) "
            "values ($1, $2, $3, $4)", uuid.UUID(tenant.id), uuid.UUID(five.id), uuid.UUID(sub.id), period_start)
        storing = asyncio.create_task(_store(worker_db, tenant, sub.id, ["6", "6"], "a"))  # 12: 5 and 10
        await asyncio.sleep(1.0)
        assert not storing.done()
    finally:
        await other.commit()
    await storing
    assert [a[0] for a in await _alerts(admin_conn, tenant)] == [ten.id]
