"""Billing runs: request one (RunBilling), read them, and execute one (the billing consumer).

RunBilling records the run (pending) and writes a BillingRunRequest to the outbox, in one
transaction; the same idempotency key returns the same run. The billing consumer calls
`execute_run`, which bills every due subscription of the tenant in chunks:

* a chunk is up to CHUNK_SIZE due subscriptions, locked FOR UPDATE SKIP LOCKED, and ONE
  transaction: per subscription and ended period, the period is marked billed
  (billed_periods, unique per subscription and period), the invoice request goes to the
  outbox, the subscription advances, an audit row is written; then the run's counters;
* each subscription runs in a savepoint: one that fails rolls back alone, is recorded with
  its reason and is not tried again by this run; the others go on;
* a subscription is billed period after period until its period ends after as_of.

Safe to repeat: a crash loses at most the uncommitted chunk, and executing the run again
(the consumer redelivers the request) continues with what is still due. Two executions at
once, of one run or of two runs, split the subscriptions between them (SKIP LOCKED), and
billed_periods refuses a period billed twice whatever happens.
"""
from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import asyncpg

from billing import codec
from billing.domain import invoicing
from billing.domain.invoicing import ClosedPeriod, PeriodUsage
from billing.domain.money import decimal_to_str
from billing.domain.periods import to_us
from billing.domain.plans import PlanSpec, plan_from_dict
from billing.domain.subscriptions import Subscription
from billing.services import audit, events, idempotency, paging
from billing.services.context import Caller
from billing.services.errors import NotFound, ValidationError
from billing.services.subscriptions import snapshot
from billing.store import billing as store
from billing.store import outbox
from billing.store import subscriptions as subs_store
from billing.store import usage as usage_store
from billing.store.db import Database

log = logging.getLogger(__name__)

RUNS_STREAM = "billing_runs"
INVOICES_STREAM = "invoice_requests"
STATUSES = ("pending", "running", "completed", "failed")
CHUNK_SIZE = 500
# A run bills at most this many periods of one subscription (a daily plan a year behind
# is 366); more means something is wrong with the subscription: it fails alone.
MAX_PERIODS_PER_SUBSCRIPTION = 1000
# RunBilling's as_of may be at most this far ahead of our clock (client clock skew).
AS_OF_SKEW = timedelta(minutes=5)
# How long to wait before looking again when what is still due is locked by another execution.
BUSY_WAIT_S = 0.2

# Infrastructure trouble is not the subscription's fault: it aborts the chunk (and the
# consumer retries the run) instead of being recorded as a failed subscription.
_NOT_THE_SUBSCRIPTIONS_FAULT = (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
                                asyncpg.SerializationError, asyncpg.DeadlockDetectedError,
                                asyncpg.QueryCanceledError)


def now() -> datetime:
    return datetime.now(timezone.utc)


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


@dataclass(frozen=True)
class BillingRunPage:
    runs: list[BillingRun]
    next_page_token: str


def _run(row: asyncpg.Record) -> BillingRun:
    return BillingRun(
        row["id"], row["idempotency_key"], row["status"], row["as_of"], row["created_at"], row["started_at"],
        row["finished_at"], row["subscriptions_due"], row["subscriptions_billed"], row["subscriptions_skipped"],
        row["subscriptions_failed"], tuple((f["subscription_id"], f["reason"]) for f in row["failures"]),
        tuple(sorted(row["totals"].items())),
    )


# -- RunBilling, GetBillingRun, ListBillingRuns ----------------------------------------

