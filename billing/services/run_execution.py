"""Executing one shard of a billing run: every due subscription of the shard billed in
chunk transactions (period_close), then the shard completed, and the run with its last shard.

Safe to repeat: a crash loses at most the uncommitted chunks, and executing the shard again
continues with what is still due. Two executions at once, of one run or of two, split the
subscriptions between them (SKIP LOCKED), and billed_periods refuses a period billed twice
whatever happens (docs/billing.md).
"""
from __future__ import annotations

import asyncio
import logging
import uuid
from collections import deque
from dataclasses import dataclass, field
from decimal import Decimal

import asyncpg

from billing.domain.money import decimal_to_str
from billing.domain.subscriptions import Subscription
from billing.services import late_canceled, run_metrics, test_clocks
from billing.services.billing_runs import BillingRun, from_row
from billing.services.context import Caller
from billing.services.period_close import CloseContext, bill_chunk
from billing.services.run_metrics import ChunkOutcome
from billing.store import billing_runs as runs_store
from billing.store import subscription_scans as scans
from billing.store.db import Database

log = logging.getLogger(__name__)

CHUNK_SIZE = 2000
# Chunks in flight at once in one execution (one connection each): Python computes one
# while PostgreSQL writes the other.
WORKERS = 2
# A chunk reads at most this many id windows when few subscriptions are due.
WINDOWS_PER_CHUNK = 8
# How long to wait before looking again when what is still due is locked by another execution.
BUSY_WAIT_S = 0.2


@dataclass
class ShardExecution:
    """What the workers of one execution of one shard share."""

    ctx: CloseContext
    shard: int
    shard_count: int
    chunk_size: int
    failed: list[uuid.UUID]  # not tried again by this run (they would stay due)
    # The id windows of the pass still to hand out, by their last id (None: no upper bound,
    # the last one), and the end of the last window handed out; None: a pass starts.
    windows: deque[uuid.UUID | None] | None = None
    cursor: uuid.UUID | None = None
    fetching: asyncio.Lock = field(default_factory=asyncio.Lock)


async def execute_run(pool, tenant_id: uuid.UUID, run_id: uuid.UUID, *, chunk_size: int = CHUNK_SIZE,
                      shard: int = 0, workers: int = WORKERS, executor: str = "") -> BillingRun | None:
    """Bill everything of one shard due as of the run's time; returns the run as this
    execution leaves it (None: no such run).

    `pool` is an asyncpg pool (or a Database): each chunk is a transaction of its own, so
    this must not run inside the caller's transaction. `executor` names who executes it
    (recorded on the shard row)."""
    db = pool if isinstance(pool, Database) else Database(pool)
    started = await _start(db, tenant_id, run_id, shard, executor, chunk_size)
    if not isinstance(started, ShardExecution):
        return started
    ex = started
    caller = Caller(tenant_id, f"billing-run:{run_id}")
    while True:
        await asyncio.gather(*(_worker(db, caller, ex) for _ in range(max(1, workers))))
        async with db.tenant_tx(tenant_id) as conn:
            done = await _complete_if_done(conn, caller, ex)
        if done is not None:
            run, late = done
            break
        ex.windows = None  # another pass from the start: what was locked may be due still
        await asyncio.sleep(BUSY_WAIT_S)
    if late is not None:
        run_metrics.observe_chunk(late)
    return from_row(run)


async def _start(db: Database, tenant_id: uuid.UUID, run_id: uuid.UUID, shard: int, executor: str,
                 chunk_size: int) -> ShardExecution | BillingRun | None:
    """The run marked running and the shard started; the run itself when there is nothing
    to do (finished, no such shard, the shard completed), None when there is no run."""
    async with db.tenant_tx(tenant_id) as conn:
        row = await runs_store.get_run(conn, tenant_id, run_id, for_update=True)
        if row is None:
            log.warning("billing run not found", extra={"tenant_id": str(tenant_id), "run_id": str(run_id)})
            return None
        if row["status"] in ("completed", "failed"):
            # A repeated request: nothing left to do (a job left over closes, not to be claimed again).
            await runs_store.finish_shard(conn, tenant_id, run_id, shard)
            return from_row(row)
        if not 0 <= shard < row["shard_count"]:
            log.error("billing run request for a shard the run does not have",
                      extra={"run_id": str(run_id), "shard": shard, "shard_count": row["shard_count"]})
            return from_row(row)
        await runs_store.mark_running(conn, tenant_id, run_id)
        if await runs_store.start_shard(conn, tenant_id, run_id, shard, executor) == "completed":
            return from_row(row)  # this shard is done; the others complete the run
    failed = [uuid.UUID(f["subscription_id"]) for f in row["failures"]]
    ctx = CloseContext(tenant_id, run_id, row["as_of"], test_clock_id=row["test_clock_id"])
    return ShardExecution(ctx, shard, row["shard_count"], chunk_size, failed)


