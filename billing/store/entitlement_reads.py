"""CheckEntitlement's read in one statement (migration 040, `entitlement_check`): the key
check, the tenant, the subscriptions of a group of checks, their plans' specs when the caller
has not cached them, their current periods' usage totals and the event counts asked for, in a
single round trip, where a `tenant_tx` takes three or more (BEGIN, the reads, COMMIT)."""
from __future__ import annotations

import uuid
from typing import Sequence

import asyncpg

_READ = "select * from entitlement_check($1, $2, $3, $4, $5, $6, $7, $8, $9)"


async def read(conn: asyncpg.Connection, tenant_id: uuid.UUID, key_hashes: Sequence[bytes], token: str | None,
               subscription_ids: Sequence[uuid.UUID], with_usage: bool, known_plans: Sequence[uuid.UUID],
               unique_metrics: Sequence[str] = (), unique_properties: Sequence[str] = (),
               gauge_metrics: Sequence[str] = ()) -> list[asyncpg.Record]:
    """Rows named by `subscription_id`; none for a subscription the tenant does not have.
    Per subscription, first the usage totals of its current period, one per metric
    (`metric_code` None on the only one when there is none or they are not read: `with_usage`
    false and its plan among `known_plans`); `spec` is the plan's stored spec on those rows
    when the plan is not among `known_plans`, else None. Then one row per (unique metric,
    property) with its `unique_count`, and one per gauge metric with `gauge_level`,
    `gauge_at_us` and `gauge_quantities` (none for a subscription without a current period)."""
    return await conn.fetch(_READ, tenant_id, key_hashes, token, subscription_ids, with_usage, known_plans,
                            unique_metrics, unique_properties, gauge_metrics)