async def run_billing(db, caller: Caller, request_id: str, idempotency_key: str,
                      as_of: datetime | None) -> BillingRun:
    """Record a run and request its execution. The idempotency key (default: the request
    id) names the run: asking again with it returns that run, whatever its as_of."""
    key = idempotency.check_key(idempotency_key or request_id, "idempotency_key")
    at = now()
    as_of = as_of or at
    if as_of > at + AS_OF_SKEW:
        raise ValidationError("as_of", "must not be in the future: a run bills periods that have ended")
    async with db.tenant_tx(caller.tenant_id) as conn:
        row = await store.insert_run(conn, caller.tenant_id, uuid.uuid4(), key, as_of)
        if row is None:
            return _run(await store.get_run_by_key(conn, caller.tenant_id, key))
        run = _run(row)
        record = {"run_id": str(run.id), "tenant_id": str(caller.tenant_id), "as_of_us": to_us(as_of), "shard": 0,
                  "shard_count": 1, "requested_at_us": to_us(at)}
        await outbox.enqueue(
            conn, caller.tenant_id, stream=RUNS_STREAM, key=str(run.id).encode(),
            payload=codec.encode(codec.Schema.BILLING_RUN_REQUEST, record),
            headers={"content-type": codec.content_type(codec.Schema.BILLING_RUN_REQUEST), "run-id": str(run.id)},
        )
        await audit.record_change(conn, caller, entity_type="billing_run", entity_id=run.id,
                                  action="billing_run.requested", before=None,
                                  after={"idempotency_key": key, "as_of": as_of.isoformat()},
                                  request_id=request_id or key)
    return run


async def get_billing_run(db, caller: Caller, run_id: str) -> BillingRun:
    run_uuid = paging.parse_uuid(run_id, "id")
    async with db.tenant_tx(caller.tenant_id) as conn:
        row = await store.get_run(conn, caller.tenant_id, run_uuid)
    if row is None:
        raise NotFound("billing run", run_id)
    return _run(row)


async def list_billing_runs(db, caller: Caller, *, page_size: int, page_token: str, status: str,
                            created_after: datetime | None, created_before: datetime | None) -> BillingRunPage:
    limit = paging.page_size(page_size)
    after = paging.decode_token(page_token)
    if status and status not in STATUSES:
        raise ValidationError("status", f"unknown status {status!r}")
    if created_after and created_before and created_after >= created_before:
        raise ValidationError("created_before", "must be after created_after")
    async with db.tenant_tx(caller.tenant_id) as conn:
        rows = await store.list_runs(conn, caller.tenant_id, status=status or None, created_after=created_after,
                                     created_before=created_before, after=after, limit=limit + 1)
    runs = [_run(r) for r in rows[:limit]]
    token = paging.encode_token(rows[limit - 1]["created_at"], rows[limit - 1]["id"]) if len(rows) > limit else ""
    return BillingRunPage(runs, token)


# -- executing a run --------------------------------------------------------------------

@dataclass
class _Chunk:
    due: int = 0
    billed: int = 0
    skipped: int = 0
    failures: list[dict] = field(default_factory=list)
    totals: dict[str, Decimal] = field(default_factory=dict)


async def execute_run(pool, tenant_id: uuid.UUID, run_id: uuid.UUID, *,
                      chunk_size: int = CHUNK_SIZE) -> BillingRun | None:
    """Bill everything due as of the run's time; returns the run as it ends (None: no such run).

    `pool` is an asyncpg pool (or a Database): each chunk is a transaction of its own, so
    this must not run inside the caller's transaction.
    """
    db = pool if isinstance(pool, Database) else Database(pool)
    caller = Caller(tenant_id, f"billing-run:{run_id}")
    async with db.tenant_tx(tenant_id) as conn:
        row = await store.get_run(conn, tenant_id, run_id, for_update=True)
        if row is None:
            log.warning("billing run not found", extra={"tenant_id": str(tenant_id), "run_id": str(run_id)})
            return None
        if row["status"] in ("completed", "failed"):
            return _run(row)  # a redelivered request: nothing left to do
        await store.mark_running(conn, tenant_id, run_id)
    as_of = row["as_of"]
    # Subscriptions that failed in this run are not tried again by it (they would stay due).
    failed = [uuid.UUID(f["subscription_id"]) for f in row["failures"]]
    plans: dict[uuid.UUID, PlanSpec] = {}
    while True:
        async with db.tenant_tx(tenant_id) as conn:
            subs = await store.due_subscriptions(conn, tenant_id, as_of, failed, chunk_size)
            if subs:
                chunk = await _bill_chunk(conn, caller, run_id, as_of, subs, plans)
                failed += [uuid.UUID(f["subscription_id"]) for f in chunk.failures]
                await _add_progress(conn, tenant_id, run_id, chunk)
                continue
            # Due rows locked by another execution (of this run or another) are not done
            # yet: completing now would show a run whose counters are still to come.
            if not await store.any_due(conn, tenant_id, as_of, failed):
                await store.mark_finished(conn, tenant_id, run_id, "completed")
                row = await store.get_run(conn, tenant_id, run_id)
                break
        await asyncio.sleep(BUSY_WAIT_S)
    log.info("billing run completed", extra={"tenant_id": str(tenant_id), "run_id": str(run_id)})
    return _run(row)