async def _complete_if_done(conn: asyncpg.Connection, caller: Caller,
                            ex: ShardExecution) -> tuple[asyncpg.Record, ChunkOutcome | None] | None:
    """Complete the shard, and the run with its last shard, when nothing due is left: the
    run row as it is then and what the late-usage pass billed. None: something is still due."""
    tenant_id, run_id = ex.ctx.tenant_id, ex.ctx.run_id
    # Due rows locked by another execution (of this run or another) or skipped by the keyset
    # pass are not done yet: completing now would show a run whose counters are still to come.
    if await scans.any_due(conn, tenant_id, ex.ctx.as_of, ex.failed, shard=ex.shard, shard_count=ex.shard_count,
                           test_clock_id=ex.ctx.test_clock_id):
        return None
    # The shard's canceled subscriptions with late usage not billed yet: billed here, in the
    # transaction that completes the shard (nothing when none).
    late = await late_canceled.bill(conn, caller, ex.ctx, ex.shard, ex.shard_count)
    if late is not None and late.due:
        await add_progress(conn, ex, late)
    # Lock order everywhere: the run row, then the shard row (a chunk's progress does the
    # same; the other order deadlocks with a second execution).
    run = await runs_store.get_run(conn, tenant_id, run_id, for_update=True)  # shards finish one by one
    assert run is not None  # the run of a claimed shard
    await runs_store.finish_shard(conn, tenant_id, run_id, ex.shard)
    if run["status"] == "running" and await runs_store.completed_shards(conn, tenant_id, run_id) >= run["shard_count"]:
        await runs_store.mark_finished(conn, tenant_id, run_id, "completed")
        if run["test_clock_id"] is not None:  # an advance: the clock takes its time with the run's completion
            await test_clocks.advance_completed(conn, caller, run["test_clock_id"], run_id)
        run = await runs_store.get_run(conn, tenant_id, run_id)
        run_metrics.observe_finished(run)
        log.info("billing run completed", extra={"tenant_id": str(tenant_id), "run_id": str(run_id)})
    return run, late


async def _worker(db: Database, caller: Caller, ex: ShardExecution) -> None:
    """Bill chunk after chunk until a keyset pass over the shard finds nothing more."""
    while True:
        async with db.tenant_tx(ex.ctx.tenant_id) as conn:
            async with ex.fetching:  # hand out disjoint id windows, in order
                subs = await _next_chunk(conn, ex)
            if subs is None:
                return
            if not subs:
                continue
            chunk = await bill_chunk(conn, caller, ex.ctx, subs)
            ex.failed += [uuid.UUID(f["subscription_id"]) for f in chunk.failures]
            await add_progress(conn, ex, chunk)
        run_metrics.observe_chunk(chunk)


async def _next_chunk(conn: asyncpg.Connection, ex: ShardExecution) -> list[Subscription] | None:
    """Up to about chunk_size due subscriptions of the shard, locked; None at the end of
    the pass. Reads id windows of the primary key (a shard holds 1/shard_count of each
    window) until the chunk is full or a few windows were read. The windows of a pass are
    found at its start (`window_ends`); the last one has no upper bound, so subscriptions
    created since are read too."""
    subs: list[Subscription] = []
    if ex.windows is None:
        window = min(ex.chunk_size * ex.shard_count, 50_000)
        ex.windows = deque(await scans.window_ends(conn, ex.ctx.tenant_id, window))
        ex.windows.append(None)
        ex.cursor = None
    for _ in range(WINDOWS_PER_CHUNK):
        if not ex.windows:
            return subs or None
        last = ex.windows.popleft()
        after, ex.cursor = ex.cursor, last
        subs += await scans.due_subscriptions(conn, ex.ctx.tenant_id, ex.ctx.as_of, ex.failed, after, last,
                                              shard=ex.shard, shard_count=ex.shard_count,
                                              test_clock_id=ex.ctx.test_clock_id)
        if len(subs) >= ex.chunk_size // 2:
            break
    return subs


async def add_progress(conn: asyncpg.Connection, ex: ShardExecution, chunk: ChunkOutcome) -> None:
    """Add a chunk's counts to the run and the shard, under the run row's lock."""
    tenant_id, run_id = ex.ctx.tenant_id, ex.ctx.run_id
    run = await runs_store.get_run(conn, tenant_id, run_id, for_update=True)  # serializes concurrent chunks
    assert run is not None  # the run of a claimed shard
    # Another execution of this run (a repeated request) may have recorded a failure of the
    # same subscription already: record each once, and skip those from now on.
    known = {f["subscription_id"] for f in run["failures"]}
    if known:
        new = [f for f in chunk.failures if f["subscription_id"] not in known]
        chunk.due -= len(chunk.failures) - len(new)
        chunk.failures = new
        ex.failed += [uuid.UUID(s) for s in known if uuid.UUID(s) not in ex.failed]
    totals = {c: Decimal(a) for c, a in run["totals"].items()}
    for currency, amount in chunk.totals.items():
        totals[currency] = totals.get(currency, Decimal(0)) + amount
    await runs_store.add_progress(conn, tenant_id, run_id, due=chunk.due, billed=chunk.billed,
                                  skipped=chunk.skipped, failed=len(chunk.failures), failures=chunk.failures,
                                  totals={c: decimal_to_str(a) for c, a in totals.items()})
    await runs_store.add_shard_progress(conn, tenant_id, run_id, ex.shard, chunk.due, chunk.billed)
