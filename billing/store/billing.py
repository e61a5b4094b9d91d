"""Rows of billing_runs and billed_periods, and the billing run's reads of subscriptions and totals."""
from __future__ import annotations

import uuid
from datetime import datetime

import asyncpg

from billing.store import subscriptions as subs_store

_RUN = """tenant_id, id, idempotency_key, as_of, status, subscriptions_due, subscriptions_billed,
          subscriptions_skipped, subscriptions_failed, failures, totals, created_at, started_at, finished_at"""


async def insert_run(conn: asyncpg.Connection, tenant_id: uuid.UUID, run_id: uuid.UUID, key: str,
                     as_of: datetime) -> asyncpg.Record | None:
    """The new run, or None when the key names a run already (a concurrent insert of the same
    key waits here for the other transaction, then sees its row)."""
    return await conn.fetchrow(
        f"""insert into billing_runs (tenant_id, id, idempotency_key, as_of) values ($1, $2, $3, $4)
            on conflict (tenant_id, idempotency_key) do nothing returning {_RUN}""",
        tenant_id, run_id, key, as_of,
    )


async def get_run_by_key(conn: asyncpg.Connection, tenant_id: uuid.UUID, key: str) -> asyncpg.Record | None:
    return await conn.fetchrow(f"select {_RUN} from billing_runs where tenant_id = $1 and idempotency_key = $2",
                               tenant_id, key)


async def get_run(conn: asyncpg.Connection, tenant_id: uuid.UUID, run_id: uuid.UUID, *,
                  for_update: bool = False) -> asyncpg.Record | None:
    lock = " for update" if for_update else ""
    return await conn.fetchrow(f"select {_RUN} from billing_runs where tenant_id = $1 and id = $2{lock}",
                               tenant_id, run_id)


async def list_runs(conn: asyncpg.Connection, tenant_id: uuid.UUID, *, status: str | None,
                    created_after: datetime | None, created_before: datetime | None,
                    after: tuple[datetime, uuid.UUID] | None, limit: int) -> list[asyncpg.Record]:
    after_at, after_id = after if after else (None, None)
    return await conn.fetch(
        f"""select {_RUN} from billing_runs
            where tenant_id = $1
              and ($2::text is null or status = $2)
              and ($3::timestamptz is null or created_at >= $3)
              and ($4::timestamptz is null or created_at < $4)
              and ($5::timestamptz is null or (created_at, id) < ($5, $6))
            order by created_at desc, id desc limit $7""",
        tenant_id, status, created_after, created_before, after_at, after_id, limit,
    )


async def mark_running(conn: asyncpg.Connection, tenant_id: uuid.UUID, run_id: uuid.UUID) -> None:
    await conn.execute(
        """update billing_runs set status = 'running', started_at = coalesce(started_at, now())
            where tenant_id = $1 and id = $2 and status in ('pending', 'running')""", tenant_id, run_id)


async def mark_finished(conn: asyncpg.Connection, tenant_id: uuid.UUID, run_id: uuid.UUID, status: str) -> None:
    await conn.execute(
        """update billing_runs set status = $3, finished_at = coalesce(finished_at, now())
            where tenant_id = $1 and id = $2""", tenant_id, run_id, status)


async def add_progress(conn: asyncpg.Connection, tenant_id: uuid.UUID, run_id: uuid.UUID, *, due: int, billed: int,
                       skipped: int, failed: int, failures: list[dict], totals: dict[str, str]) -> None:
    """Add one chunk's counts; `totals` replaces the stored totals (the caller merged them
    under the run row's lock)."""
    await conn.execute(
        """update billing_runs set subscriptions_due = subscriptions_due + $3,
                  subscriptions_billed = subscriptions_billed + $4, subscriptions_skipped = subscriptions_skipped + $5,
                  subscriptions_failed = subscriptions_failed + $6, failures = failures || $7::jsonb, totals = $8
            where tenant_id = $1 and id = $2""",
        tenant_id, run_id, due, billed, skipped, failed, failures, totals,
    )


async def due_subscriptions(conn: asyncpg.Connection, tenant_id: uuid.UUID, as_of: datetime,
                            exclude: list[uuid.UUID], limit: int):
    """Up to `limit` due subscriptions, locked. SKIP LOCKED: rows another run (or another
    execution of this run) is billing right now are left to it; once it commits they are
    no longer due, which the re-check of the locked row's new version sees."""
    rows = await conn.fetch(
        f"""select {subs_store._COLUMNS} from subscriptions
            where tenant_id = $1 and status in ('trialing', 'active', 'paused') and current_period_end <= $2
              and not (id = any($3::uuid[]))
            order by id limit $4
            for update skip locked""",
        tenant_id, as_of, exclude, limit,
    )
    return [subs_store.from_row(r) for r in rows]


async def any_due(conn: asyncpg.Connection, tenant_id: uuid.UUID, as_of: datetime, exclude: list[uuid.UUID]) -> bool:
    """Whether a due subscription remains, locked rows included (a plain read does not wait
    for locks: a row another execution is billing still looks due until it commits)."""
    return await conn.fetchval(
        """select exists(select 1 from subscriptions
            where tenant_id = $1 and status in ('trialing', 'active', 'paused') and current_period_end <= $2
              and not (id = any($3::uuid[])))""",
        tenant_id, as_of, exclude,
    )


async def opened_by_a_run(conn: asyncpg.Connection, tenant_id: uuid.UUID, subs: list[tuple[uuid.UUID, datetime]],
                          ) -> set[uuid.UUID]:
    """The subscriptions whose current period (given by its start) follows a billed period,
    i.e. was opened, and charged in advance, by a run."""
    rows = await conn.fetch(
        """select b.subscription_id from unnest($2::uuid[], $3::timestamptz[]) as s(id, start)
             join billed_periods b on b.tenant_id = $1 and b.subscription_id = s.id and b.period_end = s.start""",
        tenant_id, [s for s, _ in subs], [t for _, t in subs],
    )
    return {r["subscription_id"] for r in rows}


async def period_totals(conn: asyncpg.Connection, tenant_id: uuid.UUID,
                        periods: list[tuple[uuid.UUID, datetime]]) -> list[asyncpg.Record]:
    return await conn.fetch(
        """select t.subscription_id, t.period_start, t.metric_code, t.quantity_sum, t.event_count, t.quantity_max,
                  t.latest_quantity
             from unnest($2::uuid[], $3::timestamptz[]) as p(id, start)
             join usage_totals t on t.tenant_id = $1 and t.subscription_id = p.id and t.period_start = p.start""",
        tenant_id, [s for s, _ in periods], [t for _, t in periods],
    )


async def insert_billed_period(conn: asyncpg.Connection, tenant_id: uuid.UUID, subscription_id: uuid.UUID,
                               start: datetime, end: datetime, invoice_request_id: uuid.UUID | None,
                               run_id: uuid.UUID) -> bool:
    """True if the period is now marked billed by this call; False if it was billed before."""
    status = await conn.execute(
        """insert into billed_periods (tenant_id, subscription_id, period_start, period_end, invoice_request_id, run_id)
           values ($1, $2, $3, $4, $5, $6) on conflict do nothing""",
        tenant_id, subscription_id, start, end, invoice_request_id, run_id,
    )
    return status.endswith(" 1")