async def _add_progress(conn: asyncpg.Connection, tenant_id: uuid.UUID, run_id: uuid.UUID, chunk: _Chunk) -> None:
    run = await store.get_run(conn, tenant_id, run_id, for_update=True)  # serializes concurrent executions
    totals = {c: Decimal(a) for c, a in run["totals"].items()}
    for currency, amount in chunk.totals.items():
        totals[currency] = totals.get(currency, Decimal(0)) + amount
    await store.add_progress(conn, tenant_id, run_id, due=chunk.due, billed=chunk.billed, skipped=chunk.skipped,
                             failed=len(chunk.failures), failures=chunk.failures,
                             totals={c: decimal_to_str(a) for c, a in totals.items()})


async def _bill_chunk(conn: asyncpg.Connection, caller: Caller, run_id: uuid.UUID, as_of: datetime,
                      subs: list[Subscription], plans: dict[uuid.UUID, PlanSpec]) -> _Chunk:
    tenant = caller.tenant_id
    wanted = {s.plan_id for s in subs} | {s.pending_plan_id for s in subs if s.pending_plan_id}
    missing = [p for p in wanted if p not in plans]
    for plan_id, spec in await usage_store.plan_specs(conn, tenant, missing):
        plans[plan_id] = plan_from_dict(spec)  # plans never change once created
    periods = [(s.id, s.current_period_start) for s in subs]
    charged = await store.opened_by_a_run(conn, tenant, periods)
    usage = _usage_by_period(await store.period_totals(conn, tenant, periods))
    for p in periods:
        usage.setdefault(p, {})  # no usage in the period: known, not to be fetched again
    chunk = _Chunk(due=len(subs))
    for sub in subs:
        try:
            async with conn.transaction():  # savepoint: a failing subscription rolls back alone
                billed, skipped = await _bill_subscription(conn, caller, run_id, as_of, sub, plans, usage,
                                                           charged_in_advance=sub.id in charged, chunk=chunk)
        except _NOT_THE_SUBSCRIPTIONS_FAULT:
            raise
        except Exception as exc:  # noqa: BLE001 - recorded with its reason; the run goes on
            reason = f"{type(exc).__name__}: {exc}"[:1000]
            chunk.failures.append({"subscription_id": str(sub.id), "reason": reason})
            log.warning("subscription not billed", extra={"subscription_id": str(sub.id), "reason": reason})
            continue
        if billed:
            chunk.billed += 1
        elif skipped:
            chunk.skipped += 1
    return chunk


def _usage_by_period(rows) -> dict[tuple[uuid.UUID, datetime], dict[str, PeriodUsage]]:
    out: dict[tuple[uuid.UUID, datetime], dict[str, PeriodUsage]] = {}
    for r in rows:
        out.setdefault((r["subscription_id"], r["period_start"]), {})[r["metric_code"]] = PeriodUsage(
            r["quantity_sum"], r["event_count"], r["quantity_max"], r["latest_quantity"])
    return out


async def _period_usage(conn, tenant: uuid.UUID, sub: Subscription, spec: PlanSpec,
                        usage: dict) -> dict[str, PeriodUsage]:
    key = (sub.id, sub.current_period_start)
    if key not in usage:  # a later period of a subscription billed period after period
        usage.update(_usage_by_period(await store.period_totals(conn, tenant, [key])))
        usage.setdefault(key, {})
    found = dict(usage.get(key, {}))
    for charge in spec.usage_charges:
        if charge.unique_property:  # counted from the raw events, only for the charges that need it
            count = await usage_store.unique_count(conn, tenant, sub.id, charge.metric_code,
                                                   sub.current_period_start, charge.unique_property)
            prev = found.get(charge.metric_code, PeriodUsage())
            found[charge.metric_code] = PeriodUsage(prev.quantity_sum, prev.event_count, prev.quantity_max,
                                                    prev.latest_quantity, count)
    return found


