"""Billing runs: request one (RunBilling), read them, and record a shard's run request as a
durable job for the executors (run_executor).

RunBilling records the run (pending) and writes one BillingRunRequest per shard to the
outbox, in one transaction; the same idempotency key returns the same run.
"""
from __future__ import annotations

import enum
import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import asyncpg

from billing import codec
from billing.domain.events import Stream
from billing.domain.periods import to_us
from billing.ops import metrics
from billing.services import audit, idempotency, paging
from billing.services.context import Caller
from billing.services.errors import NotFound, ValidationError
from billing.store import billing_runs as store
from billing.store import outbox

RUNS_STREAM = Stream.BILLING_RUNS
STATUSES = ("pending", "running", "completed", "failed")
MAX_SHARDS = 1024
# RunBilling's as_of may be at most this far ahead of our clock (client clock skew).
AS_OF_SKEW = timedelta(minutes=5)


@dataclass(frozen=True)
class BillingRun:
    id: uuid.UUID
    idempotency_key: str
    status: str
    as_of: datetime
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    subscriptions_due: int
    subscriptions_billed: int
    subscriptions_skipped: int
    subscriptions_failed: int
    failures: tuple[tuple[str, str], ...]  # (subscription id, reason)
    totals: tuple[tuple[str, str], ...]  # (currency, amount), by currency
    test_clock_id: uuid.UUID | None = None  # the run of a test clock's advance


@dataclass(frozen=True)
class BillingRunPage:
    runs: list[BillingRun]
    next_page_token: str


def from_row(row: asyncpg.Record) -> BillingRun:
    return BillingRun(
        row["id"], row["idempotency_key"], row["status"], row["as_of"], row["created_at"], row["started_at"],
        row["finished_at"], row["subscriptions_due"], row["subscriptions_billed"], row["subscriptions_skipped"],
        row["subscriptions_failed"], tuple((f["subscription_id"], f["reason"]) for f in row["failures"]),
        tuple(sorted(row["totals"].items())), row["test_clock_id"],
    )


def check_shards(shards: int) -> int:
    if not 1 <= shards <= MAX_SHARDS:
        raise ValidationError("shards", f"must be between 1 and {MAX_SHARDS}")
    return shards


async def run_billing(db, caller: Caller, request_id: str, idempotency_key: str,
                      as_of: datetime | None, *, shards: int = 1) -> BillingRun:
    """Record a run and request its execution: one run request per shard, keyed
    "<run id>/<shard>" so that they spread over the partitions and the billing consumers of
    the group. The idempotency key (default: the request id) names the run: asking again
    with it returns that run, whatever its as_of or shard count."""
    check_shards(shards)
    if request_id:  # optional here (the key may stand alone), but when given it must be a valid key
        idempotency.check_key(request_id)
    key = idempotency.check_key(idempotency_key or request_id, "idempotency_key")
    at = datetime.now(timezone.utc)
    as_of = as_of or at
    if as_of > at + AS_OF_SKEW:
        raise ValidationError("as_of", "must not be in the future: a run bills periods that have ended")
    async with db.tenant_tx(caller.tenant_id) as conn:
        run, created = await request_run(conn, caller, key, as_of, shards=shards, request_id=request_id or key)
    if created:
        metrics.BILLING_RUNS.labels("pending").inc()
    return run


async def request_run(conn: asyncpg.Connection, caller: Caller, key: str, as_of: datetime, *, shards: int,
                      request_id: str, test_clock_id: uuid.UUID | None = None) -> tuple[BillingRun, bool]:
    """In the caller's transaction: the run named by `key` (and whether it was created now),
    with its run requests in the outbox and its audit row. `test_clock_id`: a run of that
    test clock's subscriptions only, at clock time `as_of` (AdvanceTestClock)."""
    row = await store.insert_run(conn, caller.tenant_id, uuid.uuid4(), key, as_of, test_clock_id)
    if row is None:
        return from_row(await store.get_run_by_key(conn, caller.tenant_id, key)), False
    run = from_row(row)
    if shards != 1:
        await store.set_shard_count(conn, caller.tenant_id, run.id, shards)
    at = datetime.now(timezone.utc)
    await outbox.enqueue_many(conn, caller.tenant_id, _run_requests(caller.tenant_id, run.id, as_of, at, shards))
    after = {"idempotency_key": key, "as_of": as_of.isoformat()}
    if test_clock_id is not None:
        after["test_clock_id"] = str(test_clock_id)
    await audit.record_change(conn, caller, entity_type="billing_run", entity_id=run.id,
                              action="billing_run.requested", before=None, after=after, request_id=request_id)
    return run, True


