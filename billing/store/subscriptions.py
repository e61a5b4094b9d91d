"""Rows of subscriptions: the current state; history lives in audit_events."""
from __future__ import annotations

import uuid
from datetime import datetime

import asyncpg

from billing.domain.lifecycle import SubscriptionStatus
from billing.domain.subscriptions import Subscription

FIELDS = (
    "id", "customer_id", "plan_id", "status", "created_at", "start_at", "billing_anchor", "trial_days",
    "current_period_start", "current_period_end", "trial_end", "cancel_at_period_end", "canceled_at", "paused_at",
    "pause_resumes_at", "pending_plan_id", "pending_change_at", "metadata", "period_fee_from",
    "time_zone",
)
_COLUMNS = ", ".join(FIELDS)


def from_row(row: asyncpg.Record) -> Subscription:
    values = {f: row[f] for f in FIELDS}
    values["status"] = SubscriptionStatus(values["status"])
    return Subscription(**values)


def _values(sub: Subscription) -> list:
    values = [getattr(sub, f) for f in FIELDS]
    values[FIELDS.index("status")] = sub.status.value
    values[FIELDS.index("metadata")] = dict(sub.metadata)
    return values


async def insert(conn: asyncpg.Connection, tenant_id: uuid.UUID, sub: Subscription,
                 test_clock_id: uuid.UUID | None = None) -> None:
    """`test_clock_id`: the test clock the subscription lives on (migration 021; never changes)."""
    placeholders = ", ".join(f"${i + 2}" for i in range(len(FIELDS) + 1))
    await conn.execute(f"insert into subscriptions (tenant_id, {_COLUMNS}, test_clock_id) values ($1, {placeholders})",
                       tenant_id, *_values(sub), test_clock_id)


async def update(conn: asyncpg.Connection, tenant_id: uuid.UUID, sub: Subscription) -> None:
    fields = [f for f in FIELDS if f != "id"]
    sets = ", ".join(f"{f} = ${i + 3}" for i, f in enumerate(fields))
    values = [v for f, v in zip(FIELDS, _values(sub)) if f != "id"]
    await conn.execute(f"update subscriptions set {sets}, updated_at = now() where tenant_id = $1 and id = $2",
                       tenant_id, sub.id, *values)


async def get(conn: asyncpg.Connection, tenant_id: uuid.UUID, sub_id: uuid.UUID, *,
              for_update: bool = False) -> Subscription | None:
    lock = " for update" if for_update else ""
    row = await conn.fetchrow(f"select {_COLUMNS} from subscriptions where tenant_id = $1 and id = $2{lock}",
                              tenant_id, sub_id)
    return from_row(row) if row else None


async def list_page(conn: asyncpg.Connection, tenant_id: uuid.UUID, *, status: str | None, customer_id: str | None,
                    plan_id: uuid.UUID | None, after: tuple[datetime, uuid.UUID] | None,
                    limit: int) -> list[Subscription]:
    after_at, after_id = after if after else (None, None)
    rows = await conn.fetch(
        f"""select {_COLUMNS} from subscriptions
            where tenant_id = $1
              and ($2::text is null or status = $2)
              and ($3::text is null or customer_id = $3)
              and ($4::uuid is null or plan_id = $4)
              and ($5::timestamptz is null or (created_at, id) < ($5, $6))
            order by created_at desc, id desc limit $7""",
        tenant_id, status, customer_id, plan_id, after_at, after_id, limit,
    )
    return [from_row(r) for r in rows]


async def due_to_resume(conn: asyncpg.Connection, tenant_id: uuid.UUID, now: datetime, limit: int,
                        exclude: list[uuid.UUID] = (), test_clock_id: uuid.UUID | None = None) -> list[Subscription]:
    """Paused subscriptions whose scheduled resume has come, oldest first, locked FOR UPDATE
    SKIP LOCKED: concurrent passes (replicas) split them and never wait for each other; a row
    locked by a ResumeSubscription or a billing chunk is taken by the next pass. `exclude`:
    ids this pass already failed on. Served by the partial index subscriptions_resume_due.
    `test_clock_id`: the subscriptions of that test clock; None: those on real time only."""
    rows = await conn.fetch(
        f"""select {_COLUMNS} from subscriptions
            where tenant_id = $1 and status = 'paused' and pause_resumes_at <= $2
              and not (id = any($4::uuid[])) and test_clock_id is not distinct from $5
            order by pause_resumes_at, id limit $3
            for update skip locked""",
        tenant_id, now, limit, list(exclude), test_clock_id,
    )
    return [from_row(r) for r in rows]