async def _bill_subscription(conn, caller: Caller, run_id: uuid.UUID, as_of: datetime, sub: Subscription,
                             plans: dict[uuid.UUID, PlanSpec], usage: dict, *, charged_in_advance: bool,
                             chunk: _Chunk) -> tuple[bool, bool]:
    """Bill every ended period of `sub`; (billed any, skipped any)."""
    tenant = caller.tenant_id
    billed = skipped = False
    periods = 0
    while invoicing.is_due(sub, as_of):
        periods += 1
        if periods > MAX_PERIODS_PER_SUBSCRIPTION:
            raise RuntimeError(f"more than {MAX_PERIODS_PER_SUBSCRIPTION} periods due")
        spec = plans[sub.plan_id]
        closed = invoicing.close_period(
            tenant, sub, spec, await _period_usage(conn, tenant, sub, spec, usage),
            next_plan=plans.get(sub.pending_plan_id) if sub.pending_plan_id else None,
            charged_in_advance=charged_in_advance,
        )
        request_id = closed.invoice_request_id if closed.lines else None
        if await store.insert_billed_period(conn, tenant, sub.id, closed.period_start, closed.period_end,
                                            request_id, run_id):
            if closed.lines:
                await outbox.enqueue(
                    conn, tenant, stream=INVOICES_STREAM, key=str(closed.invoice_request_id).encode(),
                    payload=codec.encode(codec.Schema.INVOICE_REQUEST, invoice_request(tenant, run_id, sub, closed)),
                    headers={"content-type": codec.content_type(codec.Schema.INVOICE_REQUEST),
                             "invoice-request-id": str(closed.invoice_request_id)},
                )
                chunk.totals[closed.currency] = chunk.totals.get(closed.currency, Decimal(0)) + closed.total
            billed = True
        else:
            # Billed before, yet the subscription was not advanced past it: advance only.
            skipped = True
        await subs_store.update(conn, tenant, closed.subscription)
        details = {"run_id": str(run_id), "period_start": closed.period_start.isoformat(),
                   "period_end": closed.period_end.isoformat(), "invoice_request_id": str(request_id or ""),
                   "total": decimal_to_str(closed.total), "currency": closed.currency}
        await audit.record_change(conn, caller, entity_type="subscription", entity_id=sub.id, action=closed.event,
                                  before=snapshot(sub), after={**snapshot(closed.subscription), "details": details},
                                  request_id=str(run_id))
        if closed.event != "subscription.period_advanced":  # status or plan changed: announce it
            await events.emit(conn, caller, event_type=closed.event, subscription_id=str(sub.id),
                              customer_id=sub.customer_id, occurred_at=closed.period_end,
                              cause=f"billing-run:{closed.invoice_request_id}", from_status=sub.status.value,
                              to_status=closed.subscription.status.value, data=details)
        sub = closed.subscription
        charged_in_advance = True  # the next period was opened (and, in advance, charged) right here
    return billed, skipped


def invoice_request(tenant: uuid.UUID, run_id: uuid.UUID, sub: Subscription, closed: ClosedPeriod) -> dict:
    """The InvoiceRequest record (schemas/avro/invoice_request.avsc); see docs/billing.md."""
    total = decimal_to_str(closed.total)
    return {
        "invoice_request_id": str(closed.invoice_request_id), "tenant_id": str(tenant), "customer_id": sub.customer_id,
        "subscription_id": str(sub.id), "run_id": str(run_id), "currency": closed.currency,
        "period_start_us": to_us(closed.period_start), "period_end_us": to_us(closed.period_end),
        "issued_at_us": to_us(now()),
        "lines": [{
            "kind": ln.kind, "description": ln.description, "metric_code": ln.metric_code,
            "quantity": decimal_to_str(ln.quantity), "unit_price": decimal_to_str(ln.unit_price),
            "amount": decimal_to_str(ln.amount), "period_start_us": to_us(ln.period_start),
            "period_end_us": to_us(ln.period_end),
            "fraction": None if ln.fraction is None else f"{ln.fraction.numerator}/{ln.fraction.denominator}",
            "original_period_start_us": None,
        } for ln in closed.lines],
        "subtotal": total, "total": total, "metadata": dict(sub.metadata),
    }
