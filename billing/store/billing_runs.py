"""Rows of billing_runs and billing_run_shards: a run, its counters, and its shards as durable jobs."""
from __future__ import annotations

import uuid
from datetime import datetime

import asyncpg

_RUN = """tenant_id, id, idempotency_key, as_of, status, subscriptions_due, subscriptions_billed,
          subscriptions_skipped, subscriptions_failed, failures, totals, created_at, started_at, finished_at,
          shard_count, test_clock_id"""


async def insert_run(conn: asyncpg.Connection, tenant_id: uuid.UUID, run_id: uuid.UUID, key: str,
                     as_of: datetime, test_clock_id: uuid.UUID | None = None) -> asyncpg.Record | None:
    """The new run, or None when the key names a run already (a concurrent insert of the same
    key waits here for the other transaction, then sees its row). `test_clock_id`: a run of
    that test clock's subscriptions only (an advance)."""
    return await conn.fetchrow(
        f"""insert into billing_runs (tenant_id, id, idempotency_key, as_of, test_clock_id) values ($1, $2, $3, $4, $5)
            on conflict (tenant_id, idempotency_key) do nothing returning {_RUN}""",
        tenant_id, run_id, key, as_of, test_clock_id,
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


# -- shards -------------------------------------------------------------------------------

async def set_shard_count(conn: asyncpg.Connection, tenant_id: uuid.UUID, run_id: uuid.UUID, count: int) -> None:
    await conn.execute("update billing_runs set shard_count = $3 where tenant_id = $1 and id = $2",
                       tenant_id, run_id, count)


async def start_shard(conn: asyncpg.Connection, tenant_id: uuid.UUID, run_id: uuid.UUID, shard: int,
                      executor: str) -> str:
    """Record that a shard is being executed (by `executor`); its status ('running' or
    'completed': then it stays as it was)."""
    return await conn.fetchval(
        """insert into billing_run_shards as s (tenant_id, run_id, shard, executed_by) values ($1, $2, $3, $4)
           on conflict (tenant_id, run_id, shard) do update
               set executed_by = case when s.status = 'completed' then s.executed_by else excluded.executed_by end,
                   status = case when s.status = 'pending' then 'running' else s.status end,
                   started_at = case when s.status = 'pending' then now() else s.started_at end
           returning status""", tenant_id, run_id, shard, executor)


# -- shards as durable jobs (migration 017) ---------------------------------------------

async def record_shard(conn: asyncpg.Connection, tenant_id: uuid.UUID, run_id: uuid.UUID, shard: int,
                       traceparent: str) -> None:
    """A shard to execute (pending, claimable at once); nothing when it is recorded already."""
    await conn.execute(
        """insert into billing_run_shards (tenant_id, run_id, shard, status, traceparent)
           values ($1, $2, $3, 'pending', $4) on conflict (tenant_id, run_id, shard) do nothing""",
        tenant_id, run_id, shard, traceparent)


async def claimable_shards(conn: asyncpg.Connection, limit: int) -> list[asyncpg.Record]:
    """Shards of any tenant not completed and not leased (or whose lease ran out), oldest
    first: (tenant_id, run_id, shard). Through a security-definer function: the executor
    looks across tenants, which row-level security does not show it."""
    return await conn.fetch("select tenant_id, run_id, shard from billing_run_shards_claimable($1)", limit)


async def claim_shard(conn: asyncpg.Connection, tenant_id: uuid.UUID, run_id: uuid.UUID, shard: int,
                      executor: str, lease_s: float) -> str | None:
    """Lease a claimable shard to `executor` for `lease_s` seconds; its traceparent, or None
    when another executor claimed it first (the row lock makes the check and set atomic)."""
    return await conn.fetchval(
        """update billing_run_shards set lease_until = now() + make_interval(secs => $5), executed_by = $4
            where tenant_id = $1 and run_id = $2 and shard = $3 and status <> 'completed'
              and (lease_until is null or lease_until < now())
           returning traceparent""", tenant_id, run_id, shard, executor, lease_s)


async def renew_lease(conn: asyncpg.Connection, tenant_id: uuid.UUID, run_id: uuid.UUID, shard: int,
                      executor: str, lease_s: float) -> bool:
    """Extend the lease `executor` holds; False when it holds it no more."""
    status = await conn.execute(
        """update billing_run_shards set lease_until = now() + make_interval(secs => $5)
            where tenant_id = $1 and run_id = $2 and shard = $3 and executed_by = $4 and status <> 'completed'""",
        tenant_id, run_id, shard, executor, lease_s)
    return status != "UPDATE 0"


async def release_lease(conn: asyncpg.Connection, tenant_id: uuid.UUID, run_id: uuid.UUID, shard: int,
                        executor: str) -> None:
    """Give the shard back at once (an execution that failed or was stopped)."""
    await conn.execute(
        """update billing_run_shards set lease_until = null
            where tenant_id = $1 and run_id = $2 and shard = $3 and executed_by = $4 and status <> 'completed'""",
        tenant_id, run_id, shard, executor)


async def add_shard_progress(conn: asyncpg.Connection, tenant_id: uuid.UUID, run_id: uuid.UUID, shard: int,
                             due: int, billed: int) -> None:
    await conn.execute(
        """update billing_run_shards set subscriptions_due = subscriptions_due + $4,
                  subscriptions_billed = subscriptions_billed + $5
            where tenant_id = $1 and run_id = $2 and shard = $3""", tenant_id, run_id, shard, due, billed)


async def finish_shard(conn: asyncpg.Connection, tenant_id: uuid.UUID, run_id: uuid.UUID, shard: int) -> None:
    await conn.execute(
        """update billing_run_shards set status = 'completed', finished_at = coalesce(finished_at, now())
            where tenant_id = $1 and run_id = $2 and shard = $3""", tenant_id, run_id, shard)


async def completed_shards(conn: asyncpg.Connection, tenant_id: uuid.UUID, run_id: uuid.UUID) -> int:
    return await conn.fetchval(
        "select count(*) from billing_run_shards where tenant_id = $1 and run_id = $2 and status = 'completed'",
        tenant_id, run_id)


async def shards(conn: asyncpg.Connection, tenant_id: uuid.UUID, run_id: uuid.UUID) -> list[asyncpg.Record]:
    return await conn.fetch(
        """select shard, status, subscriptions_due, subscriptions_billed, executed_by, started_at, finished_at
             from billing_run_shards where tenant_id = $1 and run_id = $2 order by shard""", tenant_id, run_id)