def _run_requests(tenant: uuid.UUID, run_id: uuid.UUID, as_of: datetime, at: datetime, shards: int) -> list[tuple]:
    content_type = codec.content_type(codec.Schema.BILLING_RUN_REQUEST)
    return [(RUNS_STREAM, f"{run_id}/{shard}".encode(), codec.encode(codec.Schema.BILLING_RUN_REQUEST, {
                "run_id": str(run_id), "tenant_id": str(tenant), "as_of_us": to_us(as_of),
                "shard": shard, "shard_count": shards, "requested_at_us": to_us(at)}),
             json.dumps({"content-type": content_type, "run-id": str(run_id), "shard": str(shard)}))
            for shard in range(shards)]


async def get_billing_run(db, caller: Caller, run_id: str) -> BillingRun:
    run_uuid = paging.parse_uuid(run_id, "id")
    async with db.tenant_tx(caller.tenant_id) as conn:
        row = await store.get_run(conn, caller.tenant_id, run_uuid)
    if row is None:
        raise NotFound("billing run", run_id)
    return from_row(row)


async def list_billing_runs(db, caller: Caller, *, tokens: paging.PageTokens, page_size: int, page_token: str,
                            status: str, created_after: datetime | None,
                            created_before: datetime | None) -> BillingRunPage:
    limit = paging.page_size(page_size)
    if status and status not in STATUSES:
        raise ValidationError("status", f"unknown status {status!r}")
    if created_after and created_before and created_after >= created_before:
        raise ValidationError("created_before", "must be after created_after")
    filters = {"status": status, "created_after": created_after.isoformat() if created_after else "",
               "created_before": created_before.isoformat() if created_before else ""}
    after = tokens.decode(page_token, "ListBillingRuns", caller.tenant_id, filters)
    async with db.tenant_tx(caller.tenant_id) as conn:
        rows = await store.list_runs(conn, caller.tenant_id, status=status or None, created_after=created_after,
                                     created_before=created_before, after=after, limit=limit + 1)
    runs = [from_row(r) for r in rows[:limit]]
    token = tokens.encode("ListBillingRuns", caller.tenant_id, filters, rows[limit - 1]["created_at"],
                          rows[limit - 1]["id"]) if len(rows) > limit else ""
    return BillingRunPage(runs, token)


class ShardRequest(enum.Enum):
    RECORDED = "recorded"
    UNKNOWN_RUN = "unknown_run"
    UNKNOWN_SHARD = "unknown_shard"


@dataclass(frozen=True)
class Recorded:
    outcome: ShardRequest
    shard_count: int = 0


async def record_shard_request(db, tenant_id: uuid.UUID, run_id: uuid.UUID, shard: int,
                               traceparent: str = "") -> Recorded:
    """Record that a shard of a run is to be executed (a durable job an executor claims);
    nothing when it is recorded already. `db` is the billing consumer's batch transaction
    (a ConnectionScope), so the job and the consumer's offsets commit together. A database
    error propagates: it says nothing about the request."""
    async with db.tenant_tx(tenant_id) as conn:
        row = await store.get_run(conn, tenant_id, run_id)
        if row is None:
            return Recorded(ShardRequest.UNKNOWN_RUN)
        if not 0 <= shard < row["shard_count"]:
            return Recorded(ShardRequest.UNKNOWN_SHARD, row["shard_count"])
        if row["status"] not in ("completed", "failed"):
            await store.record_shard(conn, tenant_id, run_id, shard, traceparent)
        return Recorded(ShardRequest.RECORDED, row["shard_count"])
